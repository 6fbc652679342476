"""Plain data between the judge and the program's process, and the length-prefixed messages that carry it.

A value travels as a tagged JSON tree. Decoding builds only exact builtin types (None, bool, int,
float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset, range, Ellipsis, and the
builtin type objects themselves) and a fixed allow-list (Counter, OrderedDict, defaultdict, deque,
Decimal, Fraction), so a comparison in the
judge never runs code the program chose. Mutable containers are numbered in the order they are
encoded (`["R", n]` refers back), which keeps shared and cyclic structure and lets a call's reply
name the caller's own argument objects. Anything else becomes a handle (`["H", n]`) into the
program process's table, or is refused (`NotPlain`).
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter, OrderedDict, defaultdict, deque
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Callable

MAX_DEPTH = 250
_SMALL_INT = 1 << 62
_FACTORIES: dict[str, Any] = {"None": None, "int": int, "float": float, "str": str, "bool": bool, "list": list,
                              "dict": dict, "set": set, "tuple": tuple, "frozenset": frozenset}
_FACTORY_NAMES = {v: k for k, v in _FACTORIES.items() if v is not None}
# builtin types a test may pass (`remove_datatype(t, int)`) or a program return, by name
_TYPES: dict[str, type] = {t.__name__: t for t in (int, float, complex, str, bytes, bytearray, bool, list, tuple,
                                                 dict, set, frozenset, range, type(None), object)}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}


class NotPlain(Exception):
    """A value that cannot travel as plain data (too deep, an unhashable or foreign key, a foreign object)."""


class Malformed(Exception):
    """A message that is not a well-formed encoding: the other side broke the protocol."""


def _name(obj: Any) -> str:
    """The type name of obj, without calling anything obj defines."""
    return type(obj).__name__


class Encoder:
    """Encodes values; `handle(obj)` gives a handle number for a non-plain object or raises NotPlain.

    `memo` maps id(obj) -> number for mutable containers already numbered (shared across the
    values of one message); `keep` holds them alive while the message is built.
    """

    def __init__(self, handle: Callable[[Any], int] | None = None, memo: dict[int, int] | None = None,
                 budget: int | None = None) -> None:
        self.handle = handle
        self.memo: dict[int, int] = dict(memo or {})
        self.keep: list[Any] = []
        self.budget = budget  # at most this many containers + elements (None: no limit)

    def _strict(self, obj: Any) -> None:
        raise NotPlain(f"a {_name(obj)}")

    def encode(self, obj: Any, depth: int = 0, fresh: bool = False, strict: bool = False) -> Any:
        """The tree of obj; `fresh` encodes an already-numbered container's contents again (argument write-back)."""
        t = type(obj)
        if t is str or t is float or t is bool or obj is None:
            return obj
        if t is int:
            return obj if -_SMALL_INT < obj < _SMALL_INT else ["I", format(obj, "x")]
        if depth > MAX_DEPTH:
            raise NotPlain(f"a value nested deeper than {MAX_DEPTH} levels")
        if self.budget is not None:
            self.budget -= 1 + (len(obj) if t in _SIZED else 0)
            if self.budget < 0:
                raise NotPlain("a value too large to copy")
        d = depth + 1
        if t is tuple:
            return ["T", *[self.encode(x, d, strict=strict) for x in obj]]
        if t is frozenset:
            return ["F", *[self.encode(x, d, strict=True) for x in obj]]
        if t is bytes:
            return ["B", obj.decode("latin-1")]
        if t is complex:
            return ["C", obj.real, obj.imag]
        if t is Decimal:
            return ["N", str(obj)]
        if t is Fraction:
            return ["Q", self.encode(obj.numerator), self.encode(obj.denominator)]
        if t is range:
            return ["G", self.encode(obj.start), self.encode(obj.stop), self.encode(obj.step)]
        if obj is Ellipsis:
            return ["E"]
        if t is type and obj in _TYPE_NAMES:
            return ["Ty", _TYPE_NAMES[obj]]
        if t in _MUTABLE:
            if not fresh:
                if id(obj) in self.memo:
                    return ["R", self.memo[id(obj)]]
                self.memo[id(obj)] = len(self.memo)
                self.keep.append(obj)
            return _MUTABLE[t](self, obj, d, strict)
        if strict or self.handle is None:
            raise NotPlain(f"a {_name(obj)}")
        return ["H", self.handle(obj), type(obj).__name__[:100]]


