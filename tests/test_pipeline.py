"""End to end: the tiny CPU config on real MBPP tasks and the real annotation file, every stage and
artifact, the report's tables, status / stage commands, config changes, and SIGKILL + resume."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from ilf_jax import cli
from ilf_jax.pipeline import engine, schema
from ilf_jax.pipeline.run import config_from, open_run

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pipeline" / "tiny.yaml"
# The kill/resume runs skip the costly baselines; every stage they share with the full run has the
# same identity, so its artifacts must match the full run's byte for byte.
LEAN = ["baselines=[zero_shot]", "report.perplexity=false"]


def _overrides(shared: pathlib.Path, model: pathlib.Path, run_dir: pathlib.Path) -> list[str]:
    return [f"model.dir={model}", f"run_dir={run_dir}", f"tasks.path={shared / 'mbpp' / 'mbpp.jsonl'}",
            f"feedback.annotations={shared / 'ilf' / 'surge_annotations.jsonl'}"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> pathlib.Path:
    from helpers import TINY_CONFIGS, save_hf, tiny_hf_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny-model")
    save_hf(tiny_hf_model(**{**TINY_CONFIGS["a"], "n_positions": 256}), d)
    tiny_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, shared_data, tiny_model) -> tuple[pathlib.Path, list[str]]:
    """One uninterrupted run of the tiny config (in process)."""
    run_dir = tmp_path_factory.mktemp("full") / "run"
    overrides = _overrides(shared_data, tiny_model, run_dir)
    assert cli.main(["run", str(TINY), *overrides, "--no-progress"]) == 0
    return run_dir, overrides


def _artifacts(run_dir: pathlib.Path, stages: set[str] | None = None) -> dict[str, bytes]:
    """Final record files and stage summaries (minus wall time), by path relative to the stages folder."""
    out = {}
    root = run_dir / "stages"
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        name = rel.split("/")[0]
        if stages is not None and name not in stages or not path.is_file():
            continue
        if path.name == engine.STATE:
            state = json.loads(path.read_text())
            state.pop("seconds")
            out[rel] = json.dumps(state, sort_keys=True).encode()
        elif path.name == "metrics.jsonl":  # training log: drop the throughput (timing)
            recs = [json.loads(line) for line in path.read_text().splitlines()]
            out[rel] = json.dumps([{k: v for k, v in r.items() if k != "tokens_per_s"} for r in recs]).encode()
        elif path.suffix == ".jsonl" and not path.name.endswith(".partial.jsonl"):
            out[rel] = path.read_bytes()
    return out


GOLDEN = pathlib.Path(__file__).resolve().parent / "golden" / "tiny_run_artifacts.json"
_TIMING = {"seconds", "tokens_per_s", "seconds_this_session"}


def _normalized_digests(run_dir: pathlib.Path, tiny_model: pathlib.Path) -> dict[str, str]:
    """sha256 of every file the run writes except binaries and timing-bound ones (checkpoints, plots,
    TensorBoard events, the manifest), with the run and model paths replaced by placeholders and
    wall times / throughputs dropped; stage identities and the echoed train config are left out (a
    refactor may change how identities are computed, and new config fields with defaults change nothing)."""
    out = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir)
        if rel.parts[0] in ("plots", "tb") or "checkpoints" in rel.parts or "model" in rel.parts[:-1] \
                or rel.name == "manifest.json" or rel.name.endswith(".partial.jsonl") or rel.suffix not in (".json", ".jsonl", ".md"):
            continue
        text = path.read_text(encoding="utf-8").replace(str(run_dir), "RUN").replace(str(tiny_model), "MODEL")

        def scrub(obj):
            if isinstance(obj, dict):
                return {k: scrub(v) for k, v in obj.items() if k not in _TIMING and not (rel.name == engine.STATE and k == "identity")
                        and not (rel.name == "train_summary.json" and k == "config")}
            return [scrub(v) for v in obj] if isinstance(obj, list) else obj

        if rel.suffix == ".json":
            text = json.dumps(scrub(json.loads(text)), sort_keys=True)
        elif rel.name == "metrics.jsonl":
            text = "\n".join(json.dumps(scrub(json.loads(x)), sort_keys=True) for x in text.splitlines())
        out[str(rel)] = hashlib.sha256(text.encode()).hexdigest()
    return out


def test_tiny_run_artifacts_match_the_recorded_hashes(full_run, tiny_model):
    """Refactors must not change what a run writes: every record file, summary and report, byte for byte
    (ILF_RECORD_GOLDEN=1 rewrites tests/golden/tiny_run_artifacts.json after an intended change)."""
    run_dir, _ = full_run
    got = _normalized_digests(run_dir, tiny_model)
    if os.environ.get("ILF_RECORD_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert len(want) >= 50
    assert {k for k in got if got[k] != want.get(k)} | (set(want) - set(got)) == set()


def test_end_to_end_writes_every_stage_artifact_and_table(full_run):
    run_dir, overrides = full_run
    opened = open_run(config_from(str(TINY), overrides), progress=False, check=False)
    assert all(state == "done" for _, state in engine.status(opened.stages, run_dir, opened.ids))
    names = {s.name for s in opened.stages}
    for stage in ("r1.sample_base", "r1.execute_base", "r1.collect", "r1.refine_data", "r1.feedback", "r1.train_refine",
                  "r1.sample_refinements", "r1.execute_refinements", "r1.select", "r1.finetune.ilf", "finetune.gold",
                  "finetune.human", "eval.zero_shot.execute", "eval.ilf.execute", "eval.gold.execute",
                  "eval.human.execute", "fewshot.relevant.execute", "fewshot.unrelated.execute", "perplexity", "report"):
        assert stage in names
    stages = run_dir / "stages"
    assert schema.check_run(run_dir) >= 20
    assert schema.check_file(stages / "r1.sample_base" / "samples.jsonl", "sample") == 6 * 2  # 6 tasks x n=2
    assert schema.check_file(stages / "eval.zero_shot.execute" / "verdicts.jsonl", "verdict") == 3 * 2
    refine = [json.loads(x) for x in (stages / "r1.refine_data" / "refine_data.jsonl").read_text().splitlines()]
    assert sorted(r["task_id"] for r in refine) == [114, 124, 125] and all(r["kept"] for r in refine)
    feedback = [json.loads(x) for x in (stages / "r1.feedback" / "feedback.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in feedback] == [311, 315, 321]
    assert all(r["old_program"].startswith('"""') and r["feedback"] for r in feedback)  # annotated programs
    for trained in ("r1.train_refine", "finetune.gold", "finetune.human"):
        assert (stages / trained / "train" / "model" / "config.json").is_file()
        assert json.loads((stages / trained / "stage.json").read_text())["summary"]["trained"] is True

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"config", "versions", "inputs", "stages"} <= set(manifest)
    assert {"model", "tasks", "annotations"} <= set(manifest["inputs"]) and manifest["versions"]["jax"]
    assert all(v["status"] == "done" for v in manifest["stages"].values())

    report = (run_dir / "report.md").read_text()
    for heading in ("## Table 4", "## Table 2", "## Table 3", "## Figure 3", "Leakage guard"):
        assert heading in report
    for method in ("zero_shot", "ilf", "gold", "human"):
        assert f"| {method}" in report
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["name"] for r in results["table4"]] == ["zero_shot", "ilf", "gold", "human"]
    assert results["table4"][0]["pass@10"] is None  # n=2 < 10: not estimable, never made up
    assert set(results["table2"]) == {"relevant", "unrelated"}
    assert results["table3"][0]["pi_refine_on_train"]["tasks"] == 3
    assert results["leakage"]["excluded_test_annotations"] == 21
    for png in ("pass_at_k.png", "perplexity.png", "loss.png"):
        assert (run_dir / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "metrics.jsonl").read_text().count("\n") >= len(names)
    assert any((run_dir / "tb").iterdir())


