"""ILF human annotations (the Surge JSONL, or the same columns as CSV), strictly validated.

21 annotated tasks lie in MBPP_Test (ids 11-110). `load_annotations` leaves them out unless the
caller opts in with `include_test=True`, and says how many it left out, so that nobody trains on
the evaluation tasks by accident.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path
from typing import Any, Collection, Sequence

from ilf_jax.data.splits import SPLITS, split_of
from ilf_jax.errors import IlfError
from ilf_jax.jsonl import read_objects

REQUIRED = ("task_id", "prompt", "test", "Feedback", "unedited_annotator_completion", "original_model_completion")
OPTIONAL = ("completion", "result", "passed", "refinement_edit_distance", "worker_id")


@dataclasses.dataclass(frozen=True)
class Annotation:
    """One (original program, feedback, refinement) triple; programs are full (prompt + body)."""

    task_id: int
    prompt: str
    test: str
    entry_point: str
    feedback: str
    refinement: str
    original: str
    worker_id: str | None = None
    refinement_edit_distance: float | None = None
    passed: bool | None = None  # the file's own verdict on the refinement (the reference filters on it)


@dataclasses.dataclass(frozen=True)
class AnnotationSet:
    """Loaded annotations plus the task ids left out because they are in MBPP_Test."""

    rows: tuple[Annotation, ...]
    excluded_test_ids: tuple[int, ...] = ()


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Raw rows of a JSONL or CSV file (by extension), with IlfErrors naming the line."""
    if path.suffix.lower() != ".csv":
        return [rec for _, rec in read_objects(path, label="row")]
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise IlfError(f"{path}: cannot read: {e.strerror}") from None
    except csv.Error as e:
        raise IlfError(f"{path}: invalid CSV: {e}") from None
    return [{k: (None if v == "" and k in OPTIONAL else v) for k, v in r.items()} for r in rows]


def check_fields(rec: dict[str, Any], where: str, required: Sequence[str], optional: Sequence[str]) -> None:
    """IlfError naming `where` and the field when `rec` has an unknown field or lacks a required one."""
    unknown = sorted(set(rec) - set(required) - set(optional), key=str)
    if unknown:
        raise IlfError(f"{where}: unknown field {unknown[0]!r}")
    for field in required:
        if rec.get(field) is None:
            raise IlfError(f"{where}: missing field {field!r}")


def entry_point_of(prompt: str) -> str | None:
    """The function a prompt's tests call: its last `def name(` line (None when there is none)."""
    names = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", prompt, flags=re.M)
    return names[-1] if names else None


def _row(rec: dict[str, Any], where: str, csv_like: bool) -> Annotation:
    """Validate one raw row and build its Annotation."""
    check_fields(rec, where, REQUIRED, OPTIONAL)
    task_id = rec["task_id"]
    if csv_like and isinstance(task_id, str) and task_id.strip().isdigit():
        task_id = int(task_id)
    if not isinstance(task_id, int) or isinstance(task_id, bool) or not 1 <= task_id <= 974:
        raise IlfError(f"{where}: field 'task_id' must be an MBPP id 1..974, got {rec['task_id']!r}")
    for field in REQUIRED[1:]:
        if not isinstance(rec[field], str):
            raise IlfError(f"{where}: field {field!r} must be a string, got {type(rec[field]).__name__}")
        if not rec[field].strip():
            raise IlfError(f"{where}: field {field!r} is empty")
    worker = rec.get("worker_id")
    if worker is not None and not isinstance(worker, str):
        raise IlfError(f"{where}: field 'worker_id' must be a string or null")
    distance = rec.get("refinement_edit_distance")
    try:
        distance = None if distance is None else float(distance)
    except (TypeError, ValueError):
        raise IlfError(f"{where}: field 'refinement_edit_distance' must be a number, got {distance!r}") from None
    passed = rec.get("passed")
    if passed is not None and not isinstance(passed, bool):
        if not (csv_like and str(passed).strip().lower() in ("true", "false")):
            raise IlfError(f"{where}: field 'passed' must be true, false or null, got {passed!r}")
        passed = str(passed).strip().lower() == "true"
    entry_point = entry_point_of(rec["prompt"])
    if entry_point is None:
        raise IlfError(f"{where}: field 'prompt' has no `def name(...)` line")
    return Annotation(task_id=task_id, prompt=rec["prompt"], test=rec["test"], entry_point=entry_point,
                      feedback=rec["Feedback"], refinement=rec["unedited_annotator_completion"],
                      original=rec["original_model_completion"], worker_id=worker,
                      refinement_edit_distance=distance, passed=passed)


def load_annotations(path: str | Path, *, include_test: bool = False,
                     allowed_splits: Collection[str] | None = None) -> AnnotationSet:
    """Load and validate an annotation file; rows in MBPP_Test are left out (and counted) unless include_test."""
    path = Path(path)
    if allowed_splits is not None and not set(allowed_splits) <= set(SPLITS):
        raise ValueError(f"unknown split in {sorted(allowed_splits)}; known: {sorted(SPLITS)}")
    allowed = set(SPLITS) if allowed_splits is None else set(allowed_splits)
    if not include_test:
        allowed.discard("test")
    rows, excluded, seen = [], [], {}
    for n, rec in enumerate(_read_rows(path), 1):
        ann = _row(rec, f"{path}: row {n}", path.suffix.lower() == ".csv")
        if ann.task_id in seen:
            raise IlfError(f"{path}: row {n}: task_id {ann.task_id} already annotated in row {seen[ann.task_id]}")
        seen[ann.task_id] = n
        split = split_of(ann.task_id)
        if split == "test" and not include_test:
            excluded.append(ann.task_id)
        elif split in allowed:
            rows.append(ann)
    return AnnotationSet(tuple(rows), tuple(excluded))


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance of two sequences, e.g. a string's characters (insert, delete, substitute; each costs 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_limit(refinement: str, original: str) -> float:
    """The paper's bound on a refinement's edit distance: half the longer of the two programs."""
    return 0.5 * max(len(refinement), len(original))


def keep_annotation(refinement: str, original: str, refinement_passed: bool, distance: int | None = None) -> bool:
    """The paper's filter: the refinement passes and is a small edit (< half the longer program).
    `distance` is Levenshtein(refinement, original) when the caller already has it."""
    if not refinement_passed:
        return False
    distance = levenshtein(refinement, original) if distance is None else distance
    return distance < edit_limit(refinement, original)
