"""JSON and JSONL files: reading user-supplied JSONL (errors naming the file and line), atomic writes,
and the one append-only record log that a killed job resumes without duplicates.

A `RecordLog` appends records as they finish (flushed and fsynced). A SIGKILL can leave at most a
torn last line, which the next open cuts off; records whose key is already there are ignored.
`finalize` writes the sorted final file once, so it does not depend on where (or whether) the job
was interrupted. Every file is written via a temporary file and an atomic rename.

Multi-process runs: every process computes the same records, but only the writer (JAX process 0,
see `processes`) writes; the others keep their records in memory.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Callable, Hashable, Iterable, Iterator

from ilf_jax.errors import IlfError
from ilf_jax.processes import is_writer

Key = Callable[[dict[str, Any]], Hashable]


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


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder, fsync and an atomic rename
    (a no-op on the non-writing processes of a multi-process run)."""
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
    """Atomically write `data` as indented JSON (keys sorted)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: pathlib.Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    """Every record of a finished JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dumps_lines(records: Iterable[dict[str, Any]]) -> str:
    """Records as JSONL text (keys sorted, so bytes are reproducible)."""
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)


def write_jsonl(path: pathlib.Path, records: Iterable[dict[str, Any]]) -> None:
    """Atomically write records, one JSON object a line."""
    atomic_write_text(path, dumps_lines(records))


class RecordLog:
    """An append-only JSONL log keyed by `key`; reopening drops a torn tail and repeated keys.

    `records` keeps them in the order they were logged; `on_append(count)` is called after each
    durable append (crash injection in tests).
    """

    def __init__(self, path: pathlib.Path, key: Key, on_append: Callable[[int], None] | None = None):
        self.path, self.key, self.on_append = path, key, on_append
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
                    k = key(rec)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    break
                self.records.setdefault(k, rec)
                good += len(line)
            if good != len(data) and self.writer:
                with path.open("r+b") as f:
                    f.truncate(good)
        if self.writer:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8") if self.writer else None

    def retain(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the logged records for which `keep` is false (the log is rewritten atomically)."""
        kept = {k: r for k, r in self.records.items() if keep(r)}
        if len(kept) == len(self.records):
            return
        self.records = kept
        if self._file is not None:
            self._file.close()
            atomic_write_text(self.path, dumps_lines(kept.values()))
            self._file = self.path.open("a", encoding="utf-8")

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
        self._file.write(dumps_lines(new))
        self._file.flush()
        os.fsync(self._file.fileno())
        if self.on_append is not None:
            self.on_append(len(self.records))

    def sorted(self) -> list[dict[str, Any]]:
        """The records in key order."""
        return [self.records[k] for k in sorted(self.records)]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finalize(self, final: pathlib.Path) -> list[dict[str, Any]]:
        """Write the records sorted by key to `final` (atomically) and return them."""
        out = self.sorted()
        write_jsonl(final, out)
        return out
