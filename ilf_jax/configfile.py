"""The one config system: YAML files, `key.sub=value` overrides, and typed, strict reading into
(nested) frozen dataclasses.

Every command reads its settings the same way: `load_yaml`, then `apply_overrides`, then
`from_mapping(cls, data, label)`, which refuses unknown keys (naming the file or "config" and the
key path), checks each value against the field's type hint (bool, int, float, str, Literal
choices, X | None, tuple[X, ...], dict, nested dataclasses) and builds the dataclass, whose own
`__post_init__` checks the rest. Adding a setting is adding one field to its dataclass.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import pathlib
import types
import typing
from typing import Any, Iterable, Literal, Mapping

import yaml

from ilf_jax.errors import IlfError


def load_yaml(path: str | pathlib.Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (a clear error for a missing file, bad YAML or a non-mapping)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise IlfError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise IlfError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise IlfError(f"{path}: expected a mapping at the top level")
    return json.loads(json.dumps(data, default=str))  # no shared nodes from YAML anchors (deepcopy keeps them)


def load_config(path: str | pathlib.Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML mapping and apply `a.b=value` overrides (values parsed as YAML scalars)."""
    return apply_overrides(load_yaml(path), overrides)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of `data` with each `dotted.key=value` set; unknown top-level keys are refused."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise IlfError(f"override {item!r}: expected key=value")
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise IlfError(f"override {item!r}: {part!r} is not a section")
        if len(parts) == 1 and parts[0] not in data:
            raise IlfError(f"override {item!r}: unknown key {parts[0]!r} (known: {', '.join(sorted(data))})")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return data


def to_data(value: Any) -> Any:
    """A config value as plain YAML/JSON data (dataclasses as mappings, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_data(v) for k, v in value.items()}
    return value


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _name(path: str) -> str:
    return path or "(top level)"


def _fail(label: str, path: str, value: Any, what: str) -> IlfError:
    return IlfError(f"{label}: {path}={value!r} must be {what}")


def coerce(value: Any, hint: Any, label: str, path: str) -> Any:
    """`value` checked against type `hint` (and converted: lists to tuples, ints to floats, YAML
    1.1's '1e-5' strings to floats, 'a,b,c' strings to integer tuples); errors name `path`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, label, path)
            except IlfError as e:
                errors.append(e)
        raise errors[-1] if len(errors) == 1 else _fail(label, path, value, " or ".join(_describe(a) for a in args))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise IlfError(f"{label}: {_name(path)!r} must be a mapping")
        return from_mapping(hint, value, label, path)
    if origin is Literal:
        if value not in args:
            raise IlfError(f"{label}: {path}={value!r} must be one of {', '.join(map(str, args))}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(label, path, value, "true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(label, path, value, "an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(label, path, value, "a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(label, path, value, "a string")
        return value
    if origin is tuple:
        if isinstance(value, str) and args and args[0] is str and args[-1] is Ellipsis:
            value = [value]  # one name for a list of names
        if isinstance(value, str) and args and args[0] is int:
            try:
                value = [int(v) for v in value.split(",")]
            except ValueError:
                raise _fail(label, path, value, "comma-separated integers") from None
        if not isinstance(value, (list, tuple)):
            raise _fail(label, path, value, "a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], label, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(label, path, value, f"{len(args)} values")
        return tuple(coerce(v, a, label, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise IlfError(f"{label}: {_name(path)!r} must be a mapping")
        if not args:
            return dict(value)
        return {coerce(k, args[0], label, f"{path} key"): coerce(v, args[1], label, f"{path}.{k}") for k, v in value.items()}
    raise TypeError(f"configfile: unsupported type hint {hint!r} at {path}")


def _describe(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def from_mapping(cls: type, data: Mapping[str, Any] | None, label: str = "config", path: str = "") -> Any:
    """Build dataclass `cls` from `data` (missing keys take the defaults); unknown keys and ill-typed
    values raise an IlfError naming `label` (a file, or "config") and the dotted key path."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise IlfError(f"{label}: {_name(path)!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        noun = getattr(cls, "CONFIG_NOUN", "")  # how a section names itself in messages ("lora")
        raise IlfError(f"{label}: unknown {noun + ' ' if noun else ''}key {where!r} (known: {', '.join(fields)})")
    hints = _hints(cls)
    kwargs = {k: coerce(v, hints[k], label, f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (IlfError, ValueError) as e:  # the dataclass's own checks
        if not path or str(e).startswith(f"{label}:"):
            raise
        raise IlfError(f"{label}: {path}: {e}") from None


def overlay(base: Any, changes: Mapping[str, Any], label: str = "config", path: str = "") -> Any:
    """Dataclass `base` with the (checked) values of the partial mapping `changes`."""
    full = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    return from_mapping(type(base), {**to_data(full), **dict(changes or {})}, label, path)
