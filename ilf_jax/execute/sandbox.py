"""Child side of the executor: limits, then program + tests in one namespace, then one report.

Runs only in a process forked by a worker (never in the caller). The report travels on a pipe; a
pass also needs a one-time nonce that the harness reads from a second pipe only after the tests
returned, and a dedicated exit status. Any byte the program adds to the channel spoils the report.
"""

from __future__ import annotations

import ast
import builtins
import json
import linecache
import operator
import os
import random
import resource
import signal
import sys
import traceback
from typing import Any, NoReturn

RC_PASS = 87
RC_REPORTED = 86
_OPS = {
    ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne), ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le), ast.Gt: (">", operator.gt), ast.GtE: (">=", operator.ge),
    ast.Is: ("is", operator.is_), ast.IsNot: ("is not", operator.is_not),
    ast.In: ("in", lambda a, b: a in b), ast.NotIn: ("not in", lambda a, b: a not in b),
}
_BY_SYMBOL = dict(_OPS.values())
_MEMORY_REPORT = json.dumps({"kind": "memory", "error": "MemoryError: the program ran out of memory"}).encode()


def _short(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 15] + f"... [{len(text) - limit + 15} more]"


def _safe_repr(value: Any, limit: int = 300) -> str:
    """repr() that cannot raise and stays short."""
    try:
        return _short(repr(value), limit)
    except BaseException as e:  # noqa: BLE001 - a hostile __repr__
        return f"<unprintable {type(value).__name__}: {type(e).__name__}>"


def make_check(entry_point: str):
    """The helper rewritten asserts call: compares once, and on failure says call, expected and actual."""

    def __ilf_check(actual: Any, expected: Any, op: str, source: str) -> None:
        if not _BY_SYMBOL[op](actual, expected):
            shown = source.replace("candidate", entry_point) if entry_point else source
            raise AssertionError(f"{shown}\n  expected: {_safe_repr(expected)}\n  actual:   {_safe_repr(actual)}")

    return __ilf_check


class _ExplainAsserts(ast.NodeTransformer):
    """`assert L op R[, msg]` -> `__ilf_check(L, R, 'op', 'L op R')` (one evaluation of each side)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        test = node.test
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS):
            return node
        text = ast.get_source_segment(self.source, test) or ""
        call = ast.Call(
            func=ast.Name("__ilf_check", ast.Load()),
            args=[test.left, test.comparators[0], ast.Constant(_OPS[type(test.ops[0])][0]), ast.Constant(text)],
            keywords=[],
        )
        return ast.copy_location(ast.Expr(call), node)


def compile_test(source: str) -> Any:
    """Test code with explaining asserts, compiled under the file name `<test>`."""
    tree = _ExplainAsserts(source).visit(ast.parse(source, "<test>"))
    return compile(ast.fix_missing_locations(tree), "<test>", "exec")


def describe(exc: BaseException, frames: int, limit: int) -> str:
    """Exception type and message plus the last `frames` frames of the program/test code, truncated."""
    try:
        if isinstance(exc, SyntaxError):
            return _short("".join(traceback.format_exception_only(exc)).rstrip(), limit)
        summary = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<")]
        lines = [f'  File "{f.filename}", line {f.lineno}, in {f.name}' + (f"\n    {_short(f.line, 200)}" if f.line else "")
                 for f in summary[-frames:]] if frames else []
        try:
            message = _short(str(exc), limit // 2)
        except BaseException:  # noqa: BLE001 - a hostile __str__
            message = "<unprintable message>"
        head = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        text = ("Traceback (most recent call last):\n" + "\n".join(lines) + "\n" if lines else "") + head
        return _short(text, limit)
    except MemoryError:
        return type(exc).__name__


def _kind(exc: BaseException) -> str:
    """Verdict kind of an exception raised by the program or its tests."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, AssertionError):
        return "failed"
    return "error"


def set_limits(limits: dict[str, int], uid: int | None) -> None:
    """Own session, resource limits, an unprivileged uid of its own (when we are root), death with the worker."""
    os.setsid()
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output_kb"] * 1024,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (after setuid, which clears it)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # CPython ignores it; we want the kill -> output_limit


def run_child(wire: dict[str, Any], nonce_fd: int, report_fd: int, cfg: dict[str, Any]) -> NoReturn:
    """Run program then tests in one namespace and write one report; never returns."""
    write, read, exit_, settrace, setprofile = os.write, os.read, os._exit, sys.settrace, sys.setprofile
    modules = sys.modules
    builtins_dict = vars(builtins)
    saved_builtins = dict(builtins_dict)
    clear, update = builtins_dict.clear, builtins_dict.update

    def restore() -> None:  # undo what the program did to builtins, the tracer and pytest.approx
        clear()
        update(saved_builtins)
        settrace(None)
        setprofile(None)
        if pytest_mod is not None:
            modules["pytest"] = pytest_mod
            pytest_mod.approx = approx
    pytest_mod = modules.get("pytest")
    approx = getattr(pytest_mod, "approx", None)
    dumps = json.dumps

    def report(kind: str, error: str, rc: int = RC_REPORTED) -> NoReturn:
        try:
            write(report_fd, dumps({"kind": kind, "error": error}).encode())
        finally:
            exit_(rc)

    random.seed(0)
    program, test, entry_point = wire["program"], wire["test"], wire["entry_point"]
    frames, limit = cfg["frames"], cfg["error_chars"]
    linecache.cache["<program>"] = (len(program), None, program.splitlines(True), "<program>")
    linecache.cache["<test>"] = (len(test), None, test.splitlines(True), "<test>")
    try:
        code = compile(program, "<program>", "exec")
    except MemoryError:
        write(report_fd, _MEMORY_REPORT)
        exit_(RC_REPORTED)
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
        report("syntax_error", describe(e, 0, limit))
    try:
        test_code = compile_test(test)
    except BaseException as e:  # noqa: BLE001 - bad test input is reported, not raised
        report("error", "the test code does not compile: " + describe(e, 0, limit))
    namespace: dict[str, Any] = {}
    stage = "program"
    try:
        exec(code, namespace)
        stage = "tests"
        restore()
        namespace["__builtins__"] = builtins_dict
        namespace["__ilf_check"] = make_check(entry_point)
        exec(test_code, namespace)
    except MemoryError:
        namespace.clear()
        write(report_fd, _MEMORY_REPORT)
        exit_(RC_REPORTED)
    except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt... are failures too
        restore()
        text = describe(e, frames, limit)
        kind = _kind(e)
        if kind == "error" and stage == "program":
            text = "while running the program (before the tests): " + text
        report(kind, text)
    restore()
    nonce = read(nonce_fd, 64).decode("ascii", "replace")
    try:
        write(report_fd, dumps({"kind": "passed", "error": "", "nonce": nonce}).encode())
    finally:
        exit_(RC_PASS)
