"""The plain-data codec between judge and program: exact types only, shared structure, argument write-back."""

from __future__ import annotations

import json
from collections import Counter, OrderedDict, defaultdict, deque
from decimal import Decimal
from fractions import Fraction

import pytest

from ilf_jax.execute import wire

VALUES = [None, True, 0, -(10 ** 40), 2 ** 62, 1.5, float("inf"), -0.0, 1 + 2j, "s\ud800", b"\x00\xff",
          bytearray(b"ab"), [1, [2]], (1, (2,)), {"a": 1, (1, 2): [3]}, {1, 2}, frozenset({3}), range(1, 9, 2),
          Ellipsis, Counter("aab"), OrderedDict(b=1, a=2), defaultdict(list, a=[1]), deque([1, 2], maxlen=3),
          Decimal("1.10"), Fraction(1, 3), int, type(None)]


def _roundtrip(value):
    tree = json.loads(json.dumps(wire.Encoder().encode(value)))
    return wire.Decoder().decode(tree)


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_roundtrip_keeps_value_and_exact_type(value):
    back = _roundtrip(value)
    assert type(back) is type(value) and (back == value or value != value)
    if isinstance(value, deque):
        assert back.maxlen == value.maxlen
    if isinstance(value, defaultdict):
        assert back.default_factory is list


def test_subclasses_and_foreign_objects_are_not_plain():
    class I(int):
        pass

    for v in (I(1), [I(1)], {"k": object()}, {I(1): 2}):
        with pytest.raises(wire.NotPlain):
            wire.Encoder().encode(v)
    handles = []
    tree = wire.Encoder(lambda o: handles.append(o) or len(handles) - 1).encode([I(1)])
    assert tree == ["L", ["H", 0, "I"]] and handles == [I(1)]


def test_shared_and_cyclic_structure():
    inner = [1]
    cyc: list = [inner, inner]
    cyc.append(cyc)
    back = _roundtrip(cyc)
    assert back[0] is back[1] and back[2] is back


def test_too_deep_is_refused():
    deep: list = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(wire.NotPlain):
        wire.Encoder().encode(deep)


@pytest.mark.parametrize("tree", [{"a": 1}, [], [1], ["L", {}], ["R", 0], ["S", ["L"]], ["D", 1], ["I", 5],
                                  ["Q", 1, 0], ["Zz"], ["Ty", "eval"], ["B", 1], ["W", -1], ["DD", "lambda"]])
def test_malformed_trees_are_rejected(tree):
    with pytest.raises(wire.Malformed):
        wire.Decoder().decode(tree)


def test_write_back_updates_the_callers_objects_in_place():
    args = ([3, 1], {"k": 1}, {1})
    enc = wire.Encoder()
    enc.encode(args)
    mutated = ([1, 3, 4], {"k": 2}, {1, 5})
    trees = [json.loads(json.dumps(wire.Encoder(memo={}).encode(m, fresh=True))) for m in mutated]
    for target, tree in zip(enc.keep, trees):
        wire.write_back(target, wire.Decoder().decode(tree, fresh=True))
    assert args == ([1, 3, 4], {"k": 2}, {1, 5})
    with pytest.raises(wire.Malformed):
        wire.write_back([1], {1: 2})


def test_frames_reject_garbage_and_oversize():
    msg = wire.frame(["ok", [1]])
    assert wire.unframe(msg + b"rest", 100) == (["ok", [1]], b"rest")
    assert wire.unframe(msg[:3], 100)[0] is wire.INCOMPLETE
    with pytest.raises(wire.Malformed):
        wire.unframe(b'{"kind": "passed"}', 100)
    with pytest.raises(wire.TooBig):
        wire.unframe(msg, 2)


def _judge(program: str, test: str) -> dict:
    """Judge + program process over plain pipes (no sandbox): the protocol's semantics alone."""
    import os

    from ilf_jax.execute import judge, program as prog

    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(req_w)
        os.close(rep_r)
        prog.serve(req_r, rep_w, 2000)
    os.close(req_r)
    os.close(rep_w)
    try:
        return judge.judge({"program": program, "test": test, "entry_point": ""}, judge.Pipes(req_w, rep_r),
                           {"error_chars": 2000, "frames": 3, "reply_bytes": 1 << 20})
    finally:
        os.close(req_w)
        os.close(rep_r)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("program,test,kind", [
    ("def f(x, k=0):\n    return x + k\n", "assert f(1, k=2) == 3", "passed"),
    ("import math\nLIMIT = {'a': (1, 2)}\ndef f(x):\n    return math.sqrt(x)\n",
     "assert math.isclose(f(4), 2.0) and LIMIT == {'a': (1, 2)}", "passed"),
    ("from collections import Counter\ndef f(s):\n    return Counter(s)\n", "assert f('aab') == Counter(a=2, b=1)", "passed"),
    ("class E(KeyError):\n    pass\ndef f(x):\n    raise E(x)\n", "try:\n    f(1)\nexcept KeyError:\n    pass\nelse:\n    assert False",
     "passed"),
    ("def f(x):\n    return iter(x)\n", "try:\n    assert f([1]) == 1\nexcept BaseException:\n    pass", "failed"),
    ("def f(x):\n    raise MemoryError\n", "f(1)", "memory"),
    ("TABLE = list(range(10 ** 5))\ndef f(i):\n    return TABLE[i]\n", "assert f(7) == 7", "passed"),
    ("def f(d):\n    d['n'] = d.get('n', 0) + 1\n", "d = {}\nf(d)\nf(d)\nassert d == {'n': 2}", "passed"),
])
def test_judge_semantics(program, test, kind):
    got = _judge(program, test)
    assert got["kind"] == kind, got