def test_rerun_skips_and_config_change_reruns_exactly_dependents(full_run, capsys):
    run_dir, overrides = full_run
    before = _artifacts(run_dir)
    assert cli.main(["run", str(TINY), *overrides, "--no-progress"]) == 0  # everything done: nothing reruns
    assert _artifacts(run_dir) == before

    changed = open_run(config_from(str(TINY), overrides + ["finetune.train.learning_rate=0.002"]), progress=False, check=False)
    stale = {name for name, st in engine.status(changed.stages, run_dir, changed.ids) if st != "done"}
    assert stale == {"r1.finetune.ilf", "finetune.gold", "finetune.human", "eval.ilf.sample", "eval.ilf.execute",
                     "eval.gold.sample", "eval.gold.execute", "eval.human.sample", "eval.human.execute", "report"}
    sampling = open_run(config_from(str(TINY), overrides + ["refiner.sampling.temperature=0.5"]), progress=False, check=False)
    stale = {name for name, st in engine.status(sampling.stages, run_dir, sampling.ids) if st != "done"}
    assert stale == {"r1.sample_refinements", "r1.execute_refinements", "r1.select", "r1.finetune.ilf",
                     "eval.ilf.sample", "eval.ilf.execute", "fewshot.relevant.sample", "fewshot.relevant.execute",
                     "fewshot.unrelated.sample", "fewshot.unrelated.execute", "finetune.gold", "finetune.human",
                     "eval.gold.sample", "eval.gold.execute", "eval.human.sample", "eval.human.execute",
                     "perplexity", "report"}
    batching = open_run(config_from(str(TINY), overrides + ["sampling.chunk=4", "sampling.batch_size=4",
                                                            "executor.workers=1"]), progress=False, check=False)
    assert all(st == "done" for _, st in engine.status(batching.stages, run_dir, batching.ids))

    capsys.readouterr()
    assert cli.main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "r1.train_refine" in out and f"{len(changed.stages)}/{len(changed.stages)} stages done" in out
    assert cli.main(["stage", "list", str(TINY), *overrides]) == 0
    assert "r1.select  <- r1.feedback, r1.sample_refinements, r1.execute_refinements" in capsys.readouterr().out


