"""The judge: runs a job's tests in a trusted interpreter that never ran program code, and decides the verdict.

The program's names are bound to `Remote` proxies; calling one sends the arguments as plain data to
the sandboxed program process (ilf_jax/execute/program.py) and turns the reply back into plain
values (or raises the program's exception). Asserts, `approx` and `isclose` therefore compare only
values the judge built itself. A program object that is not plain data stays a handle: it can be
passed back to the program, called, or have attributes read and set; any other use (comparing,
printing, iterating...) fails the job: "returned a <type>, not a plain value". The calls that
prefetch.py finds in the tests' straight-line opening are sent along with the program; their
replies are used in order when the tests make exactly those calls.
"""

from __future__ import annotations

import ast
import builtins
import collections
import functools
import importlib
import json
import linecache
import operator
import random
import re
import traceback
from typing import Any

from ilf_jax.execute import wire
from ilf_jax.execute.prefetch import plan_tree
from ilf_jax.execute.program import STDLIB_BINDABLE, _short

_OPS = {
    ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne), ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le), ast.Gt: (">", operator.gt), ast.GtE: (">=", operator.ge),
    ast.Is: ("is", operator.is_), ast.IsNot: ("is not", operator.is_not),
    ast.In: ("in", lambda a, b: a in b), ast.NotIn: ("not in", lambda a, b: a not in b),
}
_BY_SYMBOL = dict(_OPS.values())
PREFIX_PROGRAM = "while running the program (before the tests): "
TAMPERED = "Error: the program tampered with the test harness's channel"


class NotPlainValue(BaseException):
    """A program object used as a value in the tests (a BaseException: test code cannot swallow it)."""


class ProgramGone(BaseException):
    """The program process ended (or closed its channel) while the judge waited for a reply."""


class Tampered(BaseException):
    """The program process sent something that is not a well-formed reply."""


class ReplyTooBig(BaseException):
    """A reply over the size cap."""


class Stopped(BaseException):
    """The supervisor ended the job (a limit, or its caller went away) while the tests ran."""


class PlanDiverged(BaseException):
    """The tests made a call other than the next prefetched one: the job must run again without a plan."""


class Unsendable(BaseException):
    """The tests pass the program something that is not plain data (a function, an object of theirs)."""


def _safe_repr(value: Any, limit: int = 300) -> str:
    """repr() of a judge-built value, short and never raising."""
    try:
        return _short(repr(value), limit)
    except BaseException as e:  # noqa: BLE001
        return f"<unprintable {type(value).__name__}: {type(e).__name__}>"


class Pipes:
    """Blocking message transport over the two pipe ends (the worker uses its supervising transport instead)."""

    def __init__(self, req_fd: int, rep_fd: int) -> None:
        self.req_fd, self.rep_fd = req_fd, rep_fd

    def send(self, obj: Any) -> None:
        wire.send(self.req_fd, obj)

    def recv(self, cap: int) -> Any:
        return wire.recv(self.rep_fd, cap)


