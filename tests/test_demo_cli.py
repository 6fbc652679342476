"""`ilf demo`'s config handling, summary text and resumable base-model preparation (fast, tiny sizes)."""

from __future__ import annotations

import json

import pytest

from ilf_jax.demo import cli, prepare
from ilf_jax.errors import IlfError
from ilf_jax.configfile import from_mapping, to_data
from ilf_jax.pipeline.config import TasksSection, resolve


def test_shipped_config_resolves_and_one_seed_drives_everything(tmp_path):
    demo, raw = cli.demo_config(seed=7, run_dir=str(tmp_path / "r"), overrides=["sampling.n=3", "demo.corpus.n_docs=10"])
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


def test_prepare_is_resumable_and_reruns_what_changed(tmp_path):
    demo, raw = cli.demo_config(seed=1, overrides=[
        "demo.corpus.n_docs=64", "demo.model.n_layer=1", "demo.model.n_embd=32", "demo.model.rotary_dim=4",
        "demo.pretrain.batch_size=16", "demo.tokenizer.vocab_size=300",
        "tasks.factory_args.n_refine=3", "tasks.factory_args.n_train=3", "tasks.factory_args.n_test=3"])
    logs: list[str] = []
    model = prepare.prepare(tmp_path, demo, from_mapping(TasksSection, raw["tasks"]), progress=False, log=logs.append)
    assert (model / "config.json").is_file() and (model / "tokenizer.json").is_file()
    state = json.loads((tmp_path / "base" / prepare.STATE).read_text())
    assert state["pretrain"]["steps"] == 4 and state["corpus"]["documents"] == 64
    assert json.loads((model / "config.json").read_text())["n_layer"] == 1

    logs.clear()
    prepare.prepare(tmp_path, demo, from_mapping(TasksSection, raw["tasks"]), progress=False, log=logs.append)
    assert len(logs) == 1 and "ready" in logs[0]  # nothing redone

    logs.clear()
    demo["pretrain"]["learning_rate"] = 1e-3  # only the pretraining step depends on it
    prepare.prepare(tmp_path, demo, from_mapping(TasksSection, raw["tasks"]), progress=False, log=logs.append)
    assert not any("corpus" in line or "tokenizer" in line for line in logs)
    assert any("base model:" in line for line in logs)
