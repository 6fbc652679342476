"""The annotation web app (Starlette): a static page plus a JSON API over the store.

Every request passes `Guard` first: a Host check against DNS rebinding on loopback, a body size
limit, authentication (an annotator's token as a cookie, `Authorization: Bearer`, or once as
`/?token=` which becomes an HttpOnly cookie; token-less use only on loopback), a CSRF token on
every POST, and security headers (a CSP that allows only the app's own scripts). The page
builds its DOM with `textContent` only, so stored text is never run as HTML.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import pathlib
from http.cookies import SimpleCookie
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ilf_jax.annotate import export as export_lib
from ilf_jax.annotate.checks import Checker, filter_report
from ilf_jax.annotate.store import Annotator, Conflict, ItemState, Store, token_hash
from ilf_jax.annotate.workspace import Workspace
from ilf_jax.execute import Executor

STATIC = pathlib.Path(__file__).parent / "static"
COOKIE = "ilf_annotate_token"
_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the app is served: loopback-only (token optional) or exposed (token required)."""

    host: str = "127.0.0.1"
    local_annotator: str = "local"
    max_body_bytes: int = 256 * 1024
    max_text_chars: int = 64 * 1024  # feedback
    max_program_chars: int = 16 * 1024  # refinements (the live filter is a quadratic edit distance)
    executor_workers: int = 1
    executor_timeout: float = 3.0

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def csrf_token(secret: bytes, who: Annotator, credential: str) -> str:
    """The CSRF token of one annotator's session: an HMAC of its id and credential (token hash or 'local')."""
    return hmac.new(secret, f"{who.id}:{credential}".encode(), hashlib.sha256).hexdigest()


