"""The stage graph of a config: ILF rounds (Algorithm 1), the paper's baselines and ablations, the sweep.

This is the one place that reads the config: each stage gets its parameters (a frozen dataclass
of exactly the values it uses) and handles to the artifacts it reads, so its dependencies and
identity follow from what it is given. Round r's stages get round r's handles; round r+1 starts
from round r's pi_theta*.

Stage names: `r{R}.sample_base`, `r{R}.execute_base`, `r{R}.collect`, `r{R}.refine_data`,
`r{R}.feedback` (after `r{R}.annotate` with `feedback.source: app`), `r{R}.train_refine`, `r{R}.sample_refinements`, `r{R}.execute_refinements`,
`r{R}.select`, `r{R}.finetune.ilf{V}`; `finetune.gold{V}`, `finetune.human{V}`;
`eval.{METHOD}.sample`, `eval.{METHOD}.execute`; `fewshot.{relevant,unrelated}.{sample,execute}`;
`perplexity`; `report`; before them, the stages of `model.prepare` (the demo's `demo.*`). `{V}` is empty, or `[lr=..,bs=..,ep=..]` for a sweep point.
"""

from __future__ import annotations

import itertools
from typing import Any

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
    return steps.SampleParams(SamplingConfig(**section.knobs()), prompts, ids, shuffle_seed, section.chunk)


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
        return s, add(execute_name, steps.execute, steps.ExecParams(timeout, test_style), {"samples": out(s, Sample)}, ("tasks",))

    def trained(stage: Stage) -> dict[str, Artifact]:
        return {"model": out(stage, ModelPointer)}

    fb_label = {"human": "humans", "model": "model (few-shot)", "shuffled": "shuffled (unrelated)",
                "scripted": "scripted annotator", "app": "humans (ilf annotate)"}[fb.source]
    ann = ("annotations",) if fb.annotations else ()
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
        tr = add(f"{R}.train_refine", steps.train, steps.TrainParams(cfg.refiner.train, "refine"),
                 {**base_in, "refine_data": out(rd, RefineTriple)}, base_src + ("tasks",))
        sr, er = sample_and_execute(f"{R}.sample_refinements", f"{R}.execute_refinements",
                                    _sample_params(cfg, cfg.refiner.sampling, "refine"),
                                    {**trained(tr), "feedback": out(fbk, Feedback)}, ())
        sel = add(f"{R}.select", steps.select, None,
                  {"feedback": out(fbk, Feedback), "samples": out(sr, Sample), "verdicts": out(er, Verdict)}, ())
        ilf = []
        for point in sweep_points(cfg, "ilf"):
            train_cfg = cfg.finetune.train.replace(**point)
            ilf.append(add(f"{R}.finetune.ilf{variant_suffix(point)}", steps.train, steps.TrainParams(train_cfg, "ilf"),
                           {**base_in, "selected": out(sel, Selected)}, base_src + ("tasks",)))
            label = "ilf" if r == 1 else f"ilf_r{r}"
            methods.append(Method(label + variant_suffix(point), fb_label, "pi_Refine refinements", ilf[-1].name))
        if r == 1:
            first = {"refine_data": rd, "feedback": fbk, "select": sel}
        base_in = trained(ilf[0])

    r1_data = {"selected": out(first["select"], Selected), "feedback": out(first["feedback"], Feedback)}
    if "zero_shot" in cfg.baselines:
        methods.insert(0, Method("zero_shot", "-", "-", None))
    gold_human = [m for m in ("gold", "human") if m in cfg.baselines]
    if "human" in gold_human and not (fb.annotations or fb.source in ("scripted", "app")):
        gold_human.remove("human")
    for kind in gold_human:
        for point in sweep_points(cfg, kind):
            train_cfg = cfg.finetune.train.replace(**point)
            st = add(f"finetune.{kind}{variant_suffix(point)}", steps.train,
                     steps.TrainParams(train_cfg, kind, cfg.finetune.baseline_tasks), {**base, **r1_data},
                     base_srcs + ("tasks",) + ann)
            methods.append(Method(kind + variant_suffix(point), "-", "MBPP gold" if kind == "gold" else "human refinements",
                                  st.name))

    evaluated: dict[str, Stage] = {}
    for m in methods:
        model_in = dict(base) if m.train_stage is None else {"model": Artifact(m.train_stage, ModelPointer)}
        _, evaluated[m.name] = sample_and_execute(f"eval.{m.name}.sample", f"eval.{m.name}.execute",
                                                  _sample_params(cfg, cfg.evaluation.sampling, ids=ids("test")),
                                                  model_in, base_srcs if m.train_stage is None else ())

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
    for s in plan:
        if s.name.endswith((".execute_base", ".execute_refinements")):
            inputs[s.name] = out(s, Verdict)
        if s.fn is steps.train:
            inputs[f"trainlog:{s.name}"] = out(s, TrainLog)
    if ppl is not None:
        inputs["perplexity"] = out(ppl, Perplexity)
    add("report", report.report,
        report.ReportParams(cfg.evaluation.ks, tuple(methods), cfg.rounds, fb.allow_test_annotations,
                            cfg.sampling_with(cfg.evaluation.sampling).n),
        inputs, ("tasks",) + ann)
    return plan, methods
