"""The calls a job's tests will make first, known before they run: sent with the program in one message.

Each call of a program function is a round trip between the judge and the sandbox. Most MBPP and
HumanEval tests open with straight-line asserts whose calls take only literal arguments
(`assert f([1, 2], 3) == 4`). `plan` finds that prefix from the test's syntax alone, in execution
order; the program process runs those calls right after loading and streams their replies, and the
judge uses each reply when the test makes exactly that call (a different call means the plan was
wrong: the job is run again without one). Anything else (loops, branches, helpers, `and`/`or`,
non-literal arguments, program objects used other than by a call) ends the prefix.
"""

from __future__ import annotations

import ast
import builtins
import functools
from typing import Any, Iterator

_STOP = (ast.BoolOp, ast.IfExp, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
         ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom, ast.Starred)
_SAFE_BUILTINS = frozenset({"abs", "all", "any", "bool", "dict", "float", "frozenset", "int", "isinstance", "len",
                            "list", "max", "min", "repr", "round", "set", "sorted", "str", "sum", "tuple", "type"})


def _walk(tree: ast.AST, parents: dict[int, ast.AST] | None = None) -> Iterator[ast.AST]:
    """Every node of `tree`, each after its parent (as ast.walk, in a cheaper order); records parents if asked."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for field in node._fields:
            value = getattr(node, field, None)
            children = [value] if isinstance(value, ast.AST) else value if isinstance(value, list) else ()
            for child in children:
                if isinstance(child, ast.AST):
                    todo.append(child)
                    if parents is not None:
                        parents[id(child)] = node


def _bound(tree: ast.AST) -> set[str]:
    """Names the test code binds itself (assignments, defs, imports, arguments, loop targets...)."""
    out: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
    return out


def _calls(stmt: ast.stmt, program: Any, alias: dict[str, str]) -> list[tuple[str, tuple, dict]] | None:
    """The program calls of one statement in evaluation order, or None when the statement is not plain."""
    if not isinstance(stmt, (ast.Assert, ast.Expr, ast.Assign, ast.Import, ast.ImportFrom, ast.Pass)):
        return None
    if isinstance(stmt, ast.Assign) and not all(isinstance(t, ast.Name) for t in stmt.targets):
        return None  # `root.left = Node(2)`: setting an attribute may be an operation on a program object
    if isinstance(stmt, ast.Assert) and stmt.msg is not None and not isinstance(stmt.msg, ast.Constant):
        return None  # the message runs only when the assert fails
    calls: list[tuple[str, tuple, dict, tuple[int, int]]] = []
    parents: dict[int, ast.AST] = {}
    for node in _walk(stmt, parents):
        if isinstance(node, _STOP):
            return None
        if isinstance(node, ast.Attribute) and any(isinstance(n, ast.Call) for n in _walk(node.value)):
            return None  # `f(1).x`: reading an attribute of a result may be an operation on a program object
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not program(node.func.id, alias) \
                and node.func.id not in _SAFE_BUILTINS and node.func.id not in _LOCAL_CALLS:
            return None  # a helper of the tests may call the program in ways we cannot see
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and program(node.id, alias):
            call = parents.get(id(node))
            if not (isinstance(call, ast.Call) and call.func is node):
                return None
            try:
                args = tuple(ast.literal_eval(a) for a in call.args)
                kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
            if len(kwargs) != len(call.keywords):
                return None
            calls.append((alias.get(node.id, node.id), args, kwargs, _order(call)))
    calls.sort(key=lambda c: c[3])  # evaluation order: an inner call (none here: args are literals) or left to right
    return [c[:3] for c in calls]


_LOCAL_CALLS = frozenset({"approx", "isclose"})


def _order(call: ast.Call) -> tuple[int, int]:
    return (call.lineno, call.col_offset)


@functools.lru_cache(maxsize=256)
def plan(source: str) -> tuple[tuple[str, tuple, dict], ...]:
    """(program name, args, kwargs) of the first calls the tests in `source` make, in order."""
    try:
        return plan_tree(ast.parse(source))
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return ()


def plan_tree(tree: ast.Module) -> tuple[tuple[str, tuple, dict], ...]:
    """`plan` of already parsed tests (the judge parses each test once for both plan and code); reads `tree` only."""
    bound = _bound(tree)
    names = set(dir(builtins))

    def program(name: str, alias: dict[str, str]) -> bool:
        return name in alias or (name not in bound and name not in names)

    body, alias = list(tree.body), {}
    last = body[-1] if body else None
    if (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) and isinstance(last.value.func, ast.Name)
            and len(last.value.args) == 1 and isinstance(last.value.args[0], ast.Name) and not last.value.keywords):
        check = [s for s in body if isinstance(s, ast.FunctionDef) and s.name == last.value.func.id]
        if len(check) == 1 and len(check[0].args.args) == 1 and not check[0].decorator_list:
            alias = {check[0].args.args[0].arg: last.value.args[0].id}
            prelude = [s for s in body[:-1] if s is not check[0]]
            if any(_calls(s, program, {}) != [] for s in prelude if not isinstance(s, (ast.FunctionDef, ast.ClassDef))):
                return ()
            body = check[0].body
    out: list[tuple[str, tuple, dict]] = []
    for stmt in body:
        calls = _calls(stmt, program, alias)
        if calls is None:
            break
        out.extend(calls)
    return tuple(out)
