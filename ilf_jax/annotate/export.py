"""Export: the saved annotations as the Surge JSONL that `feedback.source: human` reads, and a
progress file that `ilf status` and the pipeline's `feedback.source: app` read."""

from __future__ import annotations

import json
import pathlib
import threading
import time
from typing import Any

from ilf_jax.annotate.store import ItemState, Store
from ilf_jax.annotate.workspace import Workspace
from ilf_jax.data.annotations import levenshtein
from ilf_jax.pipeline.records import atomic_write_json, atomic_write_text

_LOCK = threading.Lock()


def surge_row(state: ItemState) -> dict[str, Any]:
    """One saved annotation in the Surge file's columns (programs are full: prompt + body).
    `refinement_edit_distance` is Levenshtein(refinement, original) / the longer program's length."""
    item, ref = state.item, state.refinement
    distance = state.distance if state.distance is not None else levenshtein(ref, item.program)
    return {"task_id": item.task_id, "prompt": item.prompt, "test": item.test, "Feedback": state.feedback,
            "completion": ref[len(item.prompt):] if ref.startswith(item.prompt) else ref,
            "result": state.verdict, "passed": state.verdict == "passed",
            "unedited_annotator_completion": ref, "original_model_completion": item.program,
            "refinement_edit_distance": distance / max(1, len(ref), len(item.program)),
            "worker_id": state.annotator}


def progress_record(store: Store) -> dict[str, Any]:
    """Counts plus the task ids queued and done (saved or can't fix)."""
    queue = store.queue()
    return {**store.progress().to_json(), "task_ids": [s.item.task_id for s in queue],
            "done_ids": [s.item.task_id for s in queue if s.status != "pending"], "updated": time.time()}


def export(store: Store, path: pathlib.Path) -> int:
    """Write every saved annotation to `path` (atomically); returns the row count."""
    rows = [surge_row(state) for state in store.annotations()]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def refresh(store: Store, ws: Workspace) -> int:
    """Rewrite the workspace's export and progress files (after each save, and at start)."""
    with _LOCK:
        rows = export(store, ws.export)
        atomic_write_json(ws.progress, progress_record(store))
    return rows
