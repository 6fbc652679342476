"""The stage bodies: sample, execute, collect failures, pi_Refine's data, feedback, train, select, perplexity.

Each is `fn(ctx, params)`: a frozen parameter dataclass, input artifacts read with `ctx.read(name)`
and declared sources (`ctx.source("tasks")`); outputs go under `ctx.dir`. Record stages append to a
RecordLog as work finishes and skip keys already there, so a killed stage resumes without losing
or repeating work; samples are keyed by task id (the sampler's key id), so a resumed stage draws
the same ones.

Multi-process runs: every process runs every stage. Sampling and training are collective (SPMD)
calls; program execution is split: each process runs its share of the programs on its own CPUs
and the verdicts are merged (`parallel.distributed.map_shared`), so every sample gets exactly one
verdict. Only the writer process writes files (see `ilf_jax.jsonl`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

from ilf_jax.data.annotations import keep_annotation, levenshtein
from ilf_jax.data.formats import truncate_completion
from ilf_jax.errors import IlfError
from ilf_jax.jsonl import RecordLog, atomic_write_json
from ilf_jax.pipeline import faults, texts
from ilf_jax.pipeline.artifacts import (TRAIN_DIR, Failure, Feedback, ModelPointer, Perplexity, RefineTriple, Sample,
                                        Selected, Verdict)
from ilf_jax.pipeline.engine import StageContext, agreed
from ilf_jax.pipeline.resources import ModelRef
from ilf_jax.pipeline.sources import TRAINING_SPLITS, import_callable
from ilf_jax.processes import is_writer, process_count
from ilf_jax.sample.sampler import SamplingConfig
from ilf_jax.train.config import TrainConfig

_EXEC_FLUSH = 8  # results appended per fsync
_EXEC_ROUND = 32  # programs per process between merges, in multi-process runs
_NO_ID = {"identity": False}  # a parameter that changes how work is batched, never its results


def _by_sample(rec: Any) -> tuple[int, int]:
    return (rec["task_id"], rec["sample"]) if isinstance(rec, dict) else (rec.task_id, rec.sample)


def _by_task(rec: dict[str, Any]) -> int:
    return rec["task_id"]


def _log(ctx: StageContext, partial: str, key: Callable[[dict[str, Any]], Any]) -> RecordLog:
    """The stage's resumable record log `partial` (crash injection hooked in for the resume tests)."""
    return RecordLog(ctx.dir / partial, key, on_append=lambda n: faults.after_records(ctx.name, n))


def _bar(ctx: StageContext, total: int, initial: int) -> Any:
    from tqdm import tqdm

    enabled = ctx.services.progress and (process_count() == 1 or is_writer())
    return tqdm(total=total, initial=initial, desc=ctx.name, unit="it", dynamic_ncols=True, disable=not enabled)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


def _model(ctx: StageContext) -> ModelRef:
    """The model a stage uses: input `model` (a training stage's output), the feedback model (a stage declaring
    that source), or else the run's base model."""
    if ctx.has("model"):
        return ctx.services.model_ref(ctx.read("model").model_dir)
    return ctx.source("feedback_model" if "feedback_model" in ctx.stage.sources else "model")


# -- sampling and execution ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SampleParams:
    """Sample `sampling.n` completions for prompts of kind `prompts`:
    task (the task prompts of `ids`), humaneval (the HumanEval prompts of problem numbers `ids`), refine (pi_Refine prompts of input `feedback`, the old program cut to its
    first `old_code_tokens` tokens when set), or fewshot_relevant / fewshot_unrelated (1-shot refinement
    prompts, feedback shuffled by `shuffle_seed`), or model_refine (the feedback model's `shots`-shot refinement
    prompts of input `feedback`, the InstructGPT ablation). `cut`: completions cut at the end of the function (with the
    first line's indentation fixed), else kept whole up to EOS (pass `sampling.stop_rule=False` with it)."""

    sampling: SamplingConfig
    prompts: str = "task"
    ids: tuple[int, ...] = ()
    shuffle_seed: int | None = None
    chunk: int = dataclasses.field(default=16, metadata=_NO_ID)  # prompts per appended group of records
    cut: bool = True
    old_code_tokens: int | None = None
    shots: int = 1