class Channel:
    """The judge's end of the conversation with the program process, over a transport (`send`, `recv`)."""

    def __init__(self, io: Any, cap: int, limit: int) -> None:
        self.io, self.cap, self.limit = io, cap, limit
        self.poison: str | None = None  # the first misuse of a program object: the job fails whatever follows
        self.proxies: dict[int, Remote] = {}
        self.top: dict[int, str] = {}  # handles of the program's global names
        self.planned: collections.deque[tuple[str, str]] = collections.deque()  # prefetched calls not yet used

    def request(self, msg: Any) -> Any:
        try:
            self.io.send(msg)
        except OSError:
            raise ProgramGone() from None
        return self.reply()

    def reply(self) -> Any:
        try:
            reply = self.io.recv(self.cap)
        except wire.TooBig:
            raise ReplyTooBig() from None
        except wire.Malformed:
            raise Tampered() from None
        except OSError:
            raise ProgramGone() from None
        if reply is None:
            raise ProgramGone()
        if type(reply) is not list or not reply or type(reply[0]) is not str:
            raise Tampered()
        return reply

    def proxy(self, n: int, type_name: str = "object", origin: str = "") -> Remote:
        if n not in self.proxies:
            self.proxies[n] = Remote(self, n, str(type_name)[:100], origin)
        return self.proxies[n]

    def op(self, target: Remote, kind: str, payload: Any, origin: str) -> Any:
        """Run an operation on a program object; its result as a plain value or a handle."""
        enc = wire.Encoder(_handle_of)
        try:
            tree = enc.encode(payload)
        except wire.NotPlain as e:
            raise Unsendable(f"the tests pass {e} to the program, which cannot be sent as plain data") from None
        n = object.__getattribute__(target, "_n")
        if self.planned:  # the program already ran this call (prefetch.py): its reply is next on the channel
            if kind != "call" or self.planned[0] != (self.top.get(n), json.dumps(tree)):
                raise PlanDiverged()
            self.planned.popleft()
            reply = self.reply()
        else:
            reply = self.request(["op", kind, n, tree])
        if reply[0] == "exc":
            raise remote_exception(reply)
        if reply[0] == "notplain" and len(reply) == 2:
            self.poison = f"{origin} returned {_short(str(reply[1]), 200)}, not a plain value"
            raise NotPlainValue(self.poison)
        if reply[0] != "ok" or len(reply) != 2 or type(reply[1]) is not list or len(reply[1]) != len(enc.keep) + 1:
            raise Tampered()
        dec = wire.Decoder(lambda n, type_name: self.proxy(n, type_name, origin), enc.keep)
        try:
            values = [dec.decode(t) for t in reply[1][:1]] + [dec.decode(t, fresh=True) for t in reply[1][1:]]
            for target_obj, new in zip(enc.keep, values[1:]):
                wire.write_back(target_obj, new)
        except (wire.Malformed, RecursionError):
            raise Tampered() from None
        return values[0]

    def load(self, program: str, plan: tuple = ()) -> tuple[str, str] | dict[str, Any]:
        """Send the program (and the calls to run right after it); its bindings for the test namespace,
        or (kind, error) when it did not load."""
        batch = []
        for name, args, kwargs in plan:
            try:
                batch.append([name, wire.Encoder().encode((args, kwargs))])
            except wire.NotPlain:
                break
        self.planned.extend((name, json.dumps(tree)) for name, tree in batch)
        reply = self.request(["load", program, batch])
        if reply[0] == "syntax" and len(reply) == 2 and type(reply[1]) is str:
            return "syntax_error", reply[1]
        if reply[0] == "exc":
            exc = remote_exception(reply)
            text = describe(exc, 3, self.limit)
            kind = verdict_kind(exc)
            return kind, (PREFIX_PROGRAM + text if kind == "error" else text)
        if reply[0] != "loaded" or len(reply) != 2 or type(reply[1]) is not list:
            raise Tampered()
        names: dict[str, Any] = {}
        dec = wire.Decoder()
        for item in reply[1]:
            if not (type(item) is list and len(item) == 3 and type(item[0]) is str and type(item[1]) is str):
                raise Tampered()
            name, kind, data = item
            if kind == "value":
                try:
                    names[name] = dec.decode(data)
                except (wire.Malformed, RecursionError):
                    raise Tampered() from None
            elif kind == "remote" and type(data) is list and len(data) == 3 and type(data[0]) is int:
                names[name] = self.proxy(data[0], data[1], name)
                self.top[data[0]] = name
            elif kind == "module" and data in STDLIB_BINDABLE:
                names[name] = importlib.import_module(data)
            elif kind == "import" and type(data) is list and len(data) == 2 and data[0] in STDLIB_BINDABLE:
                value = getattr(importlib.import_module(data[0]), str(data[1]), None)
                if value is not None:
                    names[name] = value
        remote = set(self.top.values())  # the program ran the planned calls up to the first name not remote
        for i, (name, _tree) in enumerate(self.planned):
            if name not in remote:
                while len(self.planned) > i:
                    self.planned.pop()
                break
        return names


def _handle_of(obj: Any) -> int:
    if type(obj) is Remote:
        return object.__getattribute__(obj, "_n")
    raise wire.NotPlain(f"a {type(obj).__name__}")


def _misuse(self: Remote, *_a: Any, **_k: Any) -> Any:
    chan, origin, type_name = (object.__getattribute__(self, k) for k in ("_chan", "_origin", "_type"))
    if chan.poison is None:
        chan.poison = f"{origin} returned a {type_name}, not a plain value"
    raise NotPlainValue(chan.poison)