def _items(enc: Encoder, obj: dict, d: int, strict: bool) -> list[Any]:
    out: list[Any] = []
    for k, v in type(obj).items(obj):  # an exact (trusted) type: OrderedDict keeps its own order
        out.append(enc.encode(k, d, strict=True))
        out.append(enc.encode(v, d, strict=strict))
    return out


def _defaultdict(enc: Encoder, obj: defaultdict, d: int, strict: bool) -> list[Any]:
    # a factory outside the allow-list travels as None: equality, all a test can check, is unchanged
    return ["DD", _FACTORY_NAMES.get(obj.default_factory, "None"), *_items(enc, obj, d, strict)]


_MUTABLE: dict[type, Callable[[Encoder, Any, int, bool], list[Any]]] = {
    list: lambda e, o, d, s: ["L", *[e.encode(x, d, strict=s) for x in list.__iter__(o)]],
    dict: lambda e, o, d, s: ["D", *_items(e, o, d, s)],
    set: lambda e, o, d, s: ["S", *[e.encode(x, d, strict=True) for x in set.__iter__(o)]],
    bytearray: lambda e, o, d, s: ["Y", bytes(o).decode("latin-1")],
    deque: lambda e, o, d, s: ["W", o.maxlen, *[e.encode(x, d, strict=s) for x in deque.__iter__(o)]],
    Counter: lambda e, o, d, s: ["K", *_items(e, o, d, s)],
    OrderedDict: lambda e, o, d, s: ["O", *_items(e, o, d, s)],
    defaultdict: _defaultdict,
}
_SIZED = (tuple, frozenset, *_MUTABLE)


class Decoder:
    """Decodes trees into exact builtin / allow-listed values; `table` holds the numbered containers."""

    def __init__(self, handle: Callable[[int, str], Any] | None = None, table: list[Any] | None = None) -> None:
        self.handle = handle
        self.table: list[Any] = list(table or [])

    def decode(self, tree: Any, depth: int = 0, fresh: bool = False) -> Any:
        """The value of a tree; `fresh` makes a new, unnumbered container (the contents of a numbered one)."""
        t = type(tree)
        if t is str or t is float or t is bool or tree is None:
            return tree
        if t is int:
            return tree
        if t is not list or not tree or type(tree[0]) is not str or depth > MAX_DEPTH + 1:
            raise Malformed("not a value tree")
        tag, args, d = tree[0], tree[1:], depth + 1
        try:
            if tag in _CONTAINERS:
                make, fill = _CONTAINERS[tag]
                obj = make(args)
                if not fresh:
                    self.table.append(obj)
                fill(self, obj, args, d)
                return obj
            if tag == "R":
                (n,) = args
                if type(n) is not int or not 0 <= n < len(self.table):
                    raise Malformed("a reference to nothing")
                return self.table[n]
            if tag == "T":
                return tuple(self.decode(x, d) for x in args)
            if tag == "F":
                return frozenset(self.decode(x, d) for x in args)
            if tag == "I":
                (s,) = args
                if type(s) is not str:
                    raise Malformed("bad int")
                return int(s, 16)
            if tag == "B":
                return _latin1(args).encode("latin-1")
            if tag == "C":
                re, im = args
                if type(re) is not float or type(im) is not float:
                    raise Malformed("bad complex")
                return complex(re, im)
            if tag == "N":
                (s,) = args
                if type(s) is not str:
                    raise Malformed("bad Decimal")
                return Decimal(s)
            if tag == "Q":
                num, den = (self.decode(x, d) for x in args)
                if type(num) is not int or type(den) is not int:
                    raise Malformed("bad Fraction")
                return Fraction(num, den)
            if tag == "G":
                start, stop, step = (self.decode(x, d) for x in args)
                if not all(type(x) is int for x in (start, stop, step)):
                    raise Malformed("bad range")
                return range(start, stop, step)
            if tag == "E" and not args:
                return Ellipsis
            if tag == "Ty":
                (name,) = args
                if type(name) is not str or name not in _TYPES:
                    raise Malformed("bad type")
                return _TYPES[name]
            if tag == "H" and self.handle is not None:
                n, type_name = args
                if type(n) is not int or type(type_name) is not str:
                    raise Malformed("bad handle")
                return self.handle(n, type_name)
        except (TypeError, ValueError, ZeroDivisionError, InvalidOperation, OverflowError) as e:
            raise Malformed(f"bad {tag!r} value: {type(e).__name__}") from None
        raise Malformed(f"unknown tag {tag!r}")


def _latin1(args: list[Any]) -> str:
    (s,) = args
    if type(s) is not str:
        raise Malformed("bad bytes")
    return s


