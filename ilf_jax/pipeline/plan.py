"""The stage graph of a config: ILF rounds (Algorithm 1), the paper's baselines and ablations, the sweep.

Stage names: `r{R}.sample_base`, `r{R}.execute_base`, `r{R}.collect`, `r{R}.refine_data`,
`r{R}.feedback` (after `r{R}.annotate` with `feedback.source: app`), `r{R}.train_refine`, `r{R}.sample_refinements`, `r{R}.execute_refinements`,
`r{R}.select`, `r{R}.finetune.ilf{V}`; `finetune.gold{V}`, `finetune.human{V}`;
`eval.{METHOD}.sample`, `eval.{METHOD}.execute`; `fewshot.{relevant,unrelated}.{sample,execute}`;
`perplexity`; `report`. `{V}` is empty, or `[lr=..,bs=..,ep=..]` for a sweep point.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from typing import Any, Callable

from ilf_jax.data.formats import task_prompt
from ilf_jax.pipeline import app_feedback, report, steps, texts
from ilf_jax.pipeline.config import sampling_section
from ilf_jax.pipeline.engine import Stage, StageContext
from ilf_jax.pipeline.records import read_jsonl
from ilf_jax.pipeline.resources import Resources
from ilf_jax.train.config import TrainConfig

_SWEEP_ABBREV = {"learning_rate": "lr", "batch_size": "bs", "epochs": "ep"}


@dataclasses.dataclass(frozen=True)
class Method:
    """A model evaluated on the test split: its label, its feedback and data, and the stage that made it."""

    name: str
    feedback: str
    data: str
    train_stage: str | None  # None: the base model


def sweep_points(cfg: dict[str, Any], method: str | None = None) -> list[dict[str, Any]]:
    """The sweep's grid as train-config overrides ([{}] without a sweep, or for a `method` it leaves out);
    the first point is the main one (the next round's base model)."""
    if method is not None and method not in cfg["sweep"]["methods"]:
        return [{}]
    keys = [k for k in _SWEEP_ABBREV if cfg["sweep"][k]]
    return [dict(zip(keys, values)) for values in itertools.product(*(cfg["sweep"][k] for k in keys))] or [{}]


def variant_suffix(point: dict[str, Any]) -> str:
    return "" if not point else "[" + ",".join(f"{_SWEEP_ABBREV[k]}={v}" for k, v in point.items()) + "]"


def _identity_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    """The sampling values results depend on (samples are keyed by task id, so not the batching)."""
    return {k: v for k, v in sampling.items() if k not in ("chunk", "batch_size")}


def _ids(res: Resources, *splits: str) -> list[int]:
    return sorted(i for s in splits for i in res.task_set.splits[s])


def _base_model(res: Resources, round_: int) -> tuple[Callable[[StageContext], pathlib.Path], tuple[str, ...], tuple[str, ...]]:
    """(model getter, deps, inputs) of a round's base model: the configured one, or the last round's pi_theta*."""
    if round_ == 1:
        path = pathlib.Path(res.config["model"]["dir"])
        return (lambda ctx: path), (), ("model",)
    prev = f"r{round_ - 1}.finetune.ilf{variant_suffix(sweep_points(res.config, 'ilf')[0])}"
    return steps.model_of(prev), (prev,), ()


def _task_prompts(ids: list[int]) -> Callable[[StageContext], list[tuple[int, str]]]:
    return lambda ctx: [(i, task_prompt(ctx.resources.task(i))) for i in ids]


def _train_cfg(res: Resources, section: str, point: dict[str, Any]) -> dict[str, Any]:
    return {**res.config[section]["train"], **point}


def _refine_examples(ctx: StageContext, name: str) -> list[Any]:
    rows = [r for r in read_jsonl(ctx.dep(name) / steps.REFINE_DATA) if r["kept"]]
    return [texts.refine_example(ctx.resources.task(r["task_id"]), r["old_program"], r["feedback"], r["refinement"])
            for r in rows]


def _selected(ctx: StageContext, select: str) -> list[dict[str, Any]]:
    return read_jsonl(ctx.dep(select) / steps.SELECTED)


def _baseline_ids(ctx: StageContext, select: str, feedback: str) -> list[int]:
    """Task ids of the gold/human baselines: ILF's selected ids, or every train task with feedback."""
    if ctx.resources.config["finetune"]["baseline_tasks"] == "selected":
        return [r["task_id"] for r in _selected(ctx, select)]
    return [r["task_id"] for r in read_jsonl(ctx.dep(feedback) / steps.FEEDBACK)]


def _human_refinements(ctx: StageContext, feedback: str) -> dict[int, str]:
    """Human (or scripted-annotator) refinements of train tasks, by task id."""
    res = ctx.resources
    out = {r["task_id"]: r["refinement"] for r in read_jsonl(ctx.dep(feedback) / steps.FEEDBACK) if r["refinement"]}
    if res.annotations is not None:
        out.update({tid: a.refinement for tid, a in res.annotations.rows.items() if res.task_set.split_of(tid) == "train"})
    return out


def build(res: Resources) -> tuple[list[Stage], list[Method]]:
    """Every stage of the run in dependency order, and the evaluated methods."""
    cfg = res.config
    fb = cfg["feedback"]
    ex_cfg = {"timeout": cfg["executor"]["timeout"]}
    base_sampling = sampling_section(cfg)
    refine_sampling = sampling_section(cfg, cfg["refiner"]["sampling"])
    eval_sampling = sampling_section(cfg, cfg["evaluation"]["sampling"])
    plan: list[Stage] = []
    methods: list[Method] = []
    fb_label = {"human": "humans", "model": "model (few-shot)", "shuffled": "shuffled (unrelated)",
                "scripted": "scripted annotator", "app": "humans (ilf annotate)"}[fb["source"]]
    feedback_cfg = {k: fb[k] for k in ("source", "programs", "shuffle_seed", "annotator", "annotator_seed")}
    if fb["source"] == "model":
        feedback_cfg["model"] = {**fb["model"], "seed": cfg["sampling"]["seed"]}
    ann_inputs = ("annotations", "tasks") if fb["annotations"] else ("tasks",)

    for r in range(1, cfg["rounds"] + 1):
        R = f"r{r}"
        base, base_deps, base_inputs = _base_model(res, r)
        collect_ids = _ids(res, *cfg["collect"]["splits"])
        plan += [
            Stage(f"{R}.sample_base", steps.sample_stage(base, _task_prompts(collect_ids), base_sampling),
                  base_deps, {"sampling": _identity_sampling(base_sampling), "ids": collect_ids}, base_inputs + ("tasks",)),
            Stage(f"{R}.execute_base", steps.execute_stage(f"{R}.sample_base"), (f"{R}.sample_base",), ex_cfg, ("tasks",)),
            Stage(f"{R}.collect", steps.collect_stage(f"{R}.sample_base", f"{R}.execute_base"),
                  (f"{R}.sample_base", f"{R}.execute_base"), None, ("tasks",)),
        ]
        collect = None if fb["annotations"] else f"{R}.collect"
        annotate = f"{R}.annotate" if fb["source"] == "app" else None
        if annotate:
            plan.append(Stage(annotate, app_feedback.annotate_stage(f"{R}.collect", r), (f"{R}.collect",), None,
                              ("tasks",)))
        plan.append(Stage(f"{R}.refine_data", steps.refine_data_stage(collect, annotate),
                          (annotate,) if annotate else (collect,) if collect else (),
                          {"allow_test": fb["allow_test_annotations"], "annotator": fb["annotator"],
                           "annotator_seed": fb["annotator_seed"], "ids": _ids(res, "refine", "test"), **ex_cfg},
                          ann_inputs))
        fb_deps = (f"{R}.refine_data",) + ((annotate or f"{R}.collect",) if fb["programs"] == "sampled" else ())
        fb_inputs = ann_inputs + (("feedback_model",) if fb["source"] == "model" else ())
        plan.append(Stage(f"{R}.feedback", steps.feedback_stage(f"{R}.collect", f"{R}.refine_data", annotate), fb_deps,
                          {**feedback_cfg, "ids": _ids(res, "train"), **ex_cfg}, fb_inputs))
        refine_train = _train_cfg(res, "refiner", {})
        plan += [
            Stage(f"{R}.train_refine",
                  steps.train_stage(base, lambda ctx, R=R: _refine_examples(ctx, f"{R}.refine_data"), refine_train),
                  base_deps + (f"{R}.refine_data",), {"train": refine_train}, base_inputs),
            Stage(f"{R}.sample_refinements",
                  steps.sample_stage(steps.model_of(f"{R}.train_refine"), _refinement_prompts(f"{R}.feedback"), refine_sampling),
                  (f"{R}.train_refine", f"{R}.feedback"), {"sampling": _identity_sampling(refine_sampling)}, ("tasks",)),
            Stage(f"{R}.execute_refinements", steps.execute_stage(f"{R}.sample_refinements"),
                  (f"{R}.sample_refinements",), ex_cfg, ("tasks",)),
            Stage(f"{R}.select", steps.select_stage(f"{R}.feedback", f"{R}.sample_refinements", f"{R}.execute_refinements"),
                  (f"{R}.feedback", f"{R}.sample_refinements", f"{R}.execute_refinements"), None, ("tasks",)),
        ]
        for point in sweep_points(cfg, "ilf"):
            name = f"{R}.finetune.ilf{variant_suffix(point)}"
            train_cfg = _train_cfg(res, "finetune", point)
            plan.append(Stage(name, steps.train_stage(base, lambda ctx, R=R: [
                texts.finetune_example(ctx.resources.task(s["task_id"]), s["completion"]) for s in _selected(ctx, f"{R}.select")],
                train_cfg), base_deps + (f"{R}.select",), {"train": train_cfg}, base_inputs + ("tasks",)))
            label = "ilf" if r == 1 else f"ilf_r{r}"
            methods.append(Method(label + variant_suffix(point), fb_label, "pi_Refine refinements", name))

    base1, _, base1_inputs = _base_model(res, 1)
    if "zero_shot" in cfg["baselines"]:
        methods.insert(0, Method("zero_shot", "-", "-", None))
    gold_human = [m for m in ("gold", "human") if m in cfg["baselines"]]
    if "human" in gold_human and not (fb["annotations"] or fb["source"] in ("scripted", "app")):
        gold_human.remove("human")
    ft_cfg = {"baseline_tasks": cfg["finetune"]["baseline_tasks"]}
    for kind in gold_human:
        for point in sweep_points(cfg, kind):
            name = f"finetune.{kind}{variant_suffix(point)}"
            train_cfg = _train_cfg(res, "finetune", point)
            plan.append(Stage(name, steps.train_stage(base1, _baseline_examples(kind), train_cfg),
                              ("r1.select", "r1.feedback"), {"train": train_cfg, **ft_cfg}, base1_inputs + ann_inputs))
            data = "MBPP gold" if kind == "gold" else "human refinements"
            methods.append(Method(kind + variant_suffix(point), "-", data, name))

    test_ids = _ids(res, "test")
    for m in methods:
        model = base1 if m.train_stage is None else steps.model_of(m.train_stage)
        deps = () if m.train_stage is None else (m.train_stage,)
        inputs = ("tasks",) + (base1_inputs if m.train_stage is None else ())
        plan += [
            Stage(f"eval.{m.name}.sample", steps.sample_stage(model, _task_prompts(test_ids), eval_sampling), deps,
                  {"sampling": _identity_sampling(eval_sampling), "ids": test_ids}, inputs),
            Stage(f"eval.{m.name}.execute", steps.execute_stage(f"eval.{m.name}.sample"), (f"eval.{m.name}.sample",),
                  ex_cfg, ("tasks",)),
        ]

    if "fewshot_refine" in cfg["baselines"]:
        for kind in ("relevant", "unrelated"):
            plan += [
                Stage(f"fewshot.{kind}.sample",
                      steps.sample_stage(base1, _fewshot_prompts(kind, fb["shuffle_seed"]), refine_sampling),
                      ("r1.refine_data", "r1.feedback"), {"sampling": _identity_sampling(refine_sampling), "seed": fb["shuffle_seed"]},
                      base1_inputs + ("tasks",)),
                Stage(f"fewshot.{kind}.execute", steps.execute_stage(f"fewshot.{kind}.sample"),
                      (f"fewshot.{kind}.sample",), ex_cfg, ("tasks",)),
            ]

    if cfg["report"]["perplexity"]:
        ft = TrainConfig.from_dict(cfg["finetune"]["train"])
        ppl_cfg = {"batch_size": cfg["report"]["perplexity_batch_size"], "max_length": ft.max_length,
                   "max_target_length": ft.max_target_length}
        plan.append(Stage("perplexity", steps.perplexity_stage(base1, _perplexity_sets, ppl_cfg),
                          ("r1.select", "r1.feedback"), ppl_cfg, base1_inputs + ann_inputs))

    plan.append(Stage("report", report.report_stage(methods), tuple(s.name for s in plan),
                      {"ks": cfg["evaluation"]["ks"], "methods": [dataclasses.asdict(m) for m in methods],
                       "rounds": cfg["rounds"], "allow_test": fb["allow_test_annotations"], "n": eval_sampling["n"]},
                      ann_inputs))
    return plan, methods


def _refinement_prompts(feedback: str) -> Callable[[StageContext], list[tuple[int, str]]]:
    def prompts(ctx: StageContext) -> list[tuple[int, str]]:
        return [(r["task_id"], texts.refine_sampling_prompt(ctx.resources.task(r["task_id"]), r["old_program"], r["feedback"]))
                for r in read_jsonl(ctx.dep(feedback) / steps.FEEDBACK)]
    return prompts


def _baseline_examples(kind: str) -> Callable[[StageContext], list[Any]]:
    def examples(ctx: StageContext) -> list[Any]:
        ids = _baseline_ids(ctx, "r1.select", "r1.feedback")
        if kind == "gold":
            return [texts.finetune_example(ctx.resources.task(t), texts.gold_completion(ctx.resources.task(t))) for t in ids]
        human = _human_refinements(ctx, "r1.feedback")
        return [texts.finetune_example(ctx.resources.task(t), texts.body_of(human[t], ctx.resources.task(t)))
                for t in ids if t in human]
    return examples


def _fewshot_prompts(kind: str, seed: int) -> Callable[[StageContext], list[tuple[int, str]]]:
    """1-shot refinement prompts for the base model on the train tasks, with their own or shuffled feedback."""
    def prompts(ctx: StageContext) -> list[tuple[int, str]]:
        shots = [(r["old_program"], r["feedback"], r["refinement"])
                 for r in read_jsonl(ctx.dep("r1.refine_data") / steps.REFINE_DATA) if r["kept"]][:1]
        rows = read_jsonl(ctx.dep("r1.feedback") / steps.FEEDBACK)
        perm = texts.derangement(len(rows), seed) if kind == "unrelated" else list(range(len(rows)))
        return [(r["task_id"], texts.fewshot_refine_prompt(shots, ctx.resources.task(r["task_id"]), r["old_program"],
                                                           rows[p]["feedback"])) for r, p in zip(rows, perm)]
    return prompts


def _perplexity_sets(ctx: StageContext) -> dict[str, list[tuple[int, Any]]]:
    """Figure 3's training sources on the train tasks with feedback: MBPP gold, human and pi_Refine refinements."""
    res = ctx.resources
    ids = [r["task_id"] for r in read_jsonl(ctx.dep("r1.feedback") / steps.FEEDBACK)]
    human = _human_refinements(ctx, "r1.feedback")
    return {
        "mbpp_gold": [(t, texts.finetune_example(res.task(t), texts.gold_completion(res.task(t)))) for t in ids],
        "human_refinements": [(t, texts.finetune_example(res.task(t), texts.body_of(human[t], res.task(t))))
                              for t in ids if t in human],
        "pi_refine_refinements": [(s["task_id"], texts.finetune_example(res.task(s["task_id"]), s["completion"]))
                                  for s in _selected(ctx, "r1.select")],
    }
