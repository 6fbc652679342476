"""Reading user-supplied JSONL files: one JSON object per line, errors naming the file and line."""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterator

from ilf_jax.errors import IlfError


def parse_object(line: str, where: str) -> dict[str, Any]:
    """One line as a JSON object; `where` ("FILE: line N") prefixes any error."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise IlfError(f"{where}: invalid JSON: {e.msg}") from None
    if not isinstance(rec, dict):
        raise IlfError(f"{where}: expected a JSON object")
    return rec


def read_objects(path: str | pathlib.Path, label: str = "line") -> Iterator[tuple[str, dict[str, Any]]]:
    """("FILE: line N", object) for each non-blank line of a JSONL file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise IlfError(f"{path}: file not found")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise IlfError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            where = f"{path}: {label} {n}"
            yield where, parse_object(line, where)
