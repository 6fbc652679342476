"""Pipeline building blocks without a model: crash-safe records, stage identities and skipping,
config checks, prompt/example texts on real MBPP tasks, scores, schemas."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from ilf_jax.data.formats import task_prompt
from ilf_jax.data.mbpp import load_mbpp
from ilf_jax.configfile import to_data
from ilf_jax.errors import IlfError
from ilf_jax.pipeline import config, engine, report, schema, texts
from ilf_jax.jsonl import RecordLog
from ilf_jax.pipeline.artifacts import Summary

REPO = pathlib.Path(__file__).resolve().parents[1]


def _key(r: dict) -> tuple[int, int]:
    return r["task_id"], r["sample"]


def test_record_log_drops_torn_tail_and_duplicates(tmp_path):
    path = tmp_path / "x.partial.jsonl"
    with RecordLog(path, _key) as log:
        log.append([{"task_id": 2, "sample": 0}, {"task_id": 1, "sample": 0}])
        log.append([{"task_id": 1, "sample": 0, "extra": True}])  # same key: ignored
    with path.open("a") as f:
        f.write('{"task_id": 3, "sam')  # a SIGKILL mid-write
    with RecordLog(path, _key) as log:
        assert sorted(log.records) == [(1, 0), (2, 0)]
        log.append([{"task_id": 3, "sample": 0}])
        out = log.finalize(tmp_path / "x.jsonl")
    assert [r["task_id"] for r in out] == [1, 2, 3]
    assert path.read_text().count("\n") == 3 and '"sam' not in path.read_text().replace('"sample"', "")
    assert (tmp_path / "x.jsonl").read_text().splitlines()[0] == '{"sample": 0, "task_id": 1}'


def _toy_plan(calls: list[str], cfg_a: int, cfg_b: int) -> list[engine.Stage]:
    def make(name: str):
        def fn(ctx: engine.StageContext, params) -> dict:
            calls.append(name)
            (ctx.dir / "out.txt").write_text(name)
            return {"ok": True}
        return fn
    a_out = {"a": engine.Artifact("a", Summary)}
    return [engine.Stage("a", make("a"), cfg_a, {}, ("in",)),
            engine.Stage("b", make("b"), cfg_b, a_out),
            engine.Stage("c", make("c"), None, a_out)]


def _run_all(plan, run_dir, fps) -> None:
    ids = engine.identities(plan, fps)
    for stage in plan:
        engine.run_stage(stage, run_dir, ids, None)


def test_stages_skip_when_done_and_rerun_exactly_dependents(tmp_path):
    calls: list[str] = []
    _run_all(_toy_plan(calls, 1, 1), tmp_path, {"in": "x"})
    assert calls == ["a", "b", "c"]
    calls.clear()
    _run_all(_toy_plan(calls, 1, 1), tmp_path, {"in": "x"})
    assert calls == []
    _run_all(_toy_plan(calls, 1, 2), tmp_path, {"in": "x"})  # b's own value
    assert calls == ["b"]
    calls.clear()
    _run_all(_toy_plan(calls, 1, 2), tmp_path, {"in": "changed"})  # an input file of a
    assert calls == ["a", "b", "c"]
    plan = _toy_plan(calls, 5, 2)
    ids = engine.identities(plan, {"in": "changed"})
    assert dict(engine.status(plan, tmp_path, ids)) == {"a": "stale", "b": "stale", "c": "stale"}


def test_interrupted_stage_resumes_in_place_and_stale_one_is_wiped(tmp_path):
    plan = _toy_plan([], 1, 1)
    ids = engine.identities(plan, {"in": "x"})
    sdir = engine.stage_dir(tmp_path, "a")
    sdir.mkdir(parents=True)
    (sdir / engine.STATE).write_text(json.dumps({"identity": ids["a"], "done": False}))
    (sdir / "partial.jsonl").write_text("kept\n")
    engine.run_stage(plan[0], tmp_path, ids, None)
    assert (sdir / "partial.jsonl").read_text() == "kept\n"  # same identity: resumed, not wiped
    other = engine.identities(_toy_plan([], 9, 1), {"in": "x"})
    engine.run_stage(_toy_plan([], 9, 1)[0], tmp_path, other, None)
    assert not (sdir / "partial.jsonl").exists()
    with pytest.raises(IlfError, match="stage b: stage a is not done"):
        engine.run_stage(plan[1], tmp_path, ids, None)


def test_config_refuses_unknown_keys_and_bad_choices(tmp_path):
    good = {"model": {"dir": "m"}, "tasks": {"path": "t"}, "feedback": {"annotations": "a"}}
    cfg = to_data(config.resolve(good))
    assert cfg["feedback"]["programs"] == "annotated" and cfg["sampling"]["n"] == 30
    with pytest.raises(IlfError, match="unknown key 'sampling.temprature'"):
        config.resolve({**good, "sampling": {"temprature": 0.5}})
    with pytest.raises(IlfError, match="unknown key 'modle'"):
        config.resolve({**good, "modle": {}})
    with pytest.raises(IlfError, match="needs feedback.annotations"):
        config.resolve({**good, "feedback": {}})
    with pytest.raises(IlfError, match="feedback.source=scripted needs feedback.annotator"):
        config.resolve({**good, "feedback": {"source": "scripted", "programs": "sampled", "annotations": "a"}})
    for name in ("ilf.yaml", "model-feedback.yaml", "model-feedback-pi-refine.yaml", "unrelated-feedback.yaml"):
        cfg = config.load(REPO / "configs" / "paper" / name)
        assert to_data(cfg)["sampling"] == {
            "n": 30, "temperature": 0.8, "top_k": 50, "top_p": 1.0, "max_new_tokens": 1024, "seed": 42,
            "batch_size": 64, "chunk": 16}
        assert (cfg.refiner.old_code_tokens, cfg.finetune.selection, cfg.finetune.selection_seed) == (512, "random", 42)
        assert (cfg.sweep.select_on, cfg.finetune.train.dtype, cfg.finetune.train.seed) == ("refine", "float32", 42)
        ablation = name == "model-feedback.yaml"  # the model refines (cut: it is not trained to stop); no pi_Refine
        assert (cfg.feedback.model.refines, cfg.refiner.outputs) == ((True, "cut") if ablation else (False, "raw"))


def test_texts_on_real_tasks(shared_data):
    tasks = load_mbpp(shared_data / "mbpp" / "mbpp.jsonl")
    annotations = {json.loads(x)["task_id"]: json.loads(x) for x in
                   (shared_data / "ilf" / "surge_annotations.jsonl").read_text().splitlines()}
    for tid in (114, 311, 315):
        task, ann = tasks[tid], annotations[tid]
        assert task_prompt(task) == ann["prompt"]
        refinement = ann["unedited_annotator_completion"]
        body = texts.body_of(refinement, task)  # after the prompt, or after the `def` line when the
        assert refinement.endswith(body) and body[:1] in (" ", "\t")  # annotator changed the header
        gold = texts.gold_completion(task)
        assert texts.program_of(task, gold).rstrip("\n").endswith(task.code.rstrip("\n").splitlines()[-1])
        ex = texts.refine_example(task, ann["original_model_completion"], ann["Feedback"], ann["unedited_annotator_completion"])
        assert ex.input_text == f"OLD CODE:\n{ann['original_model_completion']}\n\nFEEDBACK:\n{ann['Feedback']}\n\nREFINEMENT:\n"
        assert ex.truncatable == ann["original_model_completion"] and ex.target == task_prompt(task) + body
        prompt = texts.refine_sampling_prompt(task, ann["original_model_completion"], ann["Feedback"])
        assert prompt.endswith("REFINEMENT:\n" + task_prompt(task))
    fewshot = texts.fewshot_refine_prompt([("old", "fb", "new")], tasks[311], "x", "y")
    assert fewshot.startswith("OLD CODE:\nold\n\nFEEDBACK:\nfb\n\nREFINEMENT:\nnew\n<|endoftext|>OLD CODE:\nx")
    assert texts.cut_feedback("Use a set.\n\nOLD CODE:\n...") == "Use a set."


def test_derangement_moves_every_item():
    for n in (2, 3, 10, 78):
        perm = texts.derangement(n, seed=1)
        assert sorted(perm) == list(range(n)) and all(i != p for i, p in enumerate(perm))
    assert texts.derangement(5, 0) == texts.derangement(5, 0)


def test_scores_leave_unestimable_pass_at_k_empty():
    verdicts = [{"task_id": t, "passed": p} for t, p in [(1, True), (1, False), (2, False), (2, False)]]
    got = report.scores(report.counts(verdicts), [1, 10])
    assert got == {"pass@1": 0.25, "pass@10": None, "one_plus_correct": 0.5, "tasks": 2}
    assert report.scores({}, [1])["tasks"] == 0


def test_schema_rejects_wrong_fields_and_types():
    good = {"task_id": 1, "sample": 0, "verdict": "passed", "passed": True, "error": ""}
    schema.check_record(good, "verdict", "x")
    with pytest.raises(ValueError, match="fields"):
        schema.check_record({**good, "extra": 1}, "verdict", "x")
    with pytest.raises(ValueError, match="'task_id'=True"):
        schema.check_record({**good, "task_id": True}, "verdict", "x")


def test_uncertainty_gives_intervals_and_paired_differences_against_zero_shot():
    b = report.Bootstrap(seed=3, samples=2000)
    zero = {t: (10, 2 if t % 2 else 0) for t in range(40)}
    better = {t: (10, c + 5) for t, (_, c) in zero.items()}
    got = report.uncertainty(better, zero, [1, 10, 20], b)
    assert set(got["ci"]) == {"pass@1", "pass@10", "one_plus_correct"}  # pass@20 needs 20 samples per task
    low, high = got["ci"]["pass@1"]
    assert low < report.scores(better, [1])["pass@1"] < high
    d = got["vs_zero_shot"]["pass@1"]
    assert abs(d["diff"] - 0.5) < 1e-9 and d["low"] == d["high"] == d["diff"]  # +5 of 10 on every task: no spread
    assert got == report.uncertainty(better, zero, [1, 10, 20], b)  # seeded
    assert report.uncertainty(better, {t: zero[t] for t in range(39)}, [1], b)["vs_zero_shot"] is None  # other tasks
    assert report.uncertainty({}, None, [1], b) == {"ci": {}, "vs_zero_shot": None}


def test_report_tables_show_intervals_table1_and_paired_differences():
    b = report.Bootstrap(seed=0, samples=500)
    zero = {t: (4, t % 3) for t in range(12)}
    ilf = {t: (4, min(4, t % 3 + 1)) for t in range(12)}
    row = lambda name, c, base: {"name": name, "feedback": "-", "data": "-", "trained": True, "trained_on": 1,  # noqa: E731
                                 **report.scores(c, [1]), **report.uncertainty(c, base, [1], b)}
    res = {"table1": {**report.scores(zero, [1]), **report.uncertainty(zero, None, [1], b), "splits": ["refine", "test"]},
           "table4": [row("zero_shot", zero, None), row("ilf", ilf, zero)], "table2": {}, "table3": [], "perplexity": {},
           "leakage": {"excluded_test_annotations": 0, "allow_test_annotations": False, "test_annotations_used": 0},
           "tasks": {"test": 12}, "samples_per_task": {"evaluation": 4}, "bootstrap": dataclasses.asdict(b)}
    text = report.markdown(res)
    lo, hi = res["table4"][1]["ci"]["pass@1"]
    assert f"| ilf | - | - | {100 * res['table4'][1]['pass@1']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] |" in text
    assert "## Table 1: zero-shot on all of MBPP" in text and "| refine + test |" in text
    d = res["table4"][1]["vs_zero_shot"]["pass@1"]
    assert f"| ilf | {100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] |" in text
    assert "| zero_shot |" not in text.split("Paired difference")[1]
    assert "Table 1 (zero-shot on all of MBPP) is left out" in report.markdown({**res, "table1": None})


def _select_ctx(tmp_path: pathlib.Path, rows: list[tuple[int, int, str, bool]]) -> engine.StageContext:
    """A select stage's context over (task, sample, completion, passed) rows written as its input records."""
    from ilf_jax.pipeline.artifacts import Artifact, Feedback, Sample, Selected, Verdict

    for kind, recs in ((Sample, [Sample(t, s, c, "stop", 3, False) for t, s, c, _ in rows]),
                       (Verdict, [Verdict(t, s, "passed" if ok else "failed", ok, "") for t, s, _, ok in rows]),
                       (Feedback, [Feedback(t, "old", "", "fb", None, "human") for t in sorted({r[0] for r in rows})])):
        (tmp_path / "stages" / kind.KIND).mkdir(parents=True, exist_ok=True)
        kind.save(tmp_path / "stages" / kind.KIND / kind.FILE, recs)
    inputs = {"feedback": Artifact("feedback", Feedback), "samples": Artifact("sample", Sample),
              "verdicts": Artifact("verdict", Verdict)}
    out = tmp_path / "stages" / "select"
    out.mkdir(parents=True, exist_ok=True)
    return engine.StageContext(engine.Stage("select", None, None, inputs), out, tmp_path, None)


