"""`ilf demo`'s config handling, summary text and resumable base-model preparation (fast, tiny sizes)."""

from __future__ import annotations

import json
import pathlib

import pytest

from ilf_jax.demo import cli
from ilf_jax.errors import IlfError
from ilf_jax.configfile import to_data
from ilf_jax.pipeline.config import resolve


def test_shipped_config_resolves_and_one_seed_drives_everything(tmp_path):
    demo, raw = cli.demo_config(seed=7, run_dir=str(tmp_path / "r"), overrides=["sampling.n=3", "demo.corpus.n_docs=10"])
    demo = to_data(demo)
    assert demo["seed"] == 7 and demo["corpus"]["n_docs"] == 10 and demo["model"]["n_layer"] >= 1
    assert raw["tasks"]["factory_args"]["seed"] == 7
    assert raw["sampling"]["seed"] == 7 and raw["sampling"]["n"] == 3
    assert raw["feedback"]["annotator_seed"] == 7
    assert raw["refiner"]["train"]["seed"] == raw["finetune"]["train"]["seed"] == 7
    cfg = to_data(resolve({**raw, "model": {"dir": str(tmp_path / "m")}}, tmp_path))
    assert cfg["tasks"]["source"] == "factory" and cfg["feedback"]["source"] == "scripted"
    assert cfg["evaluation"]["sampling"]["n"] >= 10 and cfg["evaluation"]["ks"] == [1, 10]
    assert cfg["run_dir"] == str(tmp_path / "r")


@pytest.mark.parametrize("override", ["demo.colour=1", "demo.model.depth=2", "demo.corpus=3"])
def test_unknown_demo_keys_are_refused(override):
    with pytest.raises(IlfError):
        cli.demo_config(overrides=[override])


def test_summary_text_states_the_table_and_annotations(tmp_path):
    row = lambda name, p1, ex: {"name": name, "feedback": "-", "data": "-", "pass@1": p1, "pass@10": 0.5,  # noqa: E731
                                "trained_on": ex, "trained": ex is not None, "tasks": 4}
    res = {"table4": [row("zero_shot", 0.2, None), row("ilf", 0.45, 12)], "tasks": {"test": 4},
           "samples_per_task": {"evaluation": 10},
           "table3": [{"refine_data": {"kept": 5}, "feedback": {"with_feedback": 20}, "collect": {"failing_tasks": 25, "tasks": 40},
                       "selected": 12, "feedback_annotations": 25}]}
    text = cli.summary_text(res, tmp_path, 61)
    assert "zero_shot" in text and " 45.0%" in text and "+25.0 points" in text
    assert "Feedback annotations used by ILF: 25" in text and str(tmp_path / "report.md") in text


def _tiny_demo(tmp_path, *extra):
    return cli.demo_config(seed=1, run_dir=str(tmp_path / "run"), overrides=[
        "demo.corpus.n_docs=64", "demo.model.n_layer=1", "demo.model.n_embd=32", "demo.model.rotary_dim=4",
        "demo.pretrain.batch_size=16", "demo.tokenizer.vocab_size=300",
        "tasks.factory_args.n_refine=3", "tasks.factory_args.n_train=3", "tasks.factory_args.n_test=3", *extra])


def _run_base_stages(tmp_path, *extra) -> tuple[list[str], object]:
    """Run the demo's base-model stages (through the engine, as `ilf run` does); returns the names of the
    stages that ran and the opened run."""
    from ilf_jax.pipeline import engine
    from ilf_jax.pipeline.run import open_run

    _, raw = _tiny_demo(tmp_path, *extra)
    opened = open_run(resolve(raw, tmp_path), progress=False, check=False)
    ran = []
    for stage in [s for s in opened.stages if s.name.startswith("demo.")]:
        if not engine.is_done(opened.dir, stage.name, opened.ids[stage.name]):
            ran.append(stage.name)
        engine.run_stage(stage, opened.dir, opened.ids, opened.services)
    return ran, opened


def test_base_model_stages_resume_and_rerun_what_changed(tmp_path):
    """The demo's preparation is ordinary stages: the pretrained model is the base model of the ILF
    stages; a rerun redoes nothing; a pretraining setting reruns only pretraining (and what follows)."""
    ran, opened = _run_base_stages(tmp_path)
    assert ran == ["demo.corpus", "demo.tokenizer", "demo.pretrain"]
    stages = {s.name: s for s in opened.stages}
    assert stages["r1.sample_base"].deps == ("demo.pretrain",) and stages["eval.zero_shot.sample"].deps == ("demo.pretrain",)
    model = pathlib.Path(json.loads((opened.dir / "stages" / "demo.pretrain" / "model.json").read_text())["model_dir"])
    assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()
    assert json.loads((model / "config.json").read_text())["n_layer"] == 1
    summary = {n: json.loads((opened.dir / "stages" / n / "stage.json").read_text())["summary"]
               for n in ("demo.corpus", "demo.pretrain")}
    assert summary["demo.pretrain"]["steps"] == 4 and summary["demo.corpus"]["documents"] == 64

    assert _run_base_stages(tmp_path)[0] == []  # nothing redone
    ran, changed = _run_base_stages(tmp_path, "demo.pretrain.learning_rate=1e-3")
    assert ran == ["demo.pretrain"]  # corpus and tokenizer do not depend on it
    stale = {n for n in opened.ids if opened.ids[n] != changed.ids[n]}
    assert "r1.sample_base" in stale and "demo.corpus" not in stale and "demo.tokenizer" not in stale


def test_ilf_run_takes_the_demo_config(tmp_path, capsys):
    """`ilf run configs/demo.yaml` plans the same stages as `ilf demo` (model.prepare instead of model.dir)."""
    from ilf_jax import cli as ilf

    assert ilf.main(["stage", "list", str(cli.default_config()), f"run_dir={tmp_path / 'r'}"]) == 0
    out = capsys.readouterr().out
    assert "demo.pretrain  <- demo.corpus, demo.tokenizer" in out and "r1.sample_base  <- demo.pretrain" in out
