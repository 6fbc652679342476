"""Crash-safe files: atomic writes, and append-only JSONL logs that a killed stage resumes without duplicates.

A stage appends records to `NAME.partial.jsonl` as they finish (flushed and fsynced). A SIGKILL
can leave at most a torn last line, which the next open cuts off. When the stage is complete,
`finalize` writes `NAME.jsonl` once, sorted by key, so that the final file does not depend on
where (or whether) the run was interrupted.

Multi-process runs: every process computes the same records, but only the main process (JAX
process 0) writes; the others keep their records in memory and read what process 0 wrote once
the stage's barrier has passed (the run directory must be on a file system all hosts share).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
from typing import Any, Callable, Hashable, Iterable

from ilf_jax.pipeline import faults

Key = Callable[[dict[str, Any]], Hashable]


def is_writer() -> bool:
    """True unless this is a non-main process of a multi-process JAX run (jax is not imported here)."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and an atomic rename
    (a no-op on the non-main processes of a multi-process run)."""
    if not is_writer():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: pathlib.Path, data: Any) -> None:
    """Atomically write `data` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: pathlib.Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    """Every record of a finished JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: pathlib.Path, records: Iterable[dict[str, Any]]) -> None:
    """Atomically write records, one JSON object a line (keys sorted, so bytes are reproducible)."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records))


class RecordLog:
    """An append-only JSONL log keyed by `key`; reopening drops a torn tail and repeated keys."""

    def __init__(self, path: pathlib.Path, key: Key, stage: str):
        self.path, self.key, self.stage = path, key, stage
        self.records: dict[Hashable, dict[str, Any]] = {}
        self.writer = is_writer()
        good = 0
        if path.is_file():
            data = path.read_bytes()
            for line in data.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break
                self.records.setdefault(key(rec), rec)
                good += len(line)
            if good != len(data) and self.writer:
                with path.open("r+b") as f:
                    f.truncate(good)
        self._file = path.open("a", encoding="utf-8") if self.writer else None

    def __contains__(self, key: Hashable) -> bool:
        return key in self.records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append the records whose keys are new, durably."""
        new = [r for r in records if self.key(r) not in self.records]
        if not new:
            return
        for r in new:
            self.records[self.key(r)] = r
        if self._file is None:
            return
        self._file.write("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in new))
        self._file.flush()
        os.fsync(self._file.fileno())
        faults.after_records(self.stage, len(self.records))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finalize(self, final: pathlib.Path) -> list[dict[str, Any]]:
        """Write the records sorted by key to `final` (atomically) and return them."""
        out = [self.records[k] for k in sorted(self.records)]
        write_jsonl(final, out)
        return out
