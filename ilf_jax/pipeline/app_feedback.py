"""`feedback.source: app`: people annotate the run's own failures in `ilf annotate`, and the run waits.

The `r{R}.annotate` stage writes the round's refine/train failures (with task text, prompt and
test block) to `RUN_DIR/annotate/r{R}/queue.jsonl` and stops the run with a one-line message
until every queued item is saved or flagged can't fix in the app. The app writes `progress.json`
and the Surge-format `annotations.jsonl` beside its database after every save; when all items are
done, the stage copies that export into its folder and the rest of the round reads it with the
annotation loader (leakage guard included), exactly as `feedback.source: human` reads the Surge
file. The files are the whole contract: the pipeline never imports the app.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable

from ilf_jax.data.formats import task_prompt, test_block
from ilf_jax.errors import IlfError
from ilf_jax.pipeline.engine import StageContext
from ilf_jax.pipeline.records import atomic_write_text, read_jsonl
from ilf_jax.pipeline.sources import Annotations, load_run_annotations

WORKSPACE = "annotate"
QUEUE, EXPORT, PROGRESS = "queue.jsonl", "annotations.jsonl", "progress.json"
SNAPSHOT = "annotations.jsonl"  # in the annotate stage's folder


def workspace_dir(run_dir: pathlib.Path, round_: int) -> pathlib.Path:
    """Where round `round_`'s queue, database and export live (outside `stages/`, so that no
    stage rerun can wipe people's work)."""
    return run_dir / WORKSPACE / f"r{round_}"


def read_progress(workspace: pathlib.Path) -> dict[str, Any] | None:
    """The app's last progress record for a workspace, or None before the app has written one."""
    try:
        return json.loads((workspace / PROGRESS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def annotate_stage(collect_from: str, round_: int) -> Callable[[StageContext], dict[str, Any]]:
    """Queue the round's failures for the app; done once every queued item is annotated."""
    def run(ctx: StageContext) -> dict[str, Any]:
        res = ctx.resources
        ws = workspace_dir(res.run_dir, round_)
        failures = [f for f in read_jsonl(ctx.dep(collect_from) / "failures.jsonl") if f["split"] in ("refine", "train")]
        queue = "".join(json.dumps(_queue_item(res.task(f["task_id"]), f), sort_keys=True) + "\n" for f in failures)
        if not (ws / QUEUE).is_file() or (ws / QUEUE).read_text(encoding="utf-8") != queue:
            atomic_write_text(ws / QUEUE, queue)
        wanted = {f["task_id"] for f in failures}
        progress = read_progress(ws) or {}
        done = wanted & set(progress.get("done_ids", ()))
        if wanted - done:
            raise IlfError(f"waiting for annotations: {len(done)} of {len(wanted)} failing programs of round {round_} "
                           f"annotated; run `ilf annotate {res.run_dir}`, then `ilf run` again")
        text = (ws / EXPORT).read_text(encoding="utf-8") if wanted else ""
        atomic_write_text(ctx.dir / SNAPSHOT, text)
        kept = {json.loads(line)["task_id"] for line in text.splitlines() if line.strip()} & wanted
        return {"queued": len(wanted), "annotated": len(kept), "cant_fix": len(wanted - kept),
                "by_split": {s: sum(f["split"] == s and f["task_id"] in kept for f in failures)
                             for s in ("refine", "train")}}
    return run


def _queue_item(task: Any, failure: dict[str, Any]) -> dict[str, Any]:
    """One queue record: what an annotator sees (the app's queue format)."""
    return {"task_id": failure["task_id"], "split": failure["split"], "text": task.text,
            "prompt": task_prompt(task), "test": test_block(task), "entry_point": task.entry_point,
            "program": failure["program"], "error": failure["error"]}


def app_annotations(ctx: StageContext, annotate_from: str) -> Annotations:
    """The annotations people made for this round (leakage guard applied, as for the Surge file)."""
    res = ctx.resources
    path = ctx.dep(annotate_from) / SNAPSHOT
    return load_run_annotations(str(path), res.task_set, res.config["feedback"]["allow_test_annotations"])


def progress_lines(run_dir: pathlib.Path) -> list[str]:
    """One line per round with an annotation queue, for `ilf status`."""
    lines = []
    for ws in sorted((run_dir / WORKSPACE).glob("r*")):
        p = read_progress(ws)
        if p is None:
            queued = len(read_jsonl(ws / QUEUE)) if (ws / QUEUE).is_file() else 0
            lines.append(f"annotations {ws.name}: 0 of {queued} done (no annotator has started: ilf annotate {run_dir})")
        else:
            by = ", ".join(f"{k} {v}" for k, v in sorted(p["by_annotator"].items())) or "nobody yet"
            lines.append(f"annotations {ws.name}: {p['done']} of {p['total']} done ({p['saved']} saved, "
                         f"{p['cant_fix']} can't fix; by {by})")
    return lines
