"""configs/paper/ runs the reference's experiment: `ilf plan`'s counts (94 test tasks, 44 pi_Refine
examples, 2 updates), the def-regex skips, CRLF bytes, the test block style reaching execution, the
annotation re-filter switch, the cached annotation file and top-k 50. No model is loaded."""

from __future__ import annotations

import pathlib
import shutil
import types

import pytest

from ilf_jax import cli
from ilf_jax.errors import IlfError
from ilf_jax.pipeline import config, preview, steps, texts
from ilf_jax.pipeline.sources import load_run_annotations, load_tasks

REPO = pathlib.Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper" / "ilf.yaml"
TEST_SKIPS = (14, 32, 36, 57, 77, 107)


def _local(shared: pathlib.Path) -> list[str]:
    """The overrides the tests and benchmarks use: the offline copies instead of the hub and the cache."""
    return ["tasks.source=mbpp", f"tasks.path={shared / 'mbpp' / 'mbpp.jsonl'}",
            f"feedback.annotations={shared / 'ilf' / 'surge_annotations.jsonl'}"]


def _preview(shared: pathlib.Path, *extra: str) -> preview.RunPreview:
    cfg = config.load(PAPER, [*_local(shared), *extra])
    return preview.build(cfg, load_tasks(cfg.tasks))


def test_paper_plan_counts(shared_data):
    pv = _preview(shared_data)
    assert pv.tasks == {"test": 94, "refine": 189, "train": 621}
    assert pv.skipped["test"] == TEST_SKIPS and len(pv.skipped["refine"]) == 11 and len(pv.skipped["train"]) == 43
    refine = {c.stage: c for c in pv.training}["r1.train_refine"]
    assert (refine.examples, refine.exact, refine.updates_per_epoch, refine.updates) == (44, True, 1, 2)
    assert pv.annotations.dropped_ids == () and len(pv.annotations.excluded_test_ids) == 21
    ilf = {c.stage: c for c in pv.training}["r1.finetune.ilf"]
    assert not ilf.exact and ilf.examples == pv.annotations.by_split["train"]
    evals = [c for c in pv.sampling if c.stage.startswith("eval.")]
    assert evals and all((c.prompts, c.n, c.exact) == (94, 30, True) for c in evals)
    assert {c.stage: c.samples for c in pv.sampling}["r1.sample_base"] == (189 + 621) * 30


def test_our_defaults_differ_where_the_paper_config_follows_the_reference(shared_data):
    pv = _preview(shared_data, "tasks.def_match=lenient", "executor.test_style=valid", "feedback.refilter=true",
                  "refiner.train.remainder=short_step")
    assert pv.tasks["test"] == 100 and pv.skipped == {}
    assert pv.annotations.dropped_ids == (260,)  # the edit-distance re-filter drops one MBPP_Refine row
    refine = {c.stage: c for c in pv.training}["r1.train_refine"]
    assert (refine.examples, refine.exact, refine.updates) == (43, False, 4)  # ceil(43 / 32) x 2


