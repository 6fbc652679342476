"""Schemas of the stage output records, checked when a stage writes them and by `check_run`."""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

from ilf_jax.pipeline.records import is_writer, read_jsonl

_OPT_STR = (str, type(None))

SCHEMAS: dict[str, dict[str, Any]] = {
    "sample": {"task_id": int, "sample": int, "completion": str, "finish_reason": str, "num_tokens": int,
               "prompt_truncated": bool},
    "verdict": {"task_id": int, "sample": int, "verdict": str, "passed": bool, "error": str},
    "failure": {"task_id": int, "split": str, "sample": int, "program": str, "error": str, "samples": int},
    "refine_data": {"task_id": int, "old_program": str, "error": str, "feedback": str, "refinement": str,
                    "source": str, "refinement_passed": bool, "distance": int, "kept": bool},
    "feedback": {"task_id": int, "old_program": str, "error": str, "feedback": str, "refinement": _OPT_STR,
                 "source": str},
    "selected": {"task_id": int, "sample": int, "completion": str},
    "perplexity": {"source": str, "task_id": int, "nll": float, "perplexity": float},
}

FILE_KINDS = {"samples.jsonl": "sample", "verdicts.jsonl": "verdict", "failures.jsonl": "failure",
              "refine_data.jsonl": "refine_data", "feedback.jsonl": "feedback", "selected.jsonl": "selected",
              "perplexity.jsonl": "perplexity"}


def check_record(rec: Mapping[str, Any], kind: str, where: str) -> None:
    """Raise ValueError unless `rec` has exactly the fields of `kind`, each of its type."""
    fields = SCHEMAS[kind]
    if set(rec) != set(fields):
        raise ValueError(f"{where}: fields {sorted(rec)} != {sorted(fields)}")
    for key, want in fields.items():
        value = rec[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if not ok:
            raise ValueError(f"{where}: field {key!r}={value!r} is not {want}")


def check_file(path: pathlib.Path, kind: str) -> int:
    """Check every record of a JSONL output file; returns the record count (-1 on a non-main
    process of a multi-process run, which does not write the file)."""
    if not is_writer():
        return -1
    records = read_jsonl(path)
    for i, rec in enumerate(records, 1):
        check_record(rec, kind, f"{path}: record {i}")
    return len(records)


def check_run(run_dir: pathlib.Path) -> int:
    """Check every known output file under the run's stages; returns the number of files checked."""
    count = 0
    for path in sorted((run_dir / "stages").rglob("*.jsonl")):
        kind = FILE_KINDS.get(path.name)
        if kind is not None:
            check_file(path, kind)
            count += 1
    return count