def _head_tokens(ctx: StageContext, limit: int) -> Callable[[str], str]:
    """Text cut to its first `limit` tokens of the sampled model's tokenizer (the reference's `truncate`)."""
    from ilf_jax.model.store import load_tokenizer

    tok = load_tokenizer(_model(ctx).tokenizer)
    return lambda text: tok.decode(tok(text, add_special_tokens=False)["input_ids"][:limit])


def _prompts(ctx: StageContext, p: SampleParams) -> list[tuple[int, str]]:
    tasks = ctx.source("tasks") if p.prompts != "humaneval" else None
    if p.prompts == "task":
        from ilf_jax.data.formats import task_prompt

        return [(i, task_prompt(tasks.tasks[i])) for i in p.ids]
    if p.prompts == "humaneval":
        problems = ctx.source("humaneval")
        return [(i, problems[i].prompt) for i in p.ids]
    rows = ctx.read("feedback")
    old = (lambda text: text) if p.old_code_tokens is None else _head_tokens(ctx, p.old_code_tokens)
    if p.prompts == "refine":
        return [(r.task_id, texts.refine_sampling_prompt(tasks.tasks[r.task_id], old(r.old_program), r.feedback))
                for r in rows]
    shots = [(r.old_program, r.feedback, r.refinement) for r in ctx.read("refine_data") if r.kept][: p.shots]
    if p.prompts == "model_refine":
        if len(shots) < p.shots:
            raise IlfError(f"feedback.model.shots={p.shots}: only {len(shots)} kept pi_Refine examples to show")
        return [(r.task_id, texts.fewshot_refine_prompt(shots, tasks.tasks[r.task_id], old(r.old_program), r.feedback))
                for r in rows]
    perm = texts.derangement(len(rows), p.shuffle_seed) if p.prompts == "fewshot_unrelated" else list(range(len(rows)))
    return [(r.task_id, texts.fewshot_refine_prompt(shots, tasks.tasks[r.task_id], r.old_program, rows[q].feedback))
            for r, q in zip(rows, perm)]


def sample(ctx: StageContext, p: SampleParams) -> dict[str, Any]:
    """n completions per prompt from a model (samples.jsonl), appended a chunk of prompts at a time."""
    prompts = _prompts(ctx, p)
    cfg, n = p.sampling, p.sampling.n
    with _log(ctx, "samples.partial.jsonl", _by_sample) as log:
        todo = [(tid, q) for tid, q in prompts if any((tid, s) not in log for s in range(n))]
        agreed([tid for tid, _ in todo])
        if todo:
            sampler = ctx.services.sampler(_model(ctx))
            with _bar(ctx, len(prompts) * n, (len(prompts) - len(todo)) * n) as bar:
                for chunk in _chunks(todo, p.chunk):
                    outs = sampler.sample([q for _, q in chunk], cfg, key_ids=[tid for tid, _ in chunk],
                                          postprocess=truncate_completion if p.cut else None)
                    truncated = {chunk[i][0] for i in sampler.truncated}
                    log.append(Sample(chunk[c.prompt_index][0], c.sample, c.text, c.finish_reason, c.num_tokens,
                                      chunk[c.prompt_index][0] in truncated).to_json() for c in outs)
                    bar.update(len(outs))
        records = [Sample.from_json(r) for r in log.sorted()]
    Sample.save(ctx.dir / Sample.FILE, records)
    return {"prompts": len(prompts), "samples": len(records),
            "finished_by_eos_or_stop": sum(r.finish_reason != "length" for r in records),
            "truncated_prompts": len({r.task_id for r in records if r.prompt_truncated})}


@dataclasses.dataclass(frozen=True)
class ExecParams:
    """Program execution: the per-program time limit (seconds), the test block style (`executor.test_style`)
    and the benchmark whose tests judge the samples (mbpp: the task's test block; humaneval: the problem's own
    `check(candidate)`)."""

    timeout: float
    test_style: str = "valid"
    benchmark: str = "mbpp"