def _selected(ctx: engine.StageContext) -> list[dict]:
    from ilf_jax.pipeline.artifacts import Selected

    return [r.to_json() for r in Selected.load(ctx.dir / Selected.FILE)]


def test_select_first_takes_the_lowest_index_and_random_draws_among_distinct_passing_texts(tmp_path):
    from ilf_jax.pipeline import steps

    rows = [(5, 0, "a", False), (5, 1, "b", True), (5, 2, "b", True), (5, 3, "c", True), (7, 0, "x", True), (9, 0, "y", False)]
    ctx = _select_ctx(tmp_path, rows)
    assert steps.select(ctx, steps.SelectParams("first"))["selected"] == 2
    assert [(r["task_id"], r["sample"]) for r in _selected(ctx)] == [(5, 1), (7, 0)]
    drawn = set()
    for seed in range(40):
        steps.select(ctx, steps.SelectParams("random", seed))
        got = _selected(ctx)
        assert [r["task_id"] for r in got] == [5, 7] and got[1]["sample"] == 0
        drawn.add((got[0]["sample"], got[0]["completion"]))
    assert drawn == {(1, "b"), (3, "c")}  # a duplicate text ("b" at sample 2) is never a separate candidate
    steps.select(ctx, steps.SelectParams("random", 11))
    first = _selected(ctx)
    steps.select(ctx, steps.SelectParams("random", 11))
    assert _selected(ctx) == first  # seeded


