"""MBPP loaders: the original JSONL, the sanitized JSON, HF `datasets` and TFDS, all to `Task`s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ilf_jax.data.task import Task
from ilf_jax.errors import IlfError

_FULL_FIELDS = ("task_id", "text", "code", "test_list")
_SANITIZED_FIELDS = ("task_id", "prompt", "code", "test_list")


def _lf(code: str) -> str:
    """MBPP gold code uses CRLF; every stage works with LF."""
    return code.replace("\r\n", "\n")


def _task(rec: Any, where: str) -> Task:
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
        code=_lf(rec["code"]),
        test_list=tuple(tests),
        test_setup_code=_lf(setup),
        challenge_test_list=tuple(rec.get("challenge_test_list") or ()),
    )


def tasks_from_records(records: Iterable[Any], source: str) -> dict[int, Task]:
    """Records (dicts in MBPP's layout) to tasks keyed by id; duplicate ids are an error."""
    tasks: dict[int, Task] = {}
    for i, rec in enumerate(records, 1):
        task = _task(rec, f"{source}: record {i}")
        if task.task_id in tasks:
            raise IlfError(f"{source}: record {i}: duplicate task_id {task.task_id}")
        tasks[task.task_id] = task
    return tasks


def load_mbpp(path: str | Path) -> dict[int, Task]:
    """Load MBPP from `mbpp.jsonl` (one object a line) or `sanitized-mbpp.json` (one array), by content."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise IlfError(f"{path}: cannot read: {e.strerror}") from None
    if text.lstrip().startswith("["):
        try:
            return tasks_from_records(json.loads(text), str(path))
        except json.JSONDecodeError as e:
            raise IlfError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    records = []
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise IlfError(f"{path}: line {n}: invalid JSON: {e.msg}") from None
    return tasks_from_records(records, str(path))


def load_mbpp_hf(name: str = "mbpp", config: str = "full") -> dict[int, Task]:
    """All splits of MBPP from the HF hub (`datasets`, needs network or a warm cache)."""
    try:
        import datasets
    except ImportError:
        raise IlfError("loading MBPP from the HF hub needs `datasets` (pip install 'ilf_jax[hub]')") from None
    try:
        dd = datasets.load_dataset(name, config)
    except Exception as e:  # offline, unknown name, ...: one line for the user
        raise IlfError(f"cannot load HF dataset {name}/{config}: {type(e).__name__}: {e}".splitlines()[0]) from None
    return tasks_from_records((rec for split in dd.values() for rec in split), f"hf:{name}/{config}")


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
