"""Schemas of the stage output records (the record dataclasses of `artifacts`), checked when a stage
writes them and by `check_run`."""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

from ilf_jax.pipeline import artifacts
from ilf_jax.jsonl import read_jsonl
from ilf_jax.processes import is_writer

SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {r.KIND: artifacts.field_types(r) for r in artifacts.RECORDS}
FILE_KINDS = {r.FILE: r.KIND for r in artifacts.RECORDS}
_BY_KIND = {r.KIND: r for r in artifacts.RECORDS}


def check_record(rec: Mapping[str, Any], kind: str, where: str) -> None:
    """Raise ValueError unless `rec` has exactly the fields of `kind`, each of its type."""
    artifacts.check_record(rec, _BY_KIND[kind], where)


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
    for path in sorted((run_dir / artifacts.STAGES).rglob("*.jsonl")):
        kind = FILE_KINDS.get(path.name)
        if kind is not None:
            check_file(path, kind)
            count += 1
    return count
