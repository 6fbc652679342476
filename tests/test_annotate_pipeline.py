"""`feedback.source: app`: the tiny run stops at r1.annotate until people have annotated its own
failures in the app, `ilf status` shows the progress, and the run resumes on their annotations."""

from __future__ import annotations

import json
import pathlib

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from annotate_case import surge_rows  # noqa: E402
from ilf_jax import cli  # noqa: E402
from ilf_jax.annotate.app import create_app  # noqa: E402
from ilf_jax.annotate.store import Store  # noqa: E402
from ilf_jax.annotate.workspace import workspace_for  # noqa: E402

TINY = pathlib.Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "tiny.yaml"


def test_run_waits_for_app_annotations_then_resumes_on_them(tmp_path, shared_data, capsys):
    from helpers import tiny_pipeline_model

    tiny_model = tiny_pipeline_model(tmp_path / "tiny-model")
    capsys.readouterr()
    run_dir = tmp_path / "run"
    args = [f"model.dir={tiny_model}", f"run_dir={run_dir}", f"tasks.path={shared_data / 'mbpp' / 'mbpp.jsonl'}",
            "feedback.source=app", "feedback.annotations=null", "baselines=[zero_shot]", "report.perplexity=false",
            "--no-progress"]
    with_file = [a for a in args if a != "feedback.annotations=null"]  # tiny.yaml names the Surge file
    assert cli.main(["run", str(TINY), *with_file]) == 2
    assert "feedback.source=app annotates this run's own failures" in capsys.readouterr().err
    assert not run_dir.exists()
    assert cli.main(["run", str(TINY), *args]) == 2
    err = capsys.readouterr().err
    assert "waiting for annotations: 0 of 6 failing programs of round 1 annotated" in err
    assert f"ilf annotate {run_dir}" in err and err.count("\n") == 1
    assert cli.main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "r1.collect" in out and "annotations r1: 0 of 6 done" in out

    ws = workspace_for(run_dir)
    assert ws.dir == run_dir / "annotate" / "r1"
    queue = [json.loads(line) for line in ws.queue.read_text().splitlines()]
    failures = [json.loads(line) for line in (run_dir / "stages" / "r1.collect" / "failures.jsonl").read_text().splitlines()]
    assert [(q["task_id"], q["program"], q["error"]) for q in queue] == [
        (f["task_id"], f["program"], f["error"]) for f in failures]  # the run's own failing programs
    assert all(q["program"].startswith(q["prompt"]) and q["test"].startswith(("def check", "from pytest")) for q in queue)

    rows = surge_rows(shared_data, [q["task_id"] for q in queue])
    store = Store(ws.database)
    from ilf_jax.annotate.items import load_items

    store.sync_items(load_items(ws.queue))
    with TestClient(create_app(store, ws), base_url="http://127.0.0.1:8765") as c:
        h = {"X-CSRF-Token": c.get("/api/session").json()["csrf"]}
        while (item := c.post("/api/next", json={}, headers=h).json()["item"]) is not None:
            tid = item["task_id"]
            status = "cant_fix" if tid == 315 else "saved"
            r = c.post(f"/api/items/{tid}/save", headers=h, json={
                "feedback": rows[tid]["Feedback"], "refinement": rows[tid]["unedited_annotator_completion"],
                "base_version": 0, "status": status})
            assert r.status_code == 200, r.text
            if tid == 124:  # stop half way: the run still waits
                assert cli.main(["run", str(TINY), *args]) == 2
                assert "waiting for annotations: 2 of 6" in capsys.readouterr().err
    assert cli.main(["status", str(run_dir)]) == 0
    assert "annotations r1: 6 of 6 done (5 saved, 1 can't fix; by local 6)" in capsys.readouterr().out

    for stage in ("r1.annotate", "r1.refine_data", "r1.feedback"):
        assert cli.main(["stage", stage, str(TINY), *args]) == 0
    refine = [json.loads(line) for line in (run_dir / "stages" / "r1.refine_data" / "refine_data.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["feedback"], r["refinement"], r["old_program"]) for r in refine] == [
        (t, rows[t]["Feedback"], rows[t]["unedited_annotator_completion"], next(q["program"] for q in queue if q["task_id"] == t))
        for t in (114, 124, 125)]
    assert all(r["refinement_passed"] for r in refine)
    feedback = [json.loads(line) for line in (run_dir / "stages" / "r1.feedback" / "feedback.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["feedback"], r["refinement"], r["source"]) for r in feedback] == [
        (t, rows[t]["Feedback"], rows[t]["unedited_annotator_completion"], "app") for t in (311, 321)]  # 315: can't fix
