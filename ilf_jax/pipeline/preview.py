"""`ilf plan`'s content: a run's stages and the counts known before any model is loaded.

From the config, the task source and the annotation file alone: tasks per split (and the ones
`tasks.def_match: reference` skips), annotation rows kept or left out and why, each training
stage's examples and optimizer updates, each sampling stage's samples, and token estimates.
Counts that depend on what the model samples (tasks the base model fails, refinements that
pass) are upper bounds and marked so; token counts are estimates from character counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ilf_jax.data.annotations import keep_annotation, levenshtein
from ilf_jax.data.formats import task_prompt
from ilf_jax.pipeline import plan, steps
from ilf_jax.pipeline.config import PipelineConfig
from ilf_jax.pipeline.sources import Annotations, TaskSet, load_run_annotations
from ilf_jax.train.data import steps_per_epoch

CHARS_PER_TOKEN = 4.0  # the rule of thumb behind the token estimates (BPE on English and Python)


@dataclasses.dataclass(frozen=True)
class AnnotationCounts:
    """What the run takes from the annotation file: rows per split, rows left out (and why), and the
    pi_Refine rows the run's filter drops up front (`feedback.refilter`: by edit distance; off: by the
    file's own `passed`)."""

    by_split: dict[str, int]
    excluded_test_ids: tuple[int, ...]
    outside_run: int
    dropped_ids: tuple[int, ...]
    drop_reason: str


@dataclasses.dataclass(frozen=True)
class SamplingCount:
    """One sampling stage: prompts x n samples; `exact` False when the prompts depend on earlier results."""

    stage: str
    prompts: int
    n: int
    exact: bool
    tokens: int  # estimated prompt + completion tokens over every sample

    @property
    def samples(self) -> int:
        return self.prompts * self.n


@dataclasses.dataclass(frozen=True)
class TrainingCount:
    """One training stage: its examples (`exact` False: an upper bound), updates per epoch and in total
    (`TrainConfig.remainder`), and the estimated tokens it trains on."""

    stage: str
    examples: int
    exact: bool
    updates_per_epoch: int
    epochs: int
    tokens: int

    @property
    def updates(self) -> int:
        return self.updates_per_epoch * self.epochs


@dataclasses.dataclass(frozen=True)
class RunPreview:
    """Everything `ilf plan` prints."""

    stages: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]  # (name, dependencies, sources)
    tasks: dict[str, int]
    skipped: dict[str, tuple[int, ...]]
    annotations: AnnotationCounts | None
    sampling: tuple[SamplingCount, ...]
    training: tuple[TrainingCount, ...]


def _tokens(chars: int) -> int:
    return int(round(chars / CHARS_PER_TOKEN))


def _annotation_counts(cfg: PipelineConfig, task_set: TaskSet, ann: Annotations) -> AnnotationCounts:
    by_split: dict[str, int] = {}
    for tid in ann.rows:
        split = task_set.split_of(tid) or "outside"
        by_split[split] = by_split.get(split, 0) + 1
    refine = [a for tid, a in sorted(ann.rows.items()) if task_set.split_of(tid) in ("refine", "test")]
    if cfg.feedback.refilter:
        dropped = tuple(a.task_id for a in refine if not keep_annotation(a.refinement, a.original, True,
                                                                         levenshtein(a.refinement, a.original)))
        reason = "by edit distance >= half the longer program (feedback.refilter=true; passing is checked at run time)"
    else:
        dropped = tuple(a.task_id for a in refine if a.passed is False)
        reason = "by the file's `passed` (feedback.refilter=false: the file as filtered)"
    return AnnotationCounts(by_split, ann.excluded_test_ids, ann.outside_run, dropped, reason)


def _feedback_rows(cfg: PipelineConfig, task_set: TaskSet, ann: Annotations | None) -> tuple[int, bool]:
    """Train-split programs that get feedback: the annotated ones (exact), else at most every train task."""
    if cfg.feedback.programs == "annotated" and ann is not None:
        return sum(task_set.split_of(t) == "train" for t in ann.rows), True
    return len(task_set.splits["train"]), False


def _refine_examples(cfg: PipelineConfig, task_set: TaskSet, ann: Annotations | None,
                     counts: AnnotationCounts | None) -> tuple[int, bool, list[Any]]:
    """pi_Refine's examples: the annotation rows of the refine split (test too when allowed) that the
    filter keeps (exact without the refilter's run-time check), else at most one per refine task."""
    if ann is None or counts is None:
        return len(task_set.splits["refine"]), False, []
    rows = [a for tid, a in sorted(ann.rows.items()) if task_set.split_of(tid) in ("refine", "test")
            and tid not in counts.dropped_ids and a.feedback.strip()]
    return len(rows), not cfg.feedback.refilter, rows


