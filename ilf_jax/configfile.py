"""YAML config files with `key.sub=value` overrides from the command line."""

from __future__ import annotations

import copy
import pathlib
from typing import Any, Iterable

import yaml

from ilf_jax.errors import IlfError


def load_config(path: str | pathlib.Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML mapping and apply `a.b=value` overrides (values parsed as YAML scalars)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise IlfError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise IlfError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise IlfError(f"{path}: expected a mapping at the top level")
    return apply_overrides(data, overrides)


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
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise IlfError(f"override {item!r}: {part!r} is not a section")
        if len(parts) == 1 and parts[0] not in data:
            raise IlfError(f"override {item!r}: unknown key {parts[0]!r} (known: {', '.join(sorted(data))})")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return data