class Remote:
    """A program object in the judge: callable and attribute access go to the program, nothing else works."""

    __slots__ = ("_chan", "_n", "_type", "_origin")

    def __init__(self, chan: Channel, n: int, type_name: str, origin: str) -> None:
        for k, v in (("_chan", chan), ("_n", n), ("_type", type_name), ("_origin", origin)):
            object.__setattr__(self, k, v)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        chan = object.__getattribute__(self, "_chan")
        return chan.op(self, "call", (args, kwargs), object.__getattribute__(self, "_origin") or "the program")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        chan = object.__getattribute__(self, "_chan")
        return chan.op(self, "getattr", (name,), f"{object.__getattribute__(self, '_origin')}.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        chan = object.__getattribute__(self, "_chan")
        chan.op(self, "setattr", (name, value), object.__getattribute__(self, "_origin"))

    def __repr__(self) -> str:
        return f"<program {object.__getattribute__(self, '_type')}>"

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = __bool__ = __len__ = __iter__ = _misuse
    __contains__ = __getitem__ = __setitem__ = __delitem__ = __str__ = __format__ = __bytes__ = _misuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _misuse
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = __matmul__ = __rmatmul__ = _misuse
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = __lshift__ = __rlshift__ = _misuse
    __rshift__ = __rrshift__ = __neg__ = __pos__ = __abs__ = __invert__ = __int__ = __float__ = _misuse
    __complex__ = __index__ = __round__ = __trunc__ = __floor__ = __ceil__ = __reversed__ = __next__ = _misuse
    __enter__ = __exit__ = __divmod__ = __rdivmod__ = __await__ = __aiter__ = __anext__ = _misuse


def remote_exception(reply: list[Any]) -> BaseException:
    """The program's exception rebuilt in the judge: a subclass of its first builtin base, same name and text."""
    if len(reply) != 5 or not all(type(x) is str for x in reply[1:4]) or type(reply[4]) is not list:
        return Tampered()
    _, name, base_name, message, frames = reply
    base = getattr(builtins, base_name, None)
    if not (isinstance(base, type) and issubclass(base, BaseException)):
        base = Exception
    try:
        cls = type(name if name.isidentifier() else "Exception", (base,), {"__str__": lambda self: message,
                                                                           "__module__": "builtins"})
        exc = cls.__new__(cls)
    except TypeError:  # a base that cannot be subclassed or made without arguments
        cls = type(name if name.isidentifier() else "Exception", (Exception,), {"__str__": lambda self: message})
        exc = cls.__new__(cls)
    exc.args = (message,)
    exc.ilf_frames = [f for f in frames if type(f) is list and len(f) == 4][-20:]
    return exc


def describe(exc: BaseException, frames: int, limit: int) -> str:
    """Type and message plus the last `frames` frames of test (judge) and program (remote) code, truncated."""
    try:
        if isinstance(exc, SyntaxError) and not hasattr(exc, "ilf_frames"):
            return _short("".join(traceback.format_exception_only(exc)).rstrip(), limit)
        summary = [(f.filename, f.lineno, f.name, f.line) for f in traceback.extract_tb(exc.__traceback__)
                   if f.filename.startswith("<")]
        summary += [tuple(f) for f in getattr(exc, "ilf_frames", ())]
        lines = [f'  File "{f}", line {n}, in {name}' + (f"\n    {_short(str(line), 200)}" if line else "")
                 for f, n, name, line in summary[-frames:]] if frames else []
        try:
            message = _short(str(exc), limit // 2)
        except BaseException:  # noqa: BLE001
            message = "<unprintable message>"
        head = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        text = ("Traceback (most recent call last):\n" + "\n".join(lines) + "\n" if lines else "") + head
        return _short(text, limit)
    except MemoryError:
        return type(exc).__name__


def verdict_kind(exc: BaseException) -> str:
    """Verdict kind of an exception raised by the program or its tests."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, (AssertionError, NotPlainValue)):
        return "failed"
    return "error"


def make_check(entry_point: str):
    """The helper rewritten asserts call: compares once, and on failure says call, expected and actual."""

    def __ilf_check(actual: Any, expected: Any, op: str, source: str) -> None:
        if not _BY_SYMBOL[op](actual, expected):
            shown = source.replace("candidate", entry_point) if entry_point else source
            raise AssertionError(f"{shown}\n  expected: {_safe_repr(expected)}\n  actual:   {_safe_repr(actual)}")

    return __ilf_check


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n|$)")  # lines as ast.get_source_segment splits them


class _ExplainAsserts:
    """`assert L op R[, msg]` -> `__ilf_check(L, R, 'op', 'L op R')` (one evaluation of each side)."""

    def __init__(self, source: str) -> None:
        self.lines = _LINE.findall(source)  # once per test, not once per assert (get_source_segment's cost)

    def visit(self, tree: ast.Module) -> ast.Module:
        """The tree with its asserts rewritten, in place. Asserts are statements: only statement lists are
        walked, not the expressions in them (ast.NodeTransformer's walk of every node cost ~4x as much)."""
        self._statements(tree.body)
        return tree

    def _statements(self, body: list[Any]) -> None:
        for i, node in enumerate(body):
            if type(node) is ast.Assert:
                body[i] = self.visit_Assert(node)
                continue
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):  # (handlers, cases: their bodies)
                inner = getattr(node, field, None)
                if type(inner) is list:
                    self._statements(inner)

    def segment(self, node: ast.expr) -> str:
        """ast.get_source_segment(source, node) on the lines split once."""
        if node.end_lineno is None or node.end_col_offset is None:
            return ""
        first, last = node.lineno - 1, node.end_lineno - 1
        if first == last:
            return self.lines[first].encode()[node.col_offset:node.end_col_offset].decode()
        return "".join([self.lines[first].encode()[node.col_offset:].decode(), *self.lines[first + 1:last],
                        self.lines[last].encode()[:node.end_col_offset].decode()])

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        test = node.test
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS):
            return node
        at = {"lineno": test.lineno, "col_offset": test.col_offset, "end_lineno": test.end_lineno,
              "end_col_offset": test.end_col_offset}  # located new nodes: no fix_missing_locations pass
        call = ast.Call(func=ast.Name("__ilf_check", ast.Load(), **at),
                        args=[test.left, test.comparators[0], ast.Constant(_OPS[type(test.ops[0])][0], **at),
                              ast.Constant(self.segment(test), **at)], keywords=[], **at)
        return ast.Expr(call, lineno=node.lineno, col_offset=node.col_offset, end_lineno=node.end_lineno,
                        end_col_offset=node.end_col_offset)


@functools.lru_cache(maxsize=256)  # the samples of one task share their tests
def prepare_test(source: str) -> tuple[Any, tuple]:
    """Test code with explaining asserts, compiled under the file name `<test>`, and its prefetch plan:
    one parse for both."""
    tree = ast.parse(source, "<test>")
    try:
        calls = plan_tree(tree)  # before the rewrite, which changes the tree in place
    except (MemoryError, RecursionError):
        calls = ()
    return compile(_ExplainAsserts(source).visit(tree), "<test>", "exec"), calls


def judge(job: dict[str, Any], io: Any, cfg: dict[str, Any], prefetch: bool = True) -> dict[str, str]:
    """Run one job's tests against the program behind `io`: {"kind", "error"}.

    Kinds beyond the verdicts: "gone" (the program process ended or closed its channel; its exit
    status decides), "stopped" (the supervisor ended the job; its reason decides) and "rerun" (the
    prefetched calls were not the tests' calls: run the job again with `prefetch=False`).
    """
    limit, frames = cfg["error_chars"], cfg["frames"]
    chan = Channel(io, cfg["reply_bytes"], limit)
    test = job["test"]
    linecache.cache["<test>"] = (len(test), None, test.splitlines(True), "<test>")
    random.seed(0)
    try:
        test_code, calls = prepare_test(test)
    except BaseException as e:  # noqa: BLE001 - bad test input is reported, not raised
        return {"kind": "error", "error": "the test code does not compile: " + describe(e, 0, limit)}
    try:
        loaded = chan.load(job["program"], calls if prefetch else ())
        if isinstance(loaded, tuple):
            return {"kind": loaded[0], "error": loaded[1]}
        namespace = {**loaded, "__builtins__": builtins, "__ilf_check": make_check(job["entry_point"])}
        exec(test_code, namespace)
    except Stopped:
        return {"kind": "stopped", "error": ""}
    except PlanDiverged:
        return {"kind": "rerun", "error": ""}
    except ProgramGone:
        return {"kind": "gone", "error": ""}
    except Tampered:
        return {"kind": "error", "error": TAMPERED}
    except Unsendable as e:
        return {"kind": "harness_error", "error": f"HarnessError: {e}"}
    except ReplyTooBig:
        return {"kind": "output_limit", "error": f"OutputLimit: a call returned more than {cfg['reply_bytes'] >> 20} MiB"}
    except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt... are failures too
        if chan.poison is not None:
            return {"kind": "failed", "error": describe(e, frames, limit) if isinstance(e, NotPlainValue)
                    else f"NotPlainValue: {chan.poison}"}
        return {"kind": verdict_kind(e), "error": describe(e, frames, limit)}
    finally:
        linecache.cache.pop("<test>", None)
    if chan.planned:  # a prefetched call the tests never made: the plan was wrong
        return {"kind": "rerun", "error": ""}
    if chan.poison is not None:  # the tests caught the misuse: still a failure
        return {"kind": "failed", "error": f"NotPlainValue: {chan.poison}"}
    return {"kind": "passed", "error": ""}