def _pairs(dec: Decoder, args: list[Any], d: int) -> list[tuple[Any, Any]]:
    if len(args) % 2:
        raise Malformed("odd mapping")
    return [(dec.decode(args[i], d), dec.decode(args[i + 1], d)) for i in range(0, len(args), 2)]


def _fill_map(dec: Decoder, obj: dict, args: list[Any], d: int) -> None:
    for k, v in _pairs(dec, args, d):
        obj[k] = v  # obj is an exact dict / Counter / OrderedDict / defaultdict the decoder made


def _fill_dd(dec: Decoder, obj: defaultdict, args: list[Any], d: int) -> None:
    _fill_map(dec, obj, args[1:], d)


def _make_dd(args: list[Any]) -> defaultdict:
    if not args or type(args[0]) is not str or args[0] not in _FACTORIES:
        raise Malformed("bad defaultdict")
    return defaultdict(_FACTORIES[args[0]])


def _make_deque(args: list[Any]) -> deque:
    if not args or not (args[0] is None or (type(args[0]) is int and args[0] >= 0)):
        raise Malformed("bad deque")
    return deque(maxlen=args[0])


_CONTAINERS: dict[str, tuple[Callable[[list[Any]], Any], Callable[[Decoder, Any, list[Any], int], None]]] = {
    "L": (lambda a: [], lambda dec, o, a, d: o.extend(dec.decode(x, d) for x in a)),
    "D": (lambda a: {}, _fill_map),
    "S": (lambda a: set(), lambda dec, o, a, d: o.update(dec.decode(x, d) for x in a)),
    "Y": (lambda a: bytearray(_latin1(a).encode("latin-1")), lambda dec, o, a, d: None),
    "W": (_make_deque, lambda dec, o, a, d: o.extend(dec.decode(x, d) for x in a[1:])),
    "K": (lambda a: Counter(), _fill_map),
    "O": (lambda a: OrderedDict(), _fill_map),
    "DD": (_make_dd, _fill_dd),
}


def write_back(target: Any, new: Any) -> None:
    """Give the caller's container `target` the contents the program left in its copy (`new`, same type)."""
    if type(target) is not type(new):
        raise Malformed("an argument came back as another type")
    if type(target) in (list, bytearray):
        target[:] = new
    elif type(target) is deque:
        target.clear()
        target.extend(new)
    elif type(target) is set:
        target.clear()
        target.update(new)
    else:
        target.clear()
        target.update(new)


# -- messages: 4-byte big-endian length + JSON ------------------------------------------------------
MAGIC = b"\xa5"
_write, _read, _dumps, _pack = os.write, os.read, json.dumps, struct.pack  # a program patching os cannot stop us


def frame(obj: Any) -> bytes:
    """One message as bytes: a marker byte, a 4-byte big-endian length, JSON."""
    data = _dumps(obj, separators=(",", ":")).encode()
    return MAGIC + _pack(">I", len(data)) + data


INCOMPLETE = object()


def unframe(buf: bytes, cap: int) -> tuple[Any, bytes]:
    """(first message, rest) of a buffer, or (INCOMPLETE, buf). Raises TooBig or Malformed."""
    if buf[:1] and buf[:1] != MAGIC:
        raise Malformed("not a message")
    if len(buf) < 5:
        return INCOMPLETE, buf
    size = struct.unpack(">I", buf[1:5])[0]
    if size > cap:
        raise TooBig(size)
    if len(buf) < 5 + size:
        return INCOMPLETE, buf
    try:
        return json.loads(buf[5:5 + size]), buf[5 + size:]
    except (ValueError, RecursionError) as e:
        raise Malformed(f"unparsable message: {type(e).__name__}") from None


def send(fd: int, obj: Any) -> None:
    """Write one message (blocking)."""
    view = memoryview(frame(obj))
    while view:
        view = view[_write(fd, view):]


class TooBig(Exception):
    """A message over the receiver's size cap."""


def recv(fd: int, cap: int = 1 << 30) -> Any:
    """Read one message (blocking); None at end of stream (also mid-message). Raises TooBig or Malformed."""
    head = _read_exact(fd, 5)
    if head is None:
        return None
    if head[:1] != MAGIC:
        raise Malformed("not a message")
    size = struct.unpack(">I", head[1:])[0]
    if size > cap:
        raise TooBig(size)
    body = _read_exact(fd, size)
    if body is None:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise Malformed(f"unparsable message: {type(e).__name__}") from None


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = _read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