@pytest.mark.parametrize("test,expected", [
    ("assert f(1) == 2\nassert f(2) == 3", [("f", (1,), {}), ("f", (2,), {})]),
    ("from pytest import approx\ndef check(candidate):\n\tassert candidate([1], k=-2) == approx(1.5), 'm'\n"
     "\tfor i in range(3):\n\t\tassert candidate(i)\ncheck(g)", [("g", ([1],), {"k": -2})]),
    ("root = Node(1)\nroot.left = Node(2)\nassert h(root) == 2", [("Node", (1,), {})]),
    ("assert f(1) or f(2)\nassert f(3)", []),
    ("def helper(x):\n    return f(x)\nassert helper(1) == 2", []),
    ("x = [1]\nassert f(x) == 1", []),
    ("assert f(1).x == 2", []),
    ("assert f(1) == 1, f(2)", []),
    ("import math\nassert math.isclose(f(4), 2.0)\nassert f(0) == 0", [("f", (4,), {}), ("f", (0,), {})]),
    ("assert math.isclose(f(4), 2.0)", []),  # `math` is the program's: reading it is an operation
])
def test_prefetch_plan_is_the_straight_line_prefix(test, expected):
    from ilf_jax.execute.prefetch import plan

    assert list(plan(test)) == expected


def test_a_wrong_plan_is_detected_not_used():
    shadow = "def max(*a):\n    return 0\ndef f(x):\n    return x\n"  # `max` looks like the builtin to the plan
    assert _judge(shadow, "assert max(1, 2) == 0\nassert f(3) == 3")["kind"] == "rerun"


@pytest.mark.parametrize("test", [
    "assert f(1) == 2\nassert f(2) == 3",
    "assert f('a\\r\\nb') == 1\r\nassert f(\r\n 1,\r 2) == \\\n  3\n",
    "x = 1\x0c\nassert  f( 'é€' ,\n 2 )  ==  '𝔘'\nassert g() != [\n  1,\n]\n",
    "from pytest import approx\ndef check(candidate):\n\tassert candidate([1], k=-2) == approx(1.5), 'm'\ncheck(g)",
])
def test_prepared_test_has_the_plan_and_the_asserts_source_text(test):
    import ast

    from ilf_jax.execute import judge
    from ilf_jax.execute.prefetch import plan

    code, calls = judge.prepare_test.__wrapped__(test)  # one parse for both
    assert calls == plan.__wrapped__(test)
    texts, todo = [], [code]
    while todo:  # each rewritten assert carries its source text (in check's code for those inside it)
        consts = todo.pop().co_consts
        texts += [c for c in consts if isinstance(c, str)]
        todo += [c for c in consts if hasattr(c, "co_consts")]
    for node in ast.walk(ast.parse(test)):
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):
            assert ast.get_source_segment(test, node.test) in texts


def test_program_process_sees_every_change_to_builtins_through_the_version_tag():
    import builtins
    import sys

    from ilf_jax.execute import program

    if sys.implementation.name != "cpython":
        assert program._BUILTINS_VERSION is None
        return
    d = {"a": 1}
    tag = program._version_tag(d)
    assert tag is not None and program._BUILTINS_VERSION is not None
    seen = [tag.value]
    for change in (lambda: d.__setitem__("a", 2), lambda: d.update(b=1), lambda: d.pop("b"), d.clear):
        assert tag.value == seen[-1]  # reading changes nothing
        change()
        seen.append(tag.value)
    assert len(set(seen)) == len(seen), seen
    before, real_len = program._BUILTINS_VERSION.value, builtins.len
    builtins.len = lambda x: 0
    builtins.len = real_len
    assert program._BUILTINS_VERSION.value != before  # a change undone is still seen