def _jobs(ctx: StageContext, p: ExecParams, of: dict[str, Sample]) -> list[Any]:
    """The executor job of each sample (by job id): its full program under its benchmark's tests."""
    from ilf_jax.execute import Job, job_for_program

    if p.benchmark == "humaneval":
        problems = ctx.source("humaneval")
        return [Job(job_id, problems[s.task_id].prompt + s.completion, test=problems[s.task_id].test,
                    entry_point=problems[s.task_id].entry_point) for job_id, s in of.items()]
    tasks = ctx.source("tasks").tasks
    return [job_for_program(tasks[s.task_id], texts.program_of(tasks[s.task_id], s.completion), job_id, p.test_style)
            for job_id, s in of.items()]


def _verdict(r: Any, of: dict[str, Sample]) -> Verdict:
    """The verdict record of executor result `r` for the sample its job was made from (`of`: by job id)."""
    s = of[r.id]
    return Verdict(s.task_id, s.sample, r.verdict, r.passed, r.error)


def execute(ctx: StageContext, p: ExecParams) -> dict[str, Any]:
    """Run every sample of input `samples` against its task's tests (verdicts.jsonl)."""
    from ilf_jax.execute import Executor

    samples = ctx.read("samples")
    with _log(ctx, "verdicts.partial.jsonl", _by_sample) as log:
        todo = [s for s in samples if _by_sample(s) not in log]
        agreed([_by_sample(s) for s in todo])
        of = {f"{s.task_id}/{s.sample}": s for s in todo}
        jobs = _jobs(ctx, p, of)
        if jobs:
            with Executor(ctx.services.workers, p.timeout) as ex, _bar(ctx, len(samples), len(samples) - len(todo)) as bar:
                if process_count() > 1:
                    from ilf_jax.parallel.distributed import map_shared

                    for batch in _chunks(jobs, _EXEC_ROUND * process_count()):
                        results = map_shared(ex.run, batch)
                        log.append(_verdict(r, of).to_json() for r in results)
                        bar.update(len(results))
                else:
                    pending: list[dict[str, Any]] = []
                    for r in ex.imap(jobs):
                        pending.append(_verdict(r, of).to_json())
                        bar.update(1)
                        if len(pending) >= _EXEC_FLUSH:
                            log.append(pending)
                            pending = []
                    log.append(pending)
        records = [Verdict.from_json(r) for r in log.finalize(ctx.dir / Verdict.FILE)]
    return {"programs": len(records), "passed": sum(r.passed for r in records),
            "tasks_with_a_pass": len({r.task_id for r in records if r.passed})}


def run_programs(ctx: StageContext, timeout: float, programs: Sequence[tuple[str, int, str]],
                 test_style: str = "valid") -> dict[str, Any]:
    """Verdicts of (id, task_id, full program) triples, executed in one pool (small, unlogged batches)."""
    from ilf_jax.execute import Executor, job_for_program

    if not programs:
        return {}
    tasks = ctx.source("tasks").tasks
    jobs = [job_for_program(tasks[tid], prog, pid, test_style) for pid, tid, prog in programs]
    with Executor(ctx.services.workers, timeout) as ex:
        if process_count() == 1:
            return {r.id: r for r in ex.run(jobs)}
        from ilf_jax.parallel.distributed import map_shared

        return {r.id: r for r in map_shared(ex.run, jobs)}


# -- Algorithm 1, steps 1-3 -------------------------------------------------------------------------
def collect(ctx: StageContext, p: None) -> dict[str, Any]:
    """Tasks with no passing sample, each with its first failing program and error (failures.jsonl)."""
    task_set = ctx.source("tasks")
    samples = {_by_sample(s): s for s in ctx.read("samples")}
    by_task: dict[int, list[Verdict]] = {}
    for v in ctx.read("verdicts"):
        by_task.setdefault(v.task_id, []).append(v)
    failures = []
    for tid in sorted(by_task):
        verdicts = sorted(by_task[tid], key=lambda v: v.sample)
        if any(v.passed for v in verdicts):
            continue
        first = verdicts[0]
        failures.append(Failure(tid, task_set.split_of(tid), first.sample,
                                texts.program_of(task_set.tasks[tid], samples[_by_sample(first)].completion),
                                first.error, len(verdicts)))
    Failure.save(ctx.dir / Failure.FILE, failures)
    return {"tasks": len(by_task), "failing_tasks": len(failures),
            "failing_by_split": {s: sum(f.split == s for f in failures) for s in TRAINING_SPLITS}}


