"""The stage graph of a config: ILF rounds (Algorithm 1), the paper's baselines and ablations, the sweep.

This is the one place that reads the config: each stage gets its parameters (a frozen dataclass
of exactly the values it uses) and handles to the artifacts it reads, so its dependencies and
identity follow from what it is given. Round r's stages get round r's handles; round r+1 starts
from round r's pi_theta*.

Stage names: `r{R}.sample_base`, `r{R}.execute_base`, `r{R}.collect`, `r{R}.refine_data`,
`r{R}.feedback` (after `r{R}.annotate` with `feedback.source: app`), `r{R}.train_refine`, `r{R}.sample_refinements`, `r{R}.execute_refinements`,
`r{R}.select`, `r{R}.finetune.ilf{V}`; `finetune.gold{V}`, `finetune.human{V}`;
`eval.{METHOD}.sample`, `eval.{METHOD}.execute` (and `eval.{METHOD}.humaneval.{sample,execute}`);
with `sweep.select_on`, `sweep.{METHOD}{V}.{sample,execute}` (validation) and `sweep.{METHOD}.choose`;
`fewshot.{relevant,unrelated}.{sample,execute}`;
`perplexity`; `report`; before them, the stages of `model.prepare` (the demo's `demo.*`). `{V}` is empty, or `[lr=..,bs=..,ep=..]` for a sweep point.
"""

from __future__ import annotations

import itertools
from typing import Any

from ilf_jax.data.humaneval import load_humaneval
from ilf_jax.pipeline import app_feedback, report, steps
from ilf_jax.pipeline.artifacts import (AnnotationFile, Artifact, Failure, Feedback, ModelPointer, Perplexity, RefineTriple, Sample,
                                        Selected, Summary, TrainLog, Verdict)
from ilf_jax.pipeline.config import PipelineConfig
from ilf_jax.pipeline.engine import Stage
from ilf_jax.pipeline.report import Method
from ilf_jax.pipeline.sources import TaskSet, import_callable
from ilf_jax.sample.sampler import SamplingConfig

_SWEEP_ABBREV = {"learning_rate": "lr", "batch_size": "bs", "epochs": "ep"}

__all__ = ["Method", "build", "sweep_points", "variant_suffix"]


def sweep_points(cfg: PipelineConfig, method: str | None = None) -> list[dict[str, Any]]:
    """The sweep's grid as train-config overrides ([{}] without a sweep, or for a `method` it leaves out);
    the first point is the main one (the next round's base model)."""
    if method is not None and method not in cfg.sweep.methods:
        return [{}]
    keys = [k for k in _SWEEP_ABBREV if getattr(cfg.sweep, k)]
    return [dict(zip(keys, values)) for values in itertools.product(*(getattr(cfg.sweep, k) for k in keys))] or [{}]


def variant_suffix(point: dict[str, Any]) -> str:
    return "" if not point else "[" + ",".join(f"{_SWEEP_ABBREV[k]}={v}" for k, v in point.items()) + "]"


def _sample_params(cfg: PipelineConfig, overlay: Any, prompts: str = "task", ids: tuple[int, ...] = (),
                   shuffle_seed: int | None = None) -> steps.SampleParams:
    section = cfg.sampling_with(overlay)
    if prompts not in ("refine", "model_refine"):
        return steps.SampleParams(SamplingConfig(**section.knobs()), prompts, ids, shuffle_seed, section.chunk)
    cut = cfg.refiner.outputs == "cut"  # raw refinements run to EOS: no end-of-function stop
    return steps.SampleParams(SamplingConfig(**section.knobs(), stop_rule=cut), prompts, ids, shuffle_seed, section.chunk,
                              cut, cfg.refiner.old_code_tokens, cfg.feedback.model.shots if prompts == "model_refine" else 1)


