"""The annotation queue's items: a failing program with its task text, prompt and tests, read from
a JSONL file (written by a run's feedback stage with `feedback.source: app`, or by hand)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Iterable

from ilf_jax.data.annotations import check_fields, entry_point_of
from ilf_jax.data.splits import split_of
from ilf_jax.errors import IlfError
from ilf_jax.jsonl import read_objects

REQUIRED = ("task_id", "prompt", "test", "program")
OPTIONAL = ("text", "error", "split", "entry_point")


@dataclasses.dataclass(frozen=True)
class Item:
    """One failing program to annotate; `prompt` is the task prompt the program starts with,
    `test` the `def check(candidate):` block, `error` the executor's text for the program; `split`
    defaults to the paper's MBPP split of the id (the one the export's leakage guard applies)."""

    task_id: int
    prompt: str
    test: str
    program: str
    entry_point: str
    text: str = ""
    error: str = ""
    split: str = ""

    def to_json(self) -> dict[str, Any]:
        """The item as a JSON object (the queue file's record)."""
        return dataclasses.asdict(self)


def text_of(prompt: str) -> str:
    """The task description: the prompt's docstring without its `>>> Example:` line."""
    m = re.match(r'\s*"""\n?(.*?)"""', prompt, flags=re.S)
    if m is None:
        return ""
    return re.sub(r"\n*>>> Example:.*", "", m.group(1), flags=re.S).strip()


def item_from_record(rec: dict[str, Any], where: str) -> Item:
    """Validate one queue record and build its Item (errors name `where` and the field)."""
    check_fields(rec, where, REQUIRED, OPTIONAL)
    tid = rec["task_id"]
    if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
        raise IlfError(f"{where}: field 'task_id' must be a non-negative integer, got {tid!r}")
    for field in (*REQUIRED[1:], *OPTIONAL):
        if rec.get(field) is not None and not isinstance(rec[field], str):
            raise IlfError(f"{where}: field {field!r} must be a string, got {type(rec[field]).__name__}")
    for field in REQUIRED[1:]:
        if not rec[field].strip():
            raise IlfError(f"{where}: field {field!r} is empty")
    entry = rec.get("entry_point") or entry_point_of(rec["prompt"])
    if not entry:
        raise IlfError(f"{where}: field 'prompt' has no `def name(...)` line")
    return Item(task_id=tid, prompt=rec["prompt"], test=rec["test"], program=rec["program"], entry_point=entry,
                text=rec.get("text") or text_of(rec["prompt"]), error=rec.get("error") or "",
                split=rec.get("split") or (split_of(tid) if 1 <= tid <= 974 else ""))


def load_items(path: str | pathlib.Path) -> list[Item]:
    """Every item of a queue JSONL file, in file order; one item per task id."""
    items, seen = [], {}
    for where, rec in read_objects(path, label="line"):
        item = item_from_record(rec, where)
        if item.task_id in seen:
            raise IlfError(f"{where}: task_id {item.task_id} is already queued at {seen[item.task_id]}")
        seen[item.task_id] = where
        items.append(item)
    if not items:
        raise IlfError(f"{path}: no items to annotate")
    return items


def queue_text(items: Iterable[Item]) -> str:
    """Items as queue JSONL text."""
    return "".join(json.dumps(it.to_json(), sort_keys=True) + "\n" for it in items)
