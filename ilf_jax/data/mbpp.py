"""MBPP loaders: the original JSONL, the sanitized JSON, HF `datasets` and TFDS, all to `Task`s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ilf_jax.data.task import Task
from ilf_jax.errors import IlfError

_FULL_FIELDS = ("task_id", "text", "code", "test_list")
_SANITIZED_FIELDS = ("task_id", "prompt", "code", "test_list")
LINE_ENDINGS = ("lf", "crlf")  # how gold code is read: normalised to LF | kept as stored (the reference)


def _lf(code: str) -> str:
    """MBPP gold code uses CRLF (972 of 974 tasks); by default every stage works with LF."""
    return code.replace("\r\n", "\n")


def _check_line_endings(line_endings: str) -> None:
    if line_endings not in LINE_ENDINGS:
        raise ValueError(f"line_endings={line_endings!r} must be one of {', '.join(LINE_ENDINGS)}")


def _task(rec: Any, where: str, line_endings: str = "lf") -> Task:
    """One MBPP record (full or sanitized layout) as a `Task`, naming the record on bad input."""
    if not isinstance(rec, dict):
        raise IlfError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    sanitized = "prompt" in rec and "text" not in rec
    for field in _SANITIZED_FIELDS if sanitized else _FULL_FIELDS:
        if field not in rec:
            raise IlfError(f"{where}: missing field {field!r}")
    if not isinstance(rec["task_id"], int) or isinstance(rec["task_id"], bool):
        raise IlfError(f"{where}: field 'task_id' must be an int, got {rec['task_id']!r}")
    for field in ("code", "prompt" if sanitized else "text"):
        if not isinstance(rec[field], str):
            raise IlfError(f"{where}: field {field!r} must be a string")
    tests = rec["test_list"]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise IlfError(f"{where}: field 'test_list' must be a non-empty list of strings")
    setup = "\n".join(rec.get("test_imports") or []) if sanitized else rec.get("test_setup_code") or ""
    return Task(
        task_id=rec["task_id"],
        text=rec["prompt"] if sanitized else rec["text"],
        code=_lf(rec["code"]) if line_endings == "lf" else rec["code"],
        test_list=tuple(tests),
        test_setup_code=_lf(setup),
        challenge_test_list=tuple(rec.get("challenge_test_list") or ()),
    )


def tasks_from_records(records: Iterable[Any], source: str, line_endings: str = "lf") -> dict[int, Task]:
    """Records (dicts in MBPP's layout) to tasks keyed by id; duplicate ids are an error.

    `line_endings="crlf"` keeps the gold code's bytes (CRLF), as the reference read them from the HF hub:
    prompts then keep CRLF before `def` and gold fine-tuning targets are CRLF.
    """
    _check_line_endings(line_endings)
    tasks: dict[int, Task] = {}
    for i, rec in enumerate(records, 1):
        task = _task(rec, f"{source}: record {i}", line_endings)
        if task.task_id in tasks:
            raise IlfError(f"{source}: record {i}: duplicate task_id {task.task_id}")
        tasks[task.task_id] = task
    return tasks


def load_mbpp(path: str | Path, line_endings: str = "lf") -> dict[int, Task]:
    """Load MBPP from `mbpp.jsonl` (one object a line) or `sanitized-mbpp.json` (one array), by content."""
    _check_line_endings(line_endings)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise IlfError(f"{path}: cannot read: {e.strerror}") from None
    if text.lstrip().startswith("["):
        try:
            return tasks_from_records(json.loads(text), str(path), line_endings)
        except json.JSONDecodeError as e:
            raise IlfError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    records = []
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise IlfError(f"{path}: line {n}: invalid JSON: {e.msg}") from None
    return tasks_from_records(records, str(path), line_endings)


def load_mbpp_hf(name: str = "mbpp", config: str = "full", line_endings: str = "lf") -> dict[int, Task]:
    """All splits of MBPP from the HF hub (`datasets`, needs network or a warm cache)."""
    return tasks_from_records(hf_records(name, config), f"hf:{name}/{config}", line_endings)


def hf_records(name: str = "mbpp", config: str = "full") -> list[dict[str, Any]]:
    """MBPP's records from the HF hub, all splits, sorted by task id (the reference's `load_dataset("mbpp")`)."""
    try:
        import datasets
    except ImportError:
        raise IlfError("loading MBPP from the HF hub needs `datasets` (pip install 'ilf_jax[hub]')") from None
    try:
        dd = datasets.load_dataset(name, config)
    except Exception as e:  # offline, unknown name, ...: one line for the user
        raise IlfError(f"cannot load HF dataset {name}/{config}: {type(e).__name__}: {e}".splitlines()[0]) from None
    return sorted((dict(rec) for split in dd.values() for rec in split), key=lambda r: r.get("task_id", 0))


def load_mbpp_tfds(name: str = "huggingface:mbpp/full") -> dict[int, Task]:
    """All splits of MBPP through TFDS (optional extra `tfds`), decoded to Python strings."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise IlfError("loading MBPP through TFDS needs `tensorflow-datasets` (pip install 'ilf_jax[tfds]')") from None
    try:
        splits = tfds.load(name)
    except Exception as e:
        raise IlfError(f"cannot load TFDS dataset {name}: {type(e).__name__}: {e}".splitlines()[0]) from None

    def decode(x: Any) -> Any:
        if isinstance(x, bytes):
            return x.decode("utf-8")
        if isinstance(x, dict):
            return {k: decode(v) for k, v in x.items()}
        if hasattr(x, "tolist"):
            return decode(x.tolist())
        if isinstance(x, list):
            return [decode(v) for v in x]
        return x

    records = (decode(rec) for ds in splits.values() for rec in tfds.as_numpy(ds))
    return tasks_from_records(({**r, "task_id": int(r["task_id"])} for r in records), f"tfds:{name}")
