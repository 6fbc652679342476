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
from typing import Any

_STOP = frozenset({ast.BoolOp, ast.IfExp, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
                   ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom, ast.Starred})  # (the parser makes exact types)
_SAFE_BUILTINS = frozenset({"abs", "all", "any", "bool", "dict", "float", "frozenset", "int", "isinstance", "len",
                            "list", "max", "min", "repr", "round", "set", "sorted", "str", "sum", "tuple", "type"})


_LEAVES = frozenset({ast.Constant, ast.Name})  # nodes without children (but a ctx)


def _nodes(tree: ast.AST, parents: dict[int, ast.AST] | None = None) -> list[ast.AST]:
    """Every node of `tree`, each after its parent (breadth first); records parents if asked.
    (A list, not a generator like ast.walk: planning runs for every job, and this is most of it.)"""
    out = [tree]
    for node in out:  # (the loop reaches the nodes appended as it goes)
        if type(node) in _LEAVES:
            continue
        for field in node._fields:
            if field == "ctx":  # Load/Store/Del: read through their parent, never visited
                continue
            value = getattr(node, field, None)
            if isinstance(value, ast.AST):
                out.append(value)
                if parents is not None:
                    parents[id(value)] = node
            elif type(value) is list:
                for child in value:
                    if isinstance(child, ast.AST):
                        out.append(child)
                        if parents is not None:
                            parents[id(child)] = node
    return out


def _bound(nodes: list[ast.AST]) -> set[str]:
    """Names the test code binds itself (assignments, defs, imports, arguments, loop targets...)."""
    out: set[str] = set()
    for node in nodes:
        kind = type(node)
        if kind is ast.Name:
            if type(node.ctx) is not ast.Load:
                out.add(node.id)
        elif kind in _DEFS:
            out.add(node.name)
        elif kind in _IMPORTS:
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif kind is ast.arg:
            out.add(node.arg)
    return out


_DEFS = frozenset({ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef})
_IMPORTS = frozenset({ast.Import, ast.ImportFrom})
_PLAIN = frozenset({ast.Assert, ast.Expr, ast.Assign, ast.Import, ast.ImportFrom, ast.Pass})


def _calls(stmt: ast.stmt, program: Any, alias: dict[str, str], nodes: list[ast.AST],
           parents: dict[int, ast.AST]) -> list[tuple[str, tuple, dict]] | None:
    """The program calls of one statement (`nodes`: its nodes, `parents` of each) in evaluation order, or None
    when the statement is not plain."""
    if type(stmt) not in _PLAIN:
        return None
    if isinstance(stmt, ast.Assign) and not all(isinstance(t, ast.Name) for t in stmt.targets):
        return None  # `root.left = Node(2)`: setting an attribute may be an operation on a program object
    if isinstance(stmt, ast.Assert) and stmt.msg is not None and not isinstance(stmt.msg, ast.Constant):
        return None  # the message runs only when the assert fails
    calls: list[tuple[str, tuple, dict, tuple[int, int]]] = []
    for node in nodes:
        kind = type(node)
        if kind in _STOP:
            return None
        if kind is ast.Attribute and any(type(n) is ast.Call for n in _nodes(node.value)):
            return None  # `f(1).x`: reading an attribute of a result may be an operation on a program object
        if kind is ast.Call and type(node.func) is ast.Name and not program(node.func.id, alias) \
                and node.func.id not in _SAFE_BUILTINS and node.func.id not in _LOCAL_CALLS:
            return None  # a helper of the tests may call the program in ways we cannot see
        if kind is ast.Name and type(node.ctx) is ast.Load and program(node.id, alias):
            call = parents.get(id(node))
            if not (type(call) is ast.Call and call.func is node):
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
    parents: dict[int, ast.AST] = {}
    walks: dict[int, list[ast.AST]] = {}

    def walk(stmt: ast.stmt) -> list[ast.AST]:  # each statement walked once, for bound names and for calls
        if id(stmt) not in walks:
            walks[id(stmt)] = _nodes(stmt, parents)
        return walks[id(stmt)]

    def calls_of(stmt: ast.stmt, alias: dict[str, str]) -> list[tuple[str, tuple, dict]] | None:
        return _calls(stmt, program, alias, walk(stmt), parents)

    bound = _bound([node for stmt in tree.body for node in walk(stmt)])
    names = vars(builtins)

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
            if any(calls_of(s, {}) != [] for s in prelude if not isinstance(s, (ast.FunctionDef, ast.ClassDef))):
                return ()
            body = check[0].body
    out: list[tuple[str, tuple, dict]] = []
    for stmt in body:
        calls = calls_of(stmt, alias)
        if calls is None:
            break
        out.extend(calls)
    return tuple(out)