def _scripted(ctx: StageContext, annotator: str, seed: int, items: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Feedback + refinement from the scripted annotator for each failing program (resumable), by task id."""
    annotate = import_callable(annotator, "feedback.annotator")
    tasks = ctx.source("tasks").tasks
    with _log(ctx, "annotator.partial.jsonl", _by_task) as log:
        for it in items:
            if it["task_id"] in log:
                continue
            ann = annotate(tasks[it["task_id"]], it["program"], it["error"], seed)
            log.append([{"task_id": it["task_id"], "feedback": ann.feedback if ann else "",
                         "refinement": ann.refinement if ann else None}])
        return {r["task_id"]: r for r in log.sorted()}


def _annotations(ctx: StageContext, allow_test: bool) -> Any:
    """The human annotations: the app's (input `app_annotations`, `feedback.source: app`) or the
    annotation file's (source `annotations`), leakage guard applied; None without either."""
    if ctx.has("app_annotations"):
        from ilf_jax.pipeline.sources import load_run_annotations

        return load_run_annotations(str(ctx.read("app_annotations")), ctx.source("tasks"), allow_test)
    return ctx.source("annotations") if "annotations" in ctx.stage.sources else None


def _annotated_programs(ctx: StageContext, timeout: float, ids: Sequence[int], ann: Any,
                        test_style: str = "valid") -> list[dict[str, Any]]:
    """The annotated (original program, error) of the annotation rows `ann` of tasks `ids`."""
    rows = [a for tid, a in sorted(ann.rows.items()) if tid in set(ids)]
    verdicts = run_programs(ctx, timeout, [(f"orig/{a.task_id}", a.task_id, a.original) for a in rows], test_style)
    return [{"task_id": a.task_id, "program": a.original, "error": verdicts[f"orig/{a.task_id}"].error,
             "original_passed": verdicts[f"orig/{a.task_id}"].passed} for a in rows]


@dataclasses.dataclass(frozen=True)
class RefineDataParams:
    """Where pi_Refine's triples come from: human annotations (`annotated`: the file, or the app's; test-split
    rows only when `allow_test`) or the scripted `annotator` on the refine split's failures; the run's
    refine and test task ids; execution settings; `refilter` (`feedback.refilter`): keep a triple only when
    its refinement passes here and is a small edit, else keep what the annotation file kept (its `passed`)."""

    annotated: bool
    allow_test: bool
    annotator: str | None
    annotator_seed: int
    refine_ids: tuple[int, ...]
    test_ids: tuple[int, ...]
    timeout: float
    test_style: str = "valid"
    refilter: bool = True


def refine_data(ctx: StageContext, p: RefineDataParams) -> dict[str, Any]:
    """pi_Refine's data (refine_data.jsonl): (old program, feedback, refinement) triples with the paper's filter.

    From the human annotation file or the app's annotations (refine split; test split too only when
    allowed), else from the scripted annotator on the refine split's failing programs. With `refilter`, a triple
    is kept when its refinement passes and Levenshtein(refinement, old) < half the longer of the two; without,
    when the annotation file marks it passed (the reference's filter) or, with no such mark, when it passes here.
    """
    if p.annotated:
        ann = _annotations(ctx, p.allow_test)
        items = _annotated_programs(ctx, p.timeout, p.refine_ids + (p.test_ids if p.allow_test else ()), ann, p.test_style)
        triples = [{**it, "feedback": ann.rows[it["task_id"]].feedback, "refinement": ann.rows[it["task_id"]].refinement,
                    "source": "human", "file_passed": ann.rows[it["task_id"]].passed} for it in items]
    else:
        ann = None
        items = [dataclasses.asdict(f) for f in ctx.read("failures") if f.split == "refine"]
        notes = _scripted(ctx, p.annotator, p.annotator_seed, items)
        triples = [{"task_id": it["task_id"], "program": it["program"], "error": it["error"],
                    "feedback": notes[it["task_id"]]["feedback"], "refinement": notes[it["task_id"]]["refinement"],
                    "source": "scripted"} for it in items if notes[it["task_id"]]["refinement"]]
    verdicts = run_programs(ctx, p.timeout, [(f"ref/{t['task_id']}", t["task_id"], t["refinement"]) for t in triples],
                            p.test_style)
    out = []
    for t in triples:
        passed = verdicts[f"ref/{t['task_id']}"].passed
        if p.refilter:
            keep = keep_annotation(t["refinement"], t["program"], passed)
        else:
            keep = passed if t.get("file_passed") is None else t["file_passed"]
        out.append(RefineTriple(t["task_id"], t["program"], t["error"], t["feedback"], t["refinement"], t["source"], passed,
                                levenshtein(t["refinement"], t["program"]), keep and bool(t["feedback"].strip())))
    RefineTriple.save(ctx.dir / RefineTriple.FILE, out)
    return {"triples": len(out), "kept": sum(r.kept for r in out),
            "excluded_test_annotations": len(ann.excluded_test_ids) if ann else 0,
            "test_annotations_used": sum(r.task_id in set(p.test_ids) and r.kept for r in out)}


@dataclasses.dataclass(frozen=True)
class ModelFeedbackParams:
    """Feedback written by a model (the source `feedback_model`), few-shot prompted with `shots` kept
    pi_Refine examples."""

    shots: int
    temperature: float
    max_new_tokens: int
    seed: int
    batch_size: int = dataclasses.field(metadata=_NO_ID)
    chunk: int = dataclasses.field(metadata=_NO_ID)


@dataclasses.dataclass(frozen=True)
class FeedbackParams:
    """Feedback on MBPP_Train failing programs: `source` human | model | shuffled | scripted | app, about
    the `programs` annotated (the annotation file's), sampled (input `failures`) or, for app, the run's
    failures people annotated (input `app_annotations`); `ids`: the train tasks."""

    source: str
    programs: str
    shuffle_seed: int
    annotator: str | None
    annotator_seed: int
    ids: tuple[int, ...]
    timeout: float
    model: ModelFeedbackParams | None = None
    test_style: str = "valid"


def _model_feedback(ctx: StageContext, p: ModelFeedbackParams, items: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Feedback written by a model, few-shot prompted with (old program, error, feedback) examples."""
    kept = [r for r in ctx.read("refine_data") if r.kept]
    shots = [(r.old_program, r.error, r.feedback) for r in kept[: p.shots]]
    if len(shots) < p.shots:
        raise IlfError(f"feedback.model.shots={p.shots}: only {len(shots)} kept pi_Refine examples to show")
    cfg = SamplingConfig(n=1, temperature=float(p.temperature), max_new_tokens=int(p.max_new_tokens), seed=p.seed,
                         stop_rule=False, batch_size=p.batch_size)
    with _log(ctx, "model_feedback.partial.jsonl", _by_task) as log:
        todo = [it for it in items if it["task_id"] not in log]
        if todo:
            sampler = ctx.services.sampler(ctx.source("feedback_model"))
            for chunk in _chunks(todo, p.chunk):
                prompts = [texts.feedback_prompt(shots, it["program"], it["error"]) for it in chunk]
                rows = sampler.generate_tokens(sampler.encode(prompts, cfg), cfg, key_ids=[it["task_id"] for it in chunk])
                tok = sampler.tokenizer
                log.append({"task_id": chunk[r.prompt_index]["task_id"],
                            "feedback": texts.cut_feedback(tok.decode(list(map(int, r.tokens)), skip_special_tokens=False))}
                           for r in rows)
        return {k: v["feedback"] for k, v in log.records.items()}


def feedback(ctx: StageContext, p: FeedbackParams) -> dict[str, Any]:
    """Feedback on MBPP_Train failing programs (feedback.jsonl), from humans (the annotation file, or
    the app on this run's failures), a model, the scripted annotator, or human/scripted feedback
    shuffled across tasks (the unrelated-feedback control)."""
    ann = _annotations(ctx, False)  # train-split rows: the leakage guard does not touch them
    if p.programs == "annotated" or p.source == "app":
        items = _annotated_programs(ctx, p.timeout, p.ids, ann, p.test_style)
    else:
        items = [dataclasses.asdict(f) for f in ctx.read("failures") if f.split == "train"]
    if (p.source in ("human", "shuffled") and p.programs == "annotated") or p.source == "app":
        rows = ann.rows
        notes = {it["task_id"]: {"feedback": rows[it["task_id"]].feedback, "refinement": rows[it["task_id"]].refinement}
                 for it in items}
    elif p.source in ("scripted", "shuffled"):
        notes = _scripted(ctx, p.annotator, p.annotator_seed, items)
    else:
        notes = {tid: {"feedback": text, "refinement": None} for tid, text in _model_feedback(ctx, p.model, items).items()}
    records = [Feedback(it["task_id"], it["program"], it["error"], notes[it["task_id"]]["feedback"],
                        notes[it["task_id"]]["refinement"], p.source) for it in items]
    empty = sum(not r.feedback.strip() for r in records)
    records = [r for r in records if r.feedback.strip()]
    if p.source == "shuffled":
        perm = texts.derangement(len(records), p.shuffle_seed)
        records = [dataclasses.replace(r, feedback=records[q].feedback, refinement=None) for r, q in zip(records, perm)]
    Feedback.save(ctx.dir / Feedback.FILE, records)
    return {"programs": len(items), "with_feedback": len(records), "empty_feedback_dropped": empty}


# -- training -----------------------------------------------------------------------------------
def _human_refinements(ctx: StageContext) -> dict[int, str]:
    """Human (or scripted-annotator) refinements of train tasks, by task id."""
    out = {r.task_id: r.refinement for r in ctx.read("feedback") if r.refinement}
    ann = ctx.source("annotations") if "annotations" in ctx.stage.sources else None
    if ann is not None:
        task_set = ctx.source("tasks")
        out.update({tid: a.refinement for tid, a in ann.rows.items() if task_set.split_of(tid) == "train"})
    return out


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Fine-tune the stage's model on `data`: refine (pi_Refine on input `refine_data`), ilf (pi_theta* on
    input `selected`), gold or human (the baselines, on the `baseline_tasks`: ILF's selected ids or
    every train task with feedback)."""

    train: TrainConfig
    data: str
    baseline_tasks: str = "selected"


def _examples(ctx: StageContext, p: TrainParams) -> list[Any]:
    tasks = ctx.source("tasks").tasks
    if p.data == "refine":
        return [texts.refine_example(tasks[r.task_id], r.old_program, r.feedback, r.refinement)
                for r in ctx.read("refine_data") if r.kept]
    if p.data == "ilf":
        return [texts.finetune_example(tasks[s.task_id], s.completion) for s in ctx.read("selected")]
    if p.baseline_tasks == "selected":
        ids = [r.task_id for r in ctx.read("selected")]
    else:
        ids = [r.task_id for r in ctx.read("feedback")]
    if p.data == "gold":
        return [texts.finetune_example(tasks[t], texts.gold_completion(tasks[t])) for t in ids]
    human = _human_refinements(ctx)
    return [texts.finetune_example(tasks[t], texts.body_of(human[t], tasks[t])) for t in ids if t in human]


def train(ctx: StageContext, p: TrainParams) -> dict[str, Any]:
    """Fine-tune the model on the stage's examples; resumes from the trainer's checkpoints in ctx.dir/train.

    With no examples (e.g. no refinement passed), FINETUNE(pi, {}) = pi: the stage records the base
    model as its output and says so in its summary.
    """
    from ilf_jax.train import train as run_training

    exs = _examples(ctx, p)
    base = _model(ctx)
    if not exs:
        atomic_write_json(ctx.dir / ModelPointer.FILE, ModelPointer(str(base.dir), False).to_json())
        return {"examples": 0, "steps": 0, "trained": False}
    out = ctx.dir / TRAIN_DIR
    out.mkdir(parents=True, exist_ok=True)
    faults.watch_training(ctx.name, out / "metrics.jsonl")
    result = run_training(base.dir, base.tokenizer, exs, p.train, out, progress=ctx.services.progress)
    atomic_write_json(ctx.dir / ModelPointer.FILE, ModelPointer(str(result.model_dir), True).to_json())
    s = result.summary
    return {"examples": len(exs), "steps": result.steps, "first_loss": s.get("first_loss"),
            "final_loss": s.get("final_loss"), "trained": True}


# -- Algorithm 1, steps 3-4 ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SelectParams:
    """Which passing refinement of a task trains pi_theta*: `first` (the lowest sample index) or `random` (one
    of its distinct passing texts, drawn with `seed`, as the reference's dedupe + shuffle + first per task)."""

    rule: str = "first"
    seed: int = 0


def select(ctx: StageContext, p: SelectParams) -> dict[str, Any]:
    """One passing refinement per task, chosen by `p.rule` (selected.jsonl)."""
    import random

    samples = {_by_sample(s): s for s in ctx.read("samples")}
    passing: dict[int, list[Selected]] = {}
    for v in sorted(ctx.read("verdicts"), key=_by_sample):
        text = samples[_by_sample(v)].completion
        if v.passed and text not in {c.completion for c in passing.get(v.task_id, [])}:
            passing.setdefault(v.task_id, []).append(Selected(v.task_id, v.sample, text))
    if p.rule == "first":
        out = [passing[k][0] for k in sorted(passing)]
    else:
        out = [random.Random(f"{p.seed}/{k}").choice(passing[k]) for k in sorted(passing)]
    Selected.save(ctx.dir / Selected.FILE, out)
    return {"tasks_refined": len(ctx.read("feedback")), "selected": len(out)}


@dataclasses.dataclass(frozen=True)
class ChooseParams:
    """Pick one sweep point of a method by `metric` (pass@K or one_plus_correct) on the validation `split`: its
    training stages are `points` (each an input `model:`/`verdicts:`/`summary:` + the stage name); ties go to
    the earlier point."""

    points: tuple[str, ...]
    metric: str
    split: str


def choose_setting(ctx: StageContext, p: ChooseParams) -> dict[str, Any]:
    """The chosen sweep point's model (model.json) and every point's validation score (the summary)."""
    from ilf_jax.metrics.bootstrap import per_task

    scores = {}
    for name in p.points:
        by_task: dict[int, list[int]] = {}
        for v in ctx.read(f"verdicts:{name}"):
            by_task.setdefault(v.task_id, [0, 0])[0] += 1
            by_task[v.task_id][1] += v.passed
        values = per_task({t: (n, c) for t, (n, c) in by_task.items()}, p.metric)
        scores[name] = sum(values.values()) / len(values) if values else 0.0
    best = max(p.points, key=lambda name: (scores[name], -p.points.index(name)))
    atomic_write_json(ctx.dir / ModelPointer.FILE, ctx.read(f"model:{best}").to_json())
    trained = ctx.read(f"summary:{best}")
    return {"chosen": best, "metric": p.metric, "split": p.split, "validation": scores,
            "examples": trained.get("examples"), "trained": trained.get("trained")}


@dataclasses.dataclass(frozen=True)
class PerplexityParams:
    """Per-example perplexity (Figure 3): evaluation batch and the training stages' length limits."""

    batch_size: int
    max_length: int
    max_target_length: int


def perplexity(ctx: StageContext, p: PerplexityParams) -> dict[str, Any]:
    """Per-example perplexity of each training source under the base model (Figure 3; perplexity.jsonl):
    MBPP gold, human and pi_Refine refinements, on the train tasks with feedback."""
    import math

    from ilf_jax.model.store import load_model, load_tokenizer
    from ilf_jax.train import evaluate

    tasks = ctx.source("tasks").tasks
    ids = [r.task_id for r in ctx.read("feedback")]
    human = _human_refinements(ctx)
    groups = {
        "mbpp_gold": [(t, texts.finetune_example(tasks[t], texts.gold_completion(tasks[t]))) for t in ids],
        "human_refinements": [(t, texts.finetune_example(tasks[t], texts.body_of(human[t], tasks[t])))
                              for t in ids if t in human],
        "pi_refine_refinements": [(s.task_id, texts.finetune_example(tasks[s.task_id], s.completion))
                                  for s in ctx.read("selected")],
    }
    base = _model(ctx)
    mesh = ctx.services.mesh()
    config, params = load_model(base.dir, mesh)
    tok = load_tokenizer(base.tokenizer)
    out = []
    for name, items in sorted(groups.items()):
        if not items:
            continue
        nll = evaluate(params, config, tok, [e for _, e in items], p.batch_size,
                       max_length=p.max_length, max_target_length=p.max_target_length, mesh=mesh)
        out += [Perplexity(name, tid, float(v), float(math.exp(min(v, 50.0)))) for (tid, _), v in zip(items, nll)]
    Perplexity.save(ctx.dir / Perplexity.FILE, out)
    return {name: len(items) for name, items in groups.items()}