def build(cfg: PipelineConfig, task_set: TaskSet) -> RunPreview:
    """The preview of `cfg` on `task_set` (annotation file read here; no model, tokenizer or device)."""
    stages, _ = plan.build(cfg, task_set)
    ann = load_run_annotations(cfg.feedback.annotations, task_set, cfg.feedback.allow_test_annotations) \
        if cfg.feedback.annotations else None
    counts = None if ann is None else _annotation_counts(cfg, task_set, ann)
    n_feedback, feedback_exact = _feedback_rows(cfg, task_set, ann)
    n_refine, refine_exact, refine_rows = _refine_examples(cfg, task_set, ann, counts)
    tasks = task_set.tasks
    train_ids = task_set.splits["train"]
    gold_chars = {t: len(task_prompt(tasks[t])) + len(tasks[t].code) for t in train_ids}
    mean_train = sum(gold_chars.values()) / max(len(gold_chars), 1)
    sampling, training = [], []
    for s in stages:
        p = s.params
        if isinstance(p, steps.SampleParams):
            cap = p.sampling.max_new_tokens * CHARS_PER_TOKEN
            if p.prompts == "task":
                chars = sum(len(task_prompt(tasks[i])) + min(len(tasks[i].code), cap) for i in p.ids)
                sampling.append(SamplingCount(s.name, len(p.ids), p.sampling.n, True, _tokens(chars * p.sampling.n)))
            else:  # refinement prompts: old program + feedback + task prompt, then a program
                per = 2 * mean_train + 200 + min(mean_train, cap)
                sampling.append(SamplingCount(s.name, n_feedback, p.sampling.n, feedback_exact,
                                              _tokens(per * n_feedback * p.sampling.n)))
        elif isinstance(p, steps.TrainParams):
            if p.data == "refine":
                n, exact = n_refine, refine_exact
                per = (sum(len(a.original) + len(a.feedback) + len(a.refinement) for a in refine_rows) / n if refine_rows
                       else 2 * mean_train)
            else:
                n = n_feedback
                exact = p.data in ("gold", "human") and p.baseline_tasks == "all" and feedback_exact
                per = mean_train
            t = p.train
            tokens = min(_tokens(per), t.max_length) * n * t.epochs
            training.append(TrainingCount(s.name, n, exact, steps_per_epoch(n, t.batch_size, t.remainder) if n else 0,
                                          t.epochs, tokens))
    return RunPreview(tuple((s.name, s.deps, s.sources) for s in stages),
                      {k: len(v) for k, v in task_set.splits.items()}, dict(task_set.skipped), counts,
                      tuple(sampling), tuple(training))


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(map(str, ids)) if ids else "none"


def render(pv: RunPreview) -> str:
    """The preview as text, one section per kind of count."""
    out = ["tasks:"]
    for split, n in pv.tasks.items():
        skipped = pv.skipped.get(split, ())
        out.append(f"  {split}: {n} tasks" + (f" ({len(skipped)} skipped by the reference's def regex: {_ids(skipped)})"
                                             if skipped else ""))
    a = pv.annotations
    if a is not None:
        out.append("annotations: " + ", ".join(f"{split} {n}" for split, n in sorted(a.by_split.items())) + " rows used")
        out.append(f"  excluded: {len(a.excluded_test_ids)} in the test split (leakage guard): {_ids(a.excluded_test_ids)}")
        out.append(f"  excluded: {a.outside_run} for tasks this run does not select")
        out.append(f"  pi_Refine rows dropped up front: {len(a.dropped_ids)}: {_ids(a.dropped_ids)}; {a.drop_reason}")
    out.append("stages:")
    for name, deps, sources in pv.stages:
        out.append(f"  {name}  <- {', '.join(deps + sources) or '(nothing)'}")
    out.append("sampling (prompts x n = samples, ~tokens):")
    for c in pv.sampling:
        bound = "" if c.exact else "at most "
        out.append(f"  {c.stage}: {bound}{c.prompts} x {c.n} = {bound}{c.samples} samples, ~{c.tokens:,} tokens")
    out.append("training (examples, updates per epoch x epochs = updates, ~tokens):")
    for c in pv.training:
        bound = "" if c.exact else "at most "
        out.append(f"  {c.stage}: {bound}{c.examples} examples, {c.updates_per_epoch} x {c.epochs} = {c.updates} updates, "
                   f"~{c.tokens:,} tokens")
    total_s, total_t = sum(c.tokens for c in pv.sampling), sum(c.tokens for c in pv.training)
    out.append(f"estimated tokens (1 per {CHARS_PER_TOKEN:g} characters; bounds where marked): "
               f"sample ~{total_s:,}, train ~{total_t:,}")
    return "\n".join(out)