def test_plan_command_prints_the_counts(shared_data, capsys):
    assert cli.main(["plan", str(PAPER), *_local(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "test: 94 tasks (6 skipped by the reference's def regex: 14, 32, 36, 57, 77, 107)" in out
    assert "r1.train_refine: 44 examples, 1 x 2 = 2 updates" in out
    assert "  r1.finetune.ilf  <- r1.select, model, tasks" in out and "estimated tokens" in out


def test_reference_test_style_needs_reference_def_matching(shared_data):
    with pytest.raises(IlfError, match="executor.test_style=reference needs tasks.def_match=reference"):
        config.load(PAPER, [*_local(shared_data), "tasks.def_match=lenient"])


def test_paper_config_takes_the_hub_and_the_cached_annotation_file(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ILF_DATA", str(tmp_path))
    cfg = config.load(PAPER)
    assert cfg.tasks.source == "hf" and cfg.tasks.line_endings == "crlf" and cfg.tasks.path is None
    assert cfg.feedback.annotations == str(tmp_path / "ilf" / "surge_annotations.jsonl")
    assert cfg.sampling.top_k == 50 and cfg.sampling.temperature == 0.8
    train = cfg.refiner.train
    assert (train.loss_weighting, train.remainder, train.group_by_length) == ("example", "carry", False)
    assert cfg.finetune.train == train and not cfg.feedback.refilter and cfg.executor.test_style == "reference"
    task_set = load_tasks(config.load(PAPER, _local(shared_data)).tasks)
    with pytest.raises(IlfError, match="is missing; run `ilf data`"):
        load_run_annotations(cfg.feedback.annotations, task_set, False)
    (tmp_path / "ilf").mkdir()
    cached = tmp_path / "ilf" / "surge_annotations.jsonl"
    cached.write_bytes(b'{"task_id": 1}\n')
    with pytest.raises(IlfError, match="not the pinned one; run `ilf data`"):
        load_run_annotations(cfg.feedback.annotations, task_set, False)
    shutil.copyfile(shared_data / "ilf" / "surge_annotations.jsonl", cached)
    assert len(load_run_annotations(cfg.feedback.annotations, task_set, False).rows) == 172


def test_crlf_reaches_prompts_and_gold_targets(shared_data):
    crlf = load_tasks(config.load(PAPER, _local(shared_data)).tasks)
    lf = load_tasks(config.load(PAPER, [*_local(shared_data), "tasks.line_endings=lf"]).tasks)
    test_ids = crlf.splits["test"]
    with_cr = [i for i in test_ids if "\r\n" in texts.program_of(crlf.tasks[i], "")]
    assert len(with_cr) == 23  # test prompts with code (imports, helpers) before the `def` line
    assert not any("\r" in texts.program_of(lf.tasks[i], "") for i in test_ids)
    assert "\r\n" in texts.gold_completion(crlf.tasks[11]) and "\r" not in texts.gold_completion(lf.tasks[11])
    from ilf_jax.pipeline.run import _fingerprints

    assert _fingerprints(config.load(PAPER, _local(shared_data)))["tasks"].endswith(":crlf")


class _Ctx:
    """The parts of a StageContext that the execution and pi_Refine data stages use."""

    def __init__(self, directory, task_set, inputs=None, annotations=None):
        self.dir, self.name = directory, "test"
        self._sources = {"tasks": task_set, "annotations": annotations}
        self._inputs = inputs or {}
        self.stage = types.SimpleNamespace(sources=tuple(k for k, v in self._sources.items() if v is not None))
        self.services = types.SimpleNamespace(workers=2, progress=False)

    def source(self, name):
        return self._sources[name]

    def read(self, name):
        return self._inputs[name]

    def has(self, name):
        return name in self._inputs


def test_test_style_changes_what_the_execute_stage_runs(shared_data, tmp_path):
    from ilf_jax.pipeline.artifacts import Sample, Verdict

    task_set = load_tasks(config.load(PAPER, _local(shared_data)).tasks)
    gold = {i: texts.gold_completion(task_set.tasks[i]) for i in (56, 313, 367, 436, 847)}
    samples = [Sample(i, 0, body, "eos", 1, False) for i, body in gold.items()]
    # 313's reference test `== 1,2` asserts `== 1` (2 is the message), as the valid block keeps it: returning
    # every positive number fails both, the gold's first positive passes both.
    samples.append(Sample(313, 1, "    return [x for x in list1 if x >= 0]\n", "eos", 1, False))
    passed = {}
    for style in ("reference", "valid"):
        ctx = _Ctx(tmp_path / style, task_set, {"samples": samples})
        ctx.dir.mkdir()
        steps.execute(ctx, steps.ExecParams(3.0, style))
        passed[style] = {(v.task_id, v.sample): v.passed for v in Verdict.load(ctx.dir / Verdict.FILE)}
    # 56 (a tested function named `check`) and 367 (test setup code) fail only the reference's block.
    assert passed["reference"] == {(56, 0): False, (313, 0): True, (313, 1): False, (367, 0): False, (436, 0): True,
                                   (847, 0): True}
    assert passed["valid"] == {**passed["reference"], (56, 0): True, (367, 0): True}
    plan_params = [s.params for s in steps_of(shared_data) if isinstance(s.params, steps.ExecParams)]
    assert plan_params and all(p.test_style == "reference" for p in plan_params)


def steps_of(shared: pathlib.Path):
    from ilf_jax.pipeline import plan

    cfg = config.load(PAPER, _local(shared))
    return plan.build(cfg, load_tasks(cfg.tasks))[0]


def test_refilter_switch_decides_what_pi_refine_keeps(shared_data, tmp_path):
    from ilf_jax.pipeline.artifacts import RefineTriple
    from ilf_jax.pipeline.sources import Annotations

    cfg = config.load(PAPER, [*_local(shared_data), "tasks.ids.refine=[114, 260]"])
    task_set = load_tasks(cfg.tasks)
    full = load_run_annotations(cfg.feedback.annotations, task_set, False)
    ann = Annotations({t: a for t, a in full.rows.items() if t in (114, 260)}, full.excluded_test_ids, 0)
    kept = {}
    for refilter in (True, False):
        ctx = _Ctx(tmp_path / str(refilter), task_set, annotations=ann)
        ctx.dir.mkdir()
        params = steps.RefineDataParams(True, False, None, 0, (114, 260), (), 3.0, "reference", refilter)
        steps.refine_data(ctx, params)
        kept[refilter] = {r.task_id: r.kept for r in RefineTriple.load(ctx.dir / RefineTriple.FILE)}
    assert kept == {True: {114: True, 260: False}, False: {114: True, 260: True}}
    rd = [s.params for s in steps_of(shared_data) if isinstance(s.params, steps.RefineDataParams)]
    assert [(p.refilter, p.test_style) for p in rd] == [(False, "reference")]


def test_annotation_passed_column_is_read(shared_data, tmp_path):
    from ilf_jax.data.annotations import load_annotations

    rows = (shared_data / "ilf" / "surge_annotations.jsonl").read_text().splitlines()
    assert all(a.passed is True for a in load_annotations(shared_data / "ilf" / "surge_annotations.jsonl").rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(rows[0].replace('"passed":true', '"passed":"yes"') + "\n")
    with pytest.raises(IlfError, match=r"row 1: field 'passed' must be true, false or null"):
        load_annotations(bad)


def test_report_lists_the_skipped_tasks():
    from ilf_jax.pipeline.report import markdown

    res = {"tasks": {"test": 94}, "samples_per_task": {"evaluation": 30}, "table4": [], "table2": {}, "table3": [],
           "perplexity": {}, "leakage": {"excluded_test_annotations": 0, "allow_test_annotations": False,
                                         "test_annotations_used": 0},
           "table1": None, "humaneval": [], "bootstrap": {"level": 0.95, "samples": 1000, "seed": 0}}
    assert "Skipped" not in markdown(res)
    text = markdown({**res, "skipped_tasks": {"test": list(TEST_SKIPS), "refine": [112]}})
    assert "tasks.def_match=reference): test 6 (14, 32, 36, 57, 77, 107); refine 1 (112)." in text
