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