def test_refinement_outputs_and_old_code_cut_reach_the_refinement_sampling_params(shared_data, tmp_path):
    from ilf_jax.pipeline.run import config_from, open_run
    from ilf_jax.pipeline.steps import SelectParams

    args = [f"model.dir={tmp_path}", f"run_dir={tmp_path / 'run'}", f"tasks.path={shared_data / 'mbpp' / 'mbpp.jsonl'}",
            f"feedback.annotations={shared_data / 'ilf' / 'surge_annotations.jsonl'}"]
    tiny = str(REPO / "configs" / "pipeline" / "tiny.yaml")
    default = {s.name: s for s in open_run(config_from(tiny, args), progress=False, check=False).stages}
    paper = {s.name: s for s in open_run(config_from(tiny, args + [
        "refiner.outputs=raw", "refiner.old_code_tokens=512", "finetune.selection=random", "finetune.selection_seed=42"]),
        progress=False, check=False).stages}
    d, p = default["r1.sample_refinements"].params, paper["r1.sample_refinements"].params
    assert (d.cut, d.sampling.stop_rule, d.old_code_tokens) == (True, True, None)
    assert (p.cut, p.sampling.stop_rule, p.old_code_tokens) == (False, False, 512)
    assert paper["r1.sample_base"].params.sampling.stop_rule and paper["eval.zero_shot.sample"].params.cut  # base: cut
    assert default["r1.select"].params == SelectParams("first", 0)
    assert paper["r1.select"].params == SelectParams("random", 42)
    with pytest.raises(IlfError, match="refiner.old_code_tokens=0"):
        config_from(tiny, args + ["refiner.old_code_tokens=0"])



def test_a_sweep_points_stage_folder_has_no_glob_brackets(tmp_path):
    """orbax globs inside checkpoint paths: a model saved under `finetune.gold[lr=0.001]` could not be restored."""
    from ilf_jax.pipeline.artifacts import stage_dir

    assert stage_dir(tmp_path, "finetune.gold[lr=0.001,bs=32]") == tmp_path / "stages" / "finetune.gold(lr=0.001,bs=32)"
    assert stage_dir(tmp_path, "r1.finetune.ilf") == tmp_path / "stages" / "r1.finetune.ilf"