class Guard:
    """ASGI middleware: host check, body limit, authentication, CSRF, security headers."""

    def __init__(self, app: Any, store: Store, settings: Settings) -> None:
        self.app, self.store, self.settings = app, store, settings
        self.secret = store.secret()
        self.local = None if not settings.loopback else store.local_annotator(settings.local_annotator)

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets: nothing but authenticated HTTP reaches the app
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        request = Request(scope)
        refusal = self._check_host(request)
        who, credential, token = None, "", None
        if refusal is None:
            who, credential, token = await run_in_threadpool(self._authenticate, request)
            if who is None:
                refusal = PlainTextResponse("401: a valid annotator token is required (ilf annotate add-annotator NAME)",
                                            status_code=401)
        body = b""
        if refusal is None and request.method not in ("GET", "HEAD"):
            body, refusal = await self._read_body(request, receive)
        if refusal is None and token is not None and request.query_params.get("token") and request.method == "GET":
            refusal = RedirectResponse(request.url.path, status_code=303)  # drop the token from the address bar
            refusal.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        if refusal is None and request.method not in ("GET", "HEAD"):
            refusal = self._check_post(request, who, credential)
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        scope.setdefault("state", {})["annotator"] = who
        scope["state"]["csrf"] = csrf_token(self.secret, who, credential)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_secured)

    def _check_host(self, request: Request) -> Response | None:
        """On loopback, only loopback Host headers (a DNS-rebinding page cannot reach the API)."""
        if not self.settings.loopback:
            return None
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
        if is_loopback(name):
            return None
        return PlainTextResponse("403: unexpected Host header", status_code=403)

    async def _read_body(self, request: Request, receive: Callable) -> tuple[bytes, Response | None]:
        """The whole request body, or a 413 once it passes the limit."""
        limit = self.settings.max_body_bytes
        too_large = PlainTextResponse(f"413: request body over {limit} bytes", status_code=413)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return b"", too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", PlainTextResponse("400: client went away", status_code=400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_large
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks), None

    def _authenticate(self, request: Request) -> tuple[Annotator | None, str, str | None]:
        """(annotator, credential, token): a valid token wins; else the local annotator on loopback."""
        header = request.headers.get("authorization", "")
        candidates = [request.query_params.get("token"), header[7:] if header.lower().startswith("bearer ") else None]
        cookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(request.headers.get("cookie", ""))
        if COOKIE in cookie:
            candidates.append(cookie[COOKIE].value)
        for token in candidates:
            who = self.store.annotator_for_token(token)
            if who is not None:
                return who, token_hash(token), token
        if self.local is not None and not any(candidates):
            return self.local, "local", None
        return None, "", None

    def _check_post(self, request: Request, who: Annotator, credential: str) -> Response | None:
        """POSTs need JSON, the session's CSRF header, and (when sent) a same-origin Origin."""
        want = csrf_token(self.secret, who, credential)
        if not hmac.compare_digest(request.headers.get("x-csrf-token", ""), want):
            return PlainTextResponse("403: missing or wrong CSRF token", status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host", ""):
            return PlainTextResponse("403: cross-origin request", status_code=403)
        if request.method != "POST" or not request.headers.get("content-type", "").startswith("application/json"):
            return PlainTextResponse("415: POST application/json only", status_code=415)
        return None


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _item_json(state: ItemState, who: Annotator) -> dict[str, Any]:
    it = state.item
    return {"task_id": it.task_id, "split": it.split, "text": it.text, "prompt": it.prompt, "test": it.test,
            "program": it.program, "error": it.error, "entry_point": it.entry_point, "position": state.position,
            "status": state.status, "feedback": state.feedback, "refinement": state.refinement,
            "verdict": state.verdict, "refinement_error": state.error, "version": state.version,
            "annotator": state.annotator, "lease_expires": state.lease_expires,
            "leased_by_me": state.lease_holder == who.name}


class Api:
    """The JSON endpoints; blocking work (SQLite, the executor) runs in Starlette's thread pool."""

    def __init__(self, store: Store, ws: Workspace, settings: Settings, checker: Callable[[], Checker]) -> None:
        self.store, self.ws, self.settings, self._checker = store, ws, settings, checker

    async def _body(self, request: Request, fields: dict[str, type]) -> dict[str, Any]:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object")
        out = {}
        for name, kind in fields.items():
            value = data.get(name)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
                raise ApiError(400, f"field {name!r} must be {kind.__name__}")
            limit = self.settings.max_program_chars if name == "refinement" else self.settings.max_text_chars
            if isinstance(value, str) and len(value) > limit:
                raise ApiError(413, f"field {name!r} is over {limit} characters")
            out[name] = value
        return out

    def _state(self, task_id: int) -> ItemState:
        try:
            return self.store.get(task_id)
        except KeyError:
            raise ApiError(404, f"no item with task_id {task_id}") from None

    def routes(self) -> list[Route]:
        def endpoint(fn: Callable) -> Callable:
            async def wrapped(request: Request) -> Response:
                try:
                    return JSONResponse(await fn(request, request.state.annotator))
                except ApiError as e:
                    return JSONResponse({"error": str(e)}, status_code=e.status)
                except Conflict as e:
                    return JSONResponse({"error": str(e)}, status_code=409)
            return wrapped

        return [
            Route("/api/session", endpoint(self.session)),
            Route("/api/queue", endpoint(self.queue)),
            Route("/api/next", endpoint(self.next), methods=["POST"]),
            Route("/api/items/{task_id:int}", endpoint(self.item)),
            Route("/api/items/{task_id:int}/claim", endpoint(self.claim), methods=["POST"]),
            Route("/api/items/{task_id:int}/renew", endpoint(self.renew), methods=["POST"]),
            Route("/api/items/{task_id:int}/filter", endpoint(self.filter), methods=["POST"]),
            Route("/api/items/{task_id:int}/run", endpoint(self.run_tests), methods=["POST"]),
            Route("/api/items/{task_id:int}/save", endpoint(self.save), methods=["POST"]),
            Route("/api/items/{task_id:int}/skip", endpoint(self.skip), methods=["POST"]),
            Route("/api/items/{task_id:int}/history", endpoint(self.history)),
            Route("/api/export", endpoint(self.export), methods=["POST"]),
            Route("/export/annotations.jsonl", self.download),
        ]

    async def session(self, request: Request, who: Annotator) -> dict[str, Any]:
        progress = await run_in_threadpool(self.store.progress)
        return {"annotator": who.name, "csrf": request.state.csrf, "progress": progress.to_json(),
                "lease_s": self.store.lease_s}

    async def queue(self, request: Request, who: Annotator) -> dict[str, Any]:
        states = await run_in_threadpool(self.store.queue)
        progress = await run_in_threadpool(self.store.progress)
        return {"items": [{"task_id": s.item.task_id, "status": s.status, "split": s.item.split,
                           "lease_holder": s.lease_holder, "mine": s.lease_holder == who.name} for s in states],
                "progress": progress.to_json()}

    async def next(self, request: Request, who: Annotator) -> dict[str, Any]:
        state = await run_in_threadpool(self.store.next_item, who)
        return {"item": None if state is None else _item_json(state, who)}

    async def item(self, request: Request, who: Annotator) -> dict[str, Any]:
        return {"item": _item_json(self._state(request.path_params["task_id"]), who)}

    async def claim(self, request: Request, who: Annotator) -> dict[str, Any]:
        task_id = request.path_params["task_id"]
        self._state(task_id)
        return {"item": _item_json(await run_in_threadpool(self.store.claim, who, task_id), who)}

    async def renew(self, request: Request, who: Annotator) -> dict[str, Any]:
        task_id = request.path_params["task_id"]
        self._state(task_id)
        return {"lease_expires": await run_in_threadpool(self.store.renew, who, task_id)}

    async def filter(self, request: Request, who: Annotator) -> dict[str, Any]:
        body = await self._body(request, {"refinement": str})
        item = self._state(request.path_params["task_id"]).item

        def compute() -> dict[str, Any]:
            hit = self._checker().cached(item, body["refinement"])
            return filter_report(item, body["refinement"], None if hit is None else hit.passed).to_json()
        return {"filter": await run_in_threadpool(compute)}

    async def run_tests(self, request: Request, who: Annotator) -> dict[str, Any]:
        body = await self._body(request, {"refinement": str})
        item = self._state(request.path_params["task_id"]).item
        result = await run_in_threadpool(self._checker().run, item, body["refinement"])
        report = await run_in_threadpool(filter_report, item, body["refinement"], result.passed)
        return {"verdict": result.verdict, "passed": result.passed, "error": result.error,
                "filter": report.to_json()}

    async def save(self, request: Request, who: Annotator) -> dict[str, Any]:
        """Save (status 'saved', feedback required) or flag as can't fix; the refinement is run first."""
        body = await self._body(request, {"feedback": str, "refinement": str, "base_version": int, "status": str})
        if body["status"] not in ("saved", "cant_fix"):
            raise ApiError(400, "field 'status' must be 'saved' or 'cant_fix'")
        if body["status"] == "saved" and not body["feedback"].strip():
            raise ApiError(400, "write feedback before saving (or flag the item as can't fix)")
        if body["status"] == "saved" and not body["refinement"].strip():
            raise ApiError(400, "the refinement is empty")
        task_id = request.path_params["task_id"]
        item = self._state(task_id).item
        result = await run_in_threadpool(self._checker().run, item, body["refinement"])
        report = await run_in_threadpool(filter_report, item, body["refinement"], result.passed)
        version = await run_in_threadpool(
            lambda: self.store.save(who, task_id, status=body["status"], feedback=body["feedback"],
                                    refinement=body["refinement"], base_version=body["base_version"],
                                    verdict=result.verdict, error=result.error, distance=report.distance))
        await run_in_threadpool(export_lib.refresh, self.store, self.ws)
        progress = await run_in_threadpool(self.store.progress)
        return {"version": version, "verdict": result.verdict, "passed": result.passed, "error": result.error,
                "filter": report.to_json(), "progress": progress.to_json()}

    async def skip(self, request: Request, who: Annotator) -> dict[str, Any]:
        task_id = request.path_params["task_id"]
        self._state(task_id)
        await run_in_threadpool(self.store.skip, who, task_id)
        return await self.next(request, who)

    async def history(self, request: Request, who: Annotator) -> dict[str, Any]:
        task_id = request.path_params["task_id"]
        self._state(task_id)
        entries = await run_in_threadpool(self.store.history, task_id)
        return {"history": [dataclasses.asdict(e) for e in entries]}

    async def export(self, request: Request, who: Annotator) -> dict[str, Any]:
        rows = await run_in_threadpool(export_lib.refresh, self.store, self.ws)
        return {"rows": rows, "path": str(self.ws.export), "download": "/export/annotations.jsonl"}

    async def download(self, request: Request) -> Response:
        await run_in_threadpool(export_lib.refresh, self.store, self.ws)
        return FileResponse(self.ws.export, media_type="application/x-ndjson", filename="annotations.jsonl")


def create_app(store: Store, ws: Workspace, settings: Settings = Settings(),
               executor_factory: Callable[[], Executor] | None = None) -> Starlette:
    """The app over `store`; the executor starts with the app (lifespan) and stops with it."""
    holder: dict[str, Checker] = {}

    def checker() -> Checker:
        return holder["checker"]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        make = executor_factory or (lambda: Executor(settings.executor_workers, settings.executor_timeout))
        executor = make()
        await run_in_threadpool(executor.start)
        holder["checker"] = Checker(executor)
        await run_in_threadpool(export_lib.refresh, store, ws)
        try:
            yield
        finally:
            await run_in_threadpool(executor.close)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    api = Api(store, ws, settings, checker)
    routes = [Route("/", index), *api.routes(), Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan)
    return Guard(app, store, settings)  # type: ignore[return-value]