def _ilf(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ILF_KILL_AT", None)
    if kill_at:
        env["ILF_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "ilf_jax.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def _partial_lines(path: pathlib.Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_sigkill_in_sampling_execution_and_training_then_resume_matches(full_run, tmp_path):
    full_dir, full_overrides = full_run
    run_dir = tmp_path / "run"
    args = ["run", str(TINY), *[o for o in full_overrides if not o.startswith("run_dir=")], f"run_dir={run_dir}",
            *LEAN, "--no-progress"]
    stages = run_dir / "stages"
    for kill_at, stage, partial in (("r1.sample_base:3", "r1.sample_base", "samples.partial.jsonl"),
                                    ("r1.execute_base:8", "r1.execute_base", "verdicts.partial.jsonl"),
                                    ("r1.train_refine:1", "r1.train_refine", "train/metrics.jsonl")):
        proc = _ilf(args, kill_at)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        state = json.loads((stages / stage / "stage.json").read_text())
        assert state["done"] is False  # killed inside the stage, not after it
        assert 0 < _partial_lines(stages / stage / partial)
    assert not (stages / "r1.sample_base" / "samples.partial.jsonl").read_text().endswith("}")  # whole lines only
    proc = _ilf(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lean = {p.name for p in stages.iterdir()} - {"report"}
    assert _artifacts(run_dir, lean) == _artifacts(full_dir, lean)
    samples = (stages / "r1.sample_base" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == len({(json.loads(s)["task_id"], json.loads(s)["sample"]) for s in samples}) == 12
