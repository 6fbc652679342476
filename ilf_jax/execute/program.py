"""The program's side of a job, run only in the sandboxed process: load the program, then answer the judge's calls.

It never sees a test. Each request names a program object (a handle) and an operation (call,
getattr, setattr) with plain-data arguments; the reply is the result as plain data, the contents
the arguments were left with (so in-place mutation reaches the judge), or the exception as text.
"""

from __future__ import annotations

import builtins
import ctypes
import importlib
import linecache
import os
import sys
import traceback
from types import ModuleType
from typing import Any, NoReturn

from ilf_jax.execute import wire


def _import_without_fork_hook(name: str) -> ModuleType:
    """Import `name` without the hook it registers to run in every forked child (os.register_at_fork).

    `random` reseeds itself from os.urandom in each child: each job's init and program process
    paid ~44 page faults for it (~0.07 ms, measured), and the program seeds it itself (seed 0). A
    module already imported keeps its hook."""
    if name in sys.modules:
        return sys.modules[name]
    register = os.register_at_fork
    os.register_at_fork = lambda **_hooks: None
    try:
        return importlib.import_module(name)
    finally:
        os.register_at_fork = register


random = _import_without_fork_hook("random")

# modules whose objects a program may import by name; the judge imports its own copy of the same object
STDLIB_BINDABLE = frozenset({
    "math", "cmath", "re", "collections", "collections.abc", "itertools", "functools", "heapq", "bisect",
    "string", "operator", "copy", "datetime", "decimal", "fractions", "statistics", "typing", "array", "random",
    "sys", "json", "time", "calendar", "textwrap", "unicodedata", "numbers", "enum", "dataclasses", "hashlib",
    "struct", "os", "os.path", "builtins", "abc", "types",
})
_FRAME_LINE = 200
_BUILTIN_EXCEPTIONS = {k: v for k, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
_BUILTINS = dict(vars(builtins))  # made before the zygote forks: no program process copies it (~80 page faults)
_VALUE_BUDGET = 1000  # containers in a global value sent to the judge at load


def _short(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 15] + f"... [{len(text) - limit + 15} more]"


def exception_info(exc: BaseException, limit: int) -> list[Any]:
    """["exc", type name, first builtin base, message, program frames] for a raised exception; never raises."""
    try:
        name = type(exc).__name__
        base = next((c.__name__ for c in type(exc).__mro__ if _BUILTIN_EXCEPTIONS.get(c.__name__) is c), "Exception")
        try:
            message = _short(str(exc), limit)
        except BaseException:  # noqa: BLE001 - a hostile __str__
            message = "<unprintable message>"
        frames = []
        if not isinstance(exc, SyntaxError):
            for f in traceback.extract_tb(exc.__traceback__)[-50:]:
                if f.filename == "<program>":
                    frames.append([f.filename, f.lineno or 0, f.name, _short(f.line or "", _FRAME_LINE)])
        else:
            message = _short("".join(traceback.format_exception_only(exc)).rstrip(), limit)
        return ["exc", str(name)[:100], str(base), message, frames]
    except BaseException:  # noqa: BLE001 - MemoryError while describing
        return ["exc", "MemoryError", "MemoryError", "", []]


def _binding(name: str, obj: Any, enc: wire.Encoder) -> list[Any]:
    """How the judge binds one of the program's global names: a module, a stdlib object, a plain value or a handle."""
    if type(obj).__name__ == "module":
        return [name, "module", str(getattr(obj, "__name__", ""))]
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if type(module) is str and type(qual) is str and module in STDLIB_BINDABLE and "." not in qual:
        mod = sys.modules.get(module)
        if mod is not None and getattr(mod, qual, None) is obj:
            return [name, "import", [module, qual]]
    small = wire.Encoder(budget=_VALUE_BUDGET)  # a big table the program built stays where it is
    try:
        return [name, "value", small.encode(obj, strict=True)]
    except wire.NotPlain:
        return [name, "remote", [enc.handle(obj), type(obj).__name__, callable(obj)]]


def _version_tag(d: dict) -> ctypes.c_uint64 | None:
    """A view of `d`'s version tag (CPython's PEP 509 counter, which every change to a dict bumps), or None
    where this interpreter has none that behaves so (checked on a dict of its own first).

    The program process asks after each of the program's turns whether it changed builtins: comparing
    the dicts would touch every builtin object (a copy-on-write page fault for each page they lie on,
    ~70 a job, measured); reading the tag touches nothing."""
    if sys.implementation.name != "cpython":
        return None
    probe: dict[str, Any] = {"a": 0}
    tag = ctypes.c_uint64.from_address(id(probe) + _VERSION_OFFSET)
    seen = [tag.value]
    for change in (lambda: probe.__setitem__("a", 1), lambda: probe.__setitem__("b", 0),
                   lambda: probe.pop("a"), probe.clear):
        if tag.value != seen[-1]:  # it moved without a change
            return None
        change()
        seen.append(tag.value)
    if len(set(seen)) != len(seen):  # a change it did not show
        return None
    return ctypes.c_uint64.from_address(id(d) + _VERSION_OFFSET)


_VERSION_OFFSET = 3 * ctypes.sizeof(ctypes.c_ssize_t)  # after ob_refcnt, ob_type, ma_used (PyDictObject)
_BUILTINS_VERSION = _version_tag(vars(builtins))


class Server:
    """The handle table and the request loop of one job's program process."""

    def __init__(self, req_fd: int, rep_fd: int, limit: int) -> None:
        self.req_fd, self.rep_fd, self.limit = req_fd, rep_fd, limit
        self.handles: list[Any] = []
        self.namespace: dict[str, Any] = {}

    def handle(self, obj: Any) -> int:
        self.handles.append(obj)
        return len(self.handles) - 1

    def lookup(self, n: int, _type_name: str = "") -> Any:
        if not 0 <= n < len(self.handles):
            raise wire.Malformed("no such handle")
        return self.handles[n]

    def load(self, source: str, restore: Any) -> list[Any]:
        """Compile and run the program; the reply names its globals."""
        linecache.cache["<program>"] = (len(source), None, source.splitlines(True), "<program>")
        try:
            code = compile(source, "<program>", "exec")
        except MemoryError:
            return ["exc", "MemoryError", "MemoryError", "", []]
        except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
            return ["syntax", exception_info(e, self.limit)[3]]
        namespace: dict[str, Any] = self.namespace
        try:
            exec(code, namespace)
        except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt... are reported too
            return exception_info(e, self.limit)
        finally:
            restore()
        enc = wire.Encoder(self.handle)
        names = [_binding(k, v, enc) for k, v in list(namespace.items())[:10000]
                 if type(k) is str and not (k.startswith("__") and k.endswith("__"))]
        return ["loaded", names]

    def answer(self, msg: Any, restore: Any) -> list[Any]:
        """One operation on a program object: ["op", kind, handle, payload]."""
        if not (type(msg) is list and len(msg) == 4 and msg[0] == "op" and type(msg[2]) is int):
            raise wire.Malformed("bad request")
        kind, target = msg[1], self.lookup(msg[2])
        dec = wire.Decoder(self.lookup)
        payload = dec.decode(msg[3])
        sent = list(dec.table)
        try:
            if kind == "call":
                args, kwargs = payload
                result = target(*args, **kwargs)
            elif kind == "getattr":
                result = getattr(target, payload[0])
            elif kind == "setattr":
                result = setattr(target, payload[0], payload[1])
            else:
                raise wire.Malformed("bad operation")
        except wire.Malformed:
            raise
        except BaseException as e:  # noqa: BLE001 - the program's exception goes to the judge as text
            restore()
            return exception_info(e, self.limit)
        restore()
        enc = wire.Encoder(self.handle, {id(o): i for i, o in enumerate(sent)})
        enc.keep.extend(sent)
        try:
            trees = [enc.encode(result)] + [enc.encode(o, fresh=True) for o in sent]
        except wire.NotPlain as e:
            return ["notplain", str(e)]
        return ["ok", trees]

    def serve(self) -> NoReturn:
        """Answer requests until the judge closes the channel, then exit.

        Between the program's turns its changes to builtins and its tracers are undone, so this
        loop (not the verdict: that is the judge's) keeps working whatever the program did.
        """
        exit_, settrace, setprofile = os._exit, sys.settrace, sys.setprofile
        live, saved, tag = vars(builtins), _BUILTINS, _BUILTINS_VERSION
        clear, update = live.clear, live.update
        version = [tag.value if tag is not None else 0]

        def restore() -> None:
            settrace(None)
            setprofile(None)
            if tag is not None:
                untouched = tag.value == version[0]
            else:
                try:  # (a program's object in builtins may answer this: then it only misleads its own loop)
                    untouched = live == saved
                except BaseException:  # noqa: BLE001
                    untouched = False
            if not untouched:  # only then: renewing the dict costs every builtin lookup cached after it
                clear()  # (measured: ~4% of the executor's CPU on MBPP when done after every turn)
                update(saved)
                if tag is not None:
                    version[0] = tag.value

        try:
            msg = wire.recv(self.req_fd)
            if not (type(msg) is list and len(msg) == 3 and msg[0] == "load" and type(msg[1]) is str
                    and type(msg[2]) is list):
                exit_(0)
            random.seed(0)
            reply = self.load(msg[1], restore)
            restore()
            wire.send(self.rep_fd, reply)
            if reply[0] == "loaded":  # the calls the judge knows the tests make first, answered in order,
                remote = {b[0]: b[2][0] for b in reply[1] if b[1] == "remote"}  # up to one the judge binds itself
                for name, tree in msg[2]:
                    if type(name) is not str or name not in remote:
                        break
                    reply = self.answer(["op", "call", remote[name], tree], restore)
                    restore()
                    wire.send(self.rep_fd, reply)
            while (msg := wire.recv(self.req_fd)) is not None:
                try:
                    reply = self.answer(msg, restore)
                except MemoryError:
                    reply = ["exc", "MemoryError", "MemoryError", "", []]
                except RecursionError:
                    reply = ["notplain", f"a value nested deeper than {wire.MAX_DEPTH} levels"]
                restore()
                wire.send(self.rep_fd, reply)
        finally:
            exit_(0)


def serve(req_fd: int, rep_fd: int, limit: int) -> NoReturn:
    """Entry point of the program process (after its sandbox is in place)."""
    Server(req_fd, rep_fd, limit).serve()