def humaneval_ids(cfg: PipelineConfig) -> tuple[int, ...]:
    """The HumanEval problem numbers every method is evaluated on (the first `humaneval_limit`); () when
    humaneval is not among `evaluation.benchmarks`."""
    ev = cfg.evaluation
    if "humaneval" not in ev.benchmarks:
        return ()
    return tuple(sorted(load_humaneval(ev.humaneval_path)))[: ev.humaneval_limit]


def build(cfg: PipelineConfig, task_set: TaskSet) -> tuple[list[Stage], list[Method]]:
    """Every stage of the run in dependency order, and the evaluated methods."""
    fb = cfg.feedback
    timeout, test_style = cfg.executor.timeout, cfg.executor.test_style
    plan: list[Stage] = []
    methods: list[Method] = []

    def ids(*splits: str) -> tuple[int, ...]:
        return tuple(sorted(i for s in splits for i in task_set.splits[s]))

    def add(name: str, fn: Any, params: Any, inputs: dict[str, Artifact], sources: tuple[str, ...]) -> Stage:
        plan.append(Stage(name, fn, params, inputs, sources))
        return plan[-1]

    def out(stage: Stage, kind: type) -> Artifact:
        return Artifact(stage.name, kind)

    def sample_and_execute(sample_name: str, execute_name: str, params: steps.SampleParams,
                           inputs: dict[str, Artifact], sources: tuple[str, ...]) -> tuple[Stage, Stage]:
        s = add(sample_name, steps.sample, params, inputs, sources + ("tasks",))
        return s, add(execute_name, steps.execute, steps.ExecParams(timeout, test_style=test_style), {"samples": out(s, Sample)}, ("tasks",))

    def trained(stage: Stage) -> dict[str, Artifact]:
        return {"model": out(stage, ModelPointer)}

    def chosen(label: str, feedback: str, data: str, points: list[tuple[dict[str, Any], Stage]]) -> str:
        """The methods of `label`'s sweep points: each evaluated, or (sweep.select_on a split) each scored on that
        split and only the best one evaluated as `label`; returns the stage whose model is the method's."""
        if cfg.sweep.select_on == "none" or len(points) < 2:
            methods.extend(Method(label + variant_suffix(pt), feedback, data, st.name) for pt, st in points)
            return points[0][1].name
        inputs: dict[str, Artifact] = {}
        for pt, st in points:
            v = label + variant_suffix(pt)
            _, ex = sample_and_execute(f"sweep.{v}.sample", f"sweep.{v}.execute",
                                       _sample_params(cfg, cfg.evaluation.sampling, ids=ids(cfg.sweep.select_on)),
                                       trained(st), ())
            inputs.update({f"model:{st.name}": out(st, ModelPointer), f"verdicts:{st.name}": out(ex, Verdict),
                           f"summary:{st.name}": out(st, Summary)})
        ch = add(f"sweep.{label}.choose", steps.choose_setting,
                 steps.ChooseParams(tuple(st.name for _, st in points), cfg.sweep.select_metric, cfg.sweep.select_on),
                 inputs, ())
        methods.append(Method(label, feedback, data, ch.name))
        return ch.name

    fb_label = {"human": "humans", "model": "model (few-shot)", "shuffled": "shuffled (unrelated)",
                "scripted": "scripted annotator", "app": "humans (ilf annotate)"}[fb.source]
    ann = ("annotations",) if fb.annotations else ()
    self_refines = fb.source == "model" and fb.model.refines
    refinements = "its own refinements (few-shot)" if self_refines else "pi_Refine refinements"
    model_feedback = None
    if fb.source == "model":
        m, s = fb.model, cfg.sampling
        model_feedback = steps.ModelFeedbackParams(m.shots, m.temperature, m.max_new_tokens, s.seed,
                                                   s.batch_size, s.chunk)
    # The base model: the configured directory (source "model"), or the output of `model.prepare`'s stages.
    base: dict[str, Artifact] = {}
    if cfg.model.prepare:
        prepared, made = import_callable(cfg.model.prepare, "model.prepare")(cfg)
        plan.extend(prepared)
        base = {"model": made}
    base_srcs = () if base else ("model",)
    base_in = dict(base)
    first: dict[str, Stage] = {}
    for r in range(1, cfg.rounds + 1):
        R = f"r{r}"
        base_src = base_srcs if r == 1 else ()
        sb, eb = sample_and_execute(f"{R}.sample_base", f"{R}.execute_base",
                                    _sample_params(cfg, None, ids=ids(*cfg.collect.splits)), dict(base_in), base_src)
        col = add(f"{R}.collect", steps.collect, None, {"samples": out(sb, Sample), "verdicts": out(eb, Verdict)}, ("tasks",))
        app: dict[str, Artifact] = {}  # feedback.source app: the annotations people made in `ilf annotate`
        if fb.source == "app":
            annotate = add(f"{R}.annotate", app_feedback.annotate, app_feedback.AnnotateParams(r),
                           {"failures": out(col, Failure)}, ("tasks",))
            app = {"app_annotations": out(annotate, AnnotationFile)}
        rd = add(f"{R}.refine_data", steps.refine_data,
                 steps.RefineDataParams(bool(fb.annotations or app), fb.allow_test_annotations, fb.annotator,
                                        fb.annotator_seed, ids("refine"), ids("test"), timeout, test_style, fb.refilter),
                 app or ({} if fb.annotations else {"failures": out(col, Failure)}), ("tasks",) + ann)
        fbk = add(f"{R}.feedback", steps.feedback,
                  steps.FeedbackParams(fb.source, fb.programs, fb.shuffle_seed, fb.annotator, fb.annotator_seed,
                                       ids("train"), timeout, model_feedback, test_style),
                  {"refine_data": out(rd, RefineTriple),
                   **(app or ({"failures": out(col, Failure)} if fb.programs == "sampled" else {}))},
                  ("tasks",) + ann + (("feedback_model",) if fb.source == "model" else ()))
        if self_refines:  # the InstructGPT ablation: the feedback model refines, few-shot; no pi_Refine
            sr, er = sample_and_execute(f"{R}.sample_refinements", f"{R}.execute_refinements",
                                        _sample_params(cfg, cfg.refiner.sampling, "model_refine"),
                                        {"feedback": out(fbk, Feedback), "refine_data": out(rd, RefineTriple)},
                                        ("feedback_model",))
        else:
            tr = add(f"{R}.train_refine", steps.train, steps.TrainParams(cfg.refiner.train, "refine"),
                     {**base_in, "refine_data": out(rd, RefineTriple)}, base_src + ("tasks",))
            sr, er = sample_and_execute(f"{R}.sample_refinements", f"{R}.execute_refinements",
                                        _sample_params(cfg, cfg.refiner.sampling, "refine"),
                                        {**trained(tr), "feedback": out(fbk, Feedback)}, ())
        sel = add(f"{R}.select", steps.select, steps.SelectParams(cfg.finetune.selection, cfg.finetune.selection_seed),
                  {"feedback": out(fbk, Feedback), "samples": out(sr, Sample), "verdicts": out(er, Verdict)}, ())
        ilf = []
        for point in sweep_points(cfg, "ilf"):
            train_cfg = cfg.finetune.train.replace(**point)
            ilf.append((point, add(f"{R}.finetune.ilf{variant_suffix(point)}", steps.train, steps.TrainParams(train_cfg, "ilf"),
                                   {**base_in, "selected": out(sel, Selected)}, base_src + ("tasks",))))
        main = chosen("ilf" if r == 1 else f"ilf_r{r}", fb_label, refinements, ilf)
        if r == 1:
            first = {"refine_data": rd, "feedback": fbk, "select": sel}
        base_in = {"model": Artifact(main, ModelPointer)}

    r1_data = {"selected": out(first["select"], Selected), "feedback": out(first["feedback"], Feedback)}
    if "zero_shot" in cfg.baselines:
        methods.insert(0, Method("zero_shot", "-", "-", None))
    gold_human = [m for m in ("gold", "human") if m in cfg.baselines]
    if "human" in gold_human and not (fb.annotations or fb.source in ("scripted", "app")):
        gold_human.remove("human")
    for kind in gold_human:
        points = [(point, add(f"finetune.{kind}{variant_suffix(point)}", steps.train,
                              steps.TrainParams(cfg.finetune.train.replace(**point), kind, cfg.finetune.baseline_tasks),
                              {**base, **r1_data}, base_srcs + ("tasks",) + ann)) for point in sweep_points(cfg, kind)]
        chosen(kind, "-", "MBPP gold" if kind == "gold" else "human refinements", points)

    evaluated: dict[str, Stage] = {}
    humaneval: dict[str, Stage] = {}
    he_ids = humaneval_ids(cfg)
    for m in methods:
        model_in = dict(base) if m.train_stage is None else {"model": Artifact(m.train_stage, ModelPointer)}
        model_src = base_srcs if m.train_stage is None else ()
        _, evaluated[m.name] = sample_and_execute(f"eval.{m.name}.sample", f"eval.{m.name}.execute",
                                                  _sample_params(cfg, cfg.evaluation.sampling, ids=ids("test")),
                                                  model_in, model_src)
        if he_ids:  # the same sampler, executor and pass@k on HumanEval's prompts and `check` tests
            hs = add(f"eval.{m.name}.humaneval.sample", steps.sample,
                     _sample_params(cfg, cfg.evaluation.sampling, "humaneval", ids=he_ids), model_in, model_src + ("humaneval",))
            humaneval[m.name] = add(f"eval.{m.name}.humaneval.execute", steps.execute,
                                    steps.ExecParams(timeout, benchmark="humaneval"), {"samples": out(hs, Sample)}, ("humaneval",))

    fewshot: dict[str, Stage] = {}
    if "fewshot_refine" in cfg.baselines:
        for kind in ("relevant", "unrelated"):
            params = _sample_params(cfg, cfg.refiner.sampling, f"fewshot_{kind}",
                                    shuffle_seed=fb.shuffle_seed if kind == "unrelated" else None)
            _, fewshot[kind] = sample_and_execute(
                f"fewshot.{kind}.sample", f"fewshot.{kind}.execute", params,
                {**base, "refine_data": out(first["refine_data"], RefineTriple), "feedback": out(first["feedback"], Feedback)},
                base_srcs)

    ppl = None
    if cfg.report.perplexity:
        ft = cfg.finetune.train
        ppl = add("perplexity", steps.perplexity,
                  steps.PerplexityParams(cfg.report.perplexity_batch_size, ft.max_length, ft.max_target_length),
                  {**base, **r1_data}, base_srcs + ("tasks",) + ann)

    inputs = {report.summary_input(s.name): out(s, Summary) for s in plan}
    inputs.update({f"eval.{name}": out(st, Verdict) for name, st in evaluated.items()})
    inputs.update({f"fewshot.{kind}": out(st, Verdict) for kind, st in fewshot.items()})
    inputs.update({f"humaneval.{name}": out(st, Verdict) for name, st in humaneval.items()})
    for s in plan:
        if s.name.endswith((".execute_base", ".execute_refinements")):
            inputs[s.name] = out(s, Verdict)
        if s.fn is steps.train:
            inputs[f"trainlog:{s.name}"] = out(s, TrainLog)
    if ppl is not None:
        inputs["perplexity"] = out(ppl, Perplexity)
    add("report", report.report,
        report.ReportParams(cfg.evaluation.ks, tuple(methods), cfg.rounds, fb.allow_test_annotations,
                            cfg.sampling_with(cfg.evaluation.sampling).n,
                            report.Bootstrap(cfg.report.bootstrap_seed, cfg.report.bootstrap_samples, cfg.report.confidence),
                            cfg.sampling_with(cfg.evaluation.sampling).knobs() == cfg.sampling.knobs()),
        inputs, ("tasks",) + ann)
    return plan, methods
