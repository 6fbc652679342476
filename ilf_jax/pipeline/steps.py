"""The stage bodies: sample, execute, collect failures, attach feedback, train, select, perplexity.

Each takes a StageContext, reads its inputs from files (its dependencies' folders, the run's
inputs) and writes its outputs under `ctx.dir`. Record stages append to a RecordLog as work
finishes and skip keys already there, so a killed stage resumes without losing or repeating
work; samples are keyed by task id (the sampler's key id), so a resumed stage draws the same ones.

Multi-process runs: every process runs every stage. Sampling and training are collective (SPMD)
calls; program execution is split: each process runs its share of the programs on its own CPUs
and the verdicts are merged with `allgather_objects`, so every sample gets exactly one verdict.
Only process 0 writes files (see `records`).
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Iterable, Sequence

from ilf_jax.data.annotations import keep_annotation, levenshtein
from ilf_jax.data.formats import truncate_completion
from ilf_jax.errors import IlfError
from ilf_jax.pipeline import faults, schema, texts
from ilf_jax.pipeline.engine import StageContext
from ilf_jax.pipeline.records import RecordLog, atomic_write_json, is_writer, read_json, read_jsonl, write_jsonl
from ilf_jax.pipeline.sources import import_callable

SAMPLES, VERDICTS, FAILURES, REFINE_DATA, FEEDBACK, SELECTED, PERPLEXITY = (
    "samples.jsonl", "verdicts.jsonl", "failures.jsonl", "refine_data.jsonl", "feedback.jsonl",
    "selected.jsonl", "perplexity.jsonl")
TRAIN_DIR = "train"
MODEL_POINTER = "model.json"
_EXEC_FLUSH = 8  # results appended per fsync
_EXEC_ROUND = 32  # programs per process between merges, in multi-process runs


def _processes() -> int:
    import sys

    jax = sys.modules.get("jax")
    return 1 if jax is None else jax.process_count()


def _agreed(value: Any) -> Any:
    """`value`, checked to be the same on every process of a multi-process run."""
    if _processes() == 1:
        return value
    from ilf_jax.parallel.distributed import agree

    return agree(value)


def _run_shared(ex: Any, jobs: Sequence[Any]) -> list[Any]:
    """Results of `jobs` in order: each process runs its share on its own CPUs, then all merge."""
    from ilf_jax.parallel.distributed import allgather_objects, process_share

    share = process_share(len(jobs))
    mine = ex.run([jobs[i] for i in share])
    return [r for part in allgather_objects(mine) for r in part]


def _by_sample(rec: dict[str, Any]) -> tuple[int, int]:
    return rec["task_id"], rec["sample"]


def _by_task(rec: dict[str, Any]) -> int:
    return rec["task_id"]


def _bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="it", dynamic_ncols=True, disable=not enabled or _processes() > 1 and not is_writer())


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


# -- sampling and execution ------------------------------------------------------------------------
def sample_prompts(ctx: StageContext, model_dir: pathlib.Path, prompts: Sequence[tuple[int, str]],
                   sampling: dict[str, Any], partial: str = "samples.partial.jsonl") -> list[dict[str, Any]]:
    """n completions per (task_id, prompt), appended a chunk of prompts at a time; returns all records."""
    from ilf_jax.sample import SamplingConfig

    knobs = {k: v for k, v in sampling.items() if k != "chunk"}
    cfg = SamplingConfig(**knobs)
    n = cfg.n
    with RecordLog(ctx.dir / partial, _by_sample, ctx.stage.name) as log:
        todo = [(tid, p) for tid, p in prompts if any((tid, s) not in log for s in range(n))]
        _agreed([tid for tid, _ in todo])
        if todo:
            sampler = ctx.resources.sampler(model_dir)
            done_rows = (len(prompts) - len(todo)) * n
            with _bar(ctx.resources.progress, len(prompts) * n, done_rows, ctx.stage.name) as bar:
                for chunk in _chunks(todo, sampling["chunk"]):
                    outs = sampler.sample([p for _, p in chunk], cfg, key_ids=[tid for tid, _ in chunk], postprocess=truncate_completion)
                    truncated = {chunk[i][0] for i in sampler.truncated}
                    log.append({"task_id": chunk[c.prompt_index][0], "sample": c.sample, "completion": c.text,
                                "finish_reason": c.finish_reason, "num_tokens": c.num_tokens,
                                "prompt_truncated": chunk[c.prompt_index][0] in truncated} for c in outs)
                    bar.update(len(outs))
        return [log.records[k] for k in sorted(log.records)]


def sample_stage(model_dir: Callable[[StageContext], pathlib.Path],
                 prompts: Callable[[StageContext], list[tuple[int, str]]], sampling: dict[str, Any]) -> Callable[[StageContext], dict[str, Any]]:
    """A stage that samples `prompts` from a model and writes samples.jsonl."""
    def run(ctx: StageContext) -> dict[str, Any]:
        items = prompts(ctx)
        records = sample_prompts(ctx, model_dir(ctx), items, sampling)
        write_jsonl(ctx.dir / SAMPLES, records)
        schema.check_file(ctx.dir / SAMPLES, "sample")
        return {"prompts": len(items), "samples": len(records),
                "finished_by_eos_or_stop": sum(r["finish_reason"] != "length" for r in records),
                "truncated_prompts": len({r["task_id"] for r in records if r["prompt_truncated"]})}
    return run


def execute_stage(samples_from: str) -> Callable[[StageContext], dict[str, Any]]:
    """A stage that runs every sample of stage `samples_from` against its task's tests (verdicts.jsonl)."""
    def run(ctx: StageContext) -> dict[str, Any]:
        from ilf_jax.execute import Executor, job_for_program

        res = ctx.resources
        samples = read_jsonl(ctx.dep(samples_from) / SAMPLES)
        with RecordLog(ctx.dir / "verdicts.partial.jsonl", _by_sample, ctx.stage.name) as log:
            todo = [s for s in samples if _by_sample(s) not in log]
            _agreed([_by_sample(s) for s in todo])
            if todo and _processes() > 1:
                jobs = [job_for_program(res.task(s["task_id"]), texts.program_of(res.task(s["task_id"]), s["completion"]),
                                        f"{s['task_id']}/{s['sample']}") for s in todo]
                ex_cfg = res.config["executor"]
                with Executor(ex_cfg["workers"], ex_cfg["timeout"]) as ex, \
                        _bar(res.progress, len(samples), len(samples) - len(todo), ctx.stage.name) as bar:
                    for batch in _chunks(jobs, _EXEC_ROUND * _processes()):
                        results = _run_shared(ex, batch)
                        log.append([{"task_id": int(r.id.split("/")[0]), "sample": int(r.id.split("/")[1]),
                                     "verdict": r.verdict, "passed": r.passed, "error": r.error} for r in results])
                        bar.update(len(results))
            elif todo:
                jobs = [job_for_program(res.task(s["task_id"]), texts.program_of(res.task(s["task_id"]), s["completion"]),
                                        f"{s['task_id']}/{s['sample']}") for s in todo]
                ex_cfg = res.config["executor"]
                pending: list[dict[str, Any]] = []
                with Executor(ex_cfg["workers"], ex_cfg["timeout"]) as ex, \
                        _bar(res.progress, len(samples), len(samples) - len(todo), ctx.stage.name) as bar:
                    for r in ex.imap(jobs):
                        tid, smp = (int(x) for x in r.id.split("/"))
                        pending.append({"task_id": tid, "sample": smp, "verdict": r.verdict, "passed": r.passed,
                                        "error": r.error})
                        bar.update(1)
                        if len(pending) >= _EXEC_FLUSH:
                            log.append(pending)
                            pending = []
                    log.append(pending)
            records = log.finalize(ctx.dir / VERDICTS)
        schema.check_file(ctx.dir / VERDICTS, "verdict")
        return {"programs": len(records), "passed": sum(r["passed"] for r in records),
                "tasks_with_a_pass": len({r["task_id"] for r in records if r["passed"]})}
    return run


def run_programs(ctx: StageContext, programs: Sequence[tuple[str, int, str]]) -> dict[str, Any]:
    """Verdicts of (id, task_id, full program) triples, executed in one pool (small, unlogged batches)."""
    from ilf_jax.execute import Executor, job_for_program

    if not programs:
        return {}
    ex_cfg = ctx.resources.config["executor"]
    jobs = [job_for_program(ctx.resources.task(tid), prog, pid) for pid, tid, prog in programs]
    with Executor(ex_cfg["workers"], ex_cfg["timeout"]) as ex:
        return {r.id: r for r in (ex.run(jobs) if _processes() == 1 else _run_shared(ex, jobs))}


# -- Algorithm 1, steps 1-3 -------------------------------------------------------------------------
def collect_stage(samples_from: str, verdicts_from: str) -> Callable[[StageContext], dict[str, Any]]:
    """Tasks with no passing sample, each with its first failing program and error (failures.jsonl)."""
    def run(ctx: StageContext) -> dict[str, Any]:
        res = ctx.resources
        samples = {_by_sample(s): s for s in read_jsonl(ctx.dep(samples_from) / SAMPLES)}
        by_task: dict[int, list[dict[str, Any]]] = {}
        for v in read_jsonl(ctx.dep(verdicts_from) / VERDICTS):
            by_task.setdefault(v["task_id"], []).append(v)
        failures = []
        for tid in sorted(by_task):
            verdicts = sorted(by_task[tid], key=lambda v: v["sample"])
            if any(v["passed"] for v in verdicts):
                continue
            first = verdicts[0]
            task = res.task(tid)
            failures.append({"task_id": tid, "split": res.task_set.split_of(tid), "sample": first["sample"],
                             "program": texts.program_of(task, samples[_by_sample(first)]["completion"]),
                             "error": first["error"], "samples": len(verdicts)})
        write_jsonl(ctx.dir / FAILURES, failures)
        schema.check_file(ctx.dir / FAILURES, "failure")
        return {"tasks": len(by_task), "failing_tasks": len(failures),
                "failing_by_split": {s: sum(f["split"] == s for f in failures) for s in ("refine", "train")}}
    return run


def _annotator(ctx: StageContext) -> Callable[..., Any]:
    return import_callable(ctx.resources.config["feedback"]["annotator"], "feedback.annotator")


def _scripted(ctx: StageContext, items: Sequence[dict[str, Any]], partial: str) -> list[dict[str, Any]]:
    """Feedback + refinement from the scripted annotator for each failing program (resumable)."""
    annotate = _annotator(ctx)
    seed = ctx.resources.config["feedback"]["annotator_seed"]
    with RecordLog(ctx.dir / partial, _by_task, ctx.stage.name) as log:
        for it in items:
            if it["task_id"] in log:
                continue
            ann = annotate(ctx.resources.task(it["task_id"]), it["program"], it["error"], seed)
            log.append([{"task_id": it["task_id"], "feedback": ann.feedback if ann else "",
                         "refinement": ann.refinement if ann else None}])
        return [log.records[k] for k in sorted(log.records)]


def _annotations(ctx: StageContext, annotate_from: str | None) -> Any:
    """The human annotations: from the app's stage (`feedback.source: app`) or the annotation file."""
    if annotate_from is None:
        return ctx.resources.annotations
    from ilf_jax.pipeline.app_feedback import app_annotations

    return app_annotations(ctx, annotate_from)


def _annotated_programs(ctx: StageContext, splits: Sequence[str], annotations: Any) -> list[dict[str, Any]]:
    """The annotated (original program, error) of the run's annotation rows in `splits`."""
    res = ctx.resources
    rows = [a for tid, a in sorted(annotations.rows.items()) if res.task_set.split_of(tid) in splits]
    verdicts = run_programs(ctx, [(f"orig/{a.task_id}", a.task_id, a.original) for a in rows])
    return [{"task_id": a.task_id, "program": a.original, "error": verdicts[f"orig/{a.task_id}"].error,
             "original_passed": verdicts[f"orig/{a.task_id}"].passed} for a in rows]


def refine_data_stage(collect_from: str | None, annotate_from: str | None = None) -> Callable[[StageContext], dict[str, Any]]:
    """pi_Refine's data (refine_data.jsonl): (old program, feedback, refinement) triples with the paper's filter.

    From the human annotation file or the app's annotations (refine split; test split too only when
    allowed), else from the scripted annotator on the refine split's failing programs. A triple is kept when its
    refinement passes and Levenshtein(refinement, old) < half the longer of the two.
    """
    def run(ctx: StageContext) -> dict[str, Any]:
        res = ctx.resources
        splits = ["refine"] + (["test"] if res.config["feedback"]["allow_test_annotations"] else [])
        ann = _annotations(ctx, annotate_from)
        if ann is not None:
            items = _annotated_programs(ctx, splits, ann)
            triples = [{**it, "feedback": ann.rows[it["task_id"]].feedback,
                        "refinement": ann.rows[it["task_id"]].refinement, "source": "human"} for it in items]
        else:
            items = [f for f in read_jsonl(ctx.dep(collect_from) / FAILURES) if f["split"] == "refine"]
            notes = {n["task_id"]: n for n in _scripted(ctx, items, "annotator.partial.jsonl")}
            triples = [{"task_id": it["task_id"], "program": it["program"], "error": it["error"],
                        "feedback": notes[it["task_id"]]["feedback"], "refinement": notes[it["task_id"]]["refinement"],
                        "source": "scripted"} for it in items if notes[it["task_id"]]["refinement"]]
        verdicts = run_programs(ctx, [(f"ref/{t['task_id']}", t["task_id"], t["refinement"]) for t in triples])
        out = []
        for t in triples:
            passed = verdicts[f"ref/{t['task_id']}"].passed
            out.append({"task_id": t["task_id"], "old_program": t["program"], "error": t["error"],
                        "feedback": t["feedback"], "refinement": t["refinement"], "source": t["source"],
                        "refinement_passed": passed, "distance": levenshtein(t["refinement"], t["program"]),
                        "kept": keep_annotation(t["refinement"], t["program"], passed) and bool(t["feedback"].strip())})
        write_jsonl(ctx.dir / REFINE_DATA, out)
        schema.check_file(ctx.dir / REFINE_DATA, "refine_data")
        return {"triples": len(out), "kept": sum(r["kept"] for r in out),
                "excluded_test_annotations": len(ann.excluded_test_ids) if ann else 0,
                "test_annotations_used": sum(res.task_set.split_of(r["task_id"]) == "test" and r["kept"] for r in out)}
    return run


def _model_feedback(ctx: StageContext, items: Sequence[dict[str, Any]], refine_from: str) -> dict[int, str]:
    """Feedback written by a model, few-shot prompted with (old program, error, feedback) examples."""
    from ilf_jax.sample import SamplingConfig

    res = ctx.resources
    mcfg = res.config["feedback"]["model"]
    kept = [r for r in read_jsonl(ctx.dep(refine_from) / REFINE_DATA) if r["kept"]]
    shots = [(r["old_program"], r["error"], r["feedback"]) for r in kept[: mcfg["shots"]]]
    if len(shots) < mcfg["shots"]:
        raise IlfError(f"feedback.model.shots={mcfg['shots']}: only {len(shots)} kept pi_Refine examples to show")
    model_dir = pathlib.Path(mcfg["dir"] or res.config["model"]["dir"])
    cfg = SamplingConfig(n=1, temperature=float(mcfg["temperature"]), max_new_tokens=int(mcfg["max_new_tokens"]),
                         seed=res.config["sampling"]["seed"], stop_rule=False,
                         batch_size=res.config["sampling"]["batch_size"])
    with RecordLog(ctx.dir / "model_feedback.partial.jsonl", _by_task, ctx.stage.name) as log:
        todo = [it for it in items if it["task_id"] not in log]
        if todo:
            sampler = res.sampler(model_dir)
            for chunk in _chunks(todo, res.config["sampling"]["chunk"]):
                prompts = [texts.feedback_prompt(shots, it["program"], it["error"]) for it in chunk]
                rows = sampler.generate_tokens(sampler.encode(prompts, cfg), cfg, key_ids=[it["task_id"] for it in chunk])
                tok = sampler.tokenizer
                log.append({"task_id": chunk[r.prompt_index]["task_id"],
                            "feedback": texts.cut_feedback(tok.decode(list(map(int, r.tokens)), skip_special_tokens=False))}
                           for r in rows)
        return {k: v["feedback"] for k, v in log.records.items()}


def feedback_stage(collect_from: str | None, refine_from: str,
                   annotate_from: str | None = None) -> Callable[[StageContext], dict[str, Any]]:
    """Feedback on MBPP_Train failing programs (feedback.jsonl), from humans (the annotation file, or
    the app on this run's failures), a model, the scripted annotator, or human/scripted feedback
    shuffled across tasks (the unrelated-feedback control)."""
    def run(ctx: StageContext) -> dict[str, Any]:
        res = ctx.resources
        fb = res.config["feedback"]
        ann = _annotations(ctx, annotate_from)
        if fb["programs"] == "annotated" or annotate_from is not None:
            items = _annotated_programs(ctx, ["train"], ann)
        else:
            items = [f for f in read_jsonl(ctx.dep(collect_from) / FAILURES) if f["split"] == "train"]
        source = fb["source"]
        human = (source in ("human", "shuffled") and fb["programs"] == "annotated") or annotate_from is not None
        if human:
            notes = {it["task_id"]: {"feedback": ann.rows[it["task_id"]].feedback,
                                     "refinement": ann.rows[it["task_id"]].refinement} for it in items}
        elif source in ("scripted", "shuffled"):
            notes = {n["task_id"]: n for n in _scripted(ctx, items, "annotator.partial.jsonl")}
        else:
            notes = {tid: {"feedback": text, "refinement": None}
                     for tid, text in _model_feedback(ctx, items, refine_from).items()}
        records = [{"task_id": it["task_id"], "old_program": it["program"], "error": it["error"],
                    "feedback": notes[it["task_id"]]["feedback"], "refinement": notes[it["task_id"]]["refinement"],
                    "source": source} for it in items]
        empty = sum(not r["feedback"].strip() for r in records)
        records = [r for r in records if r["feedback"].strip()]
        if source == "shuffled":
            perm = texts.derangement(len(records), fb["shuffle_seed"])
            feedbacks = [records[p]["feedback"] for p in perm]
            records = [{**r, "feedback": f, "refinement": None} for r, f in zip(records, feedbacks)]
        write_jsonl(ctx.dir / FEEDBACK, records)
        schema.check_file(ctx.dir / FEEDBACK, "feedback")
        return {"programs": len(items), "with_feedback": len(records), "empty_feedback_dropped": empty}
    return run


# -- training -----------------------------------------------------------------------------------
def train_stage(base_model: Callable[[StageContext], pathlib.Path],
                examples: Callable[[StageContext], list[Any]], train_cfg: dict[str, Any]) -> Callable[[StageContext], dict[str, Any]]:
    """Fine-tune the base model on `examples`; resumes from the trainer's checkpoints in ctx.dir/train.

    With no examples (e.g. no refinement passed), FINETUNE(pi, {}) = pi: the stage records the base
    model as its output and says so in its summary.
    """
    def run(ctx: StageContext) -> dict[str, Any]:
        from ilf_jax.train import TrainConfig, train

        exs = examples(ctx)
        cfg = TrainConfig.from_dict(train_cfg)
        base = base_model(ctx)
        if not exs:
            atomic_write_json(ctx.dir / MODEL_POINTER, {"model_dir": str(base), "trained": False})
            return {"examples": 0, "steps": 0, "trained": False}
        out = ctx.dir / TRAIN_DIR
        out.mkdir(parents=True, exist_ok=True)
        faults.watch_training(ctx.stage.name, out / "metrics.jsonl")
        result = train(base, ctx.resources.tokenizer_dir(base), exs, cfg, out, progress=ctx.resources.progress)
        atomic_write_json(ctx.dir / MODEL_POINTER, {"model_dir": str(result.model_dir), "trained": True})
        s = result.summary
        return {"examples": len(exs), "steps": result.steps, "first_loss": s.get("first_loss"),
                "final_loss": s.get("final_loss"), "trained": True}
    return run


def model_of(stage: str) -> Callable[[StageContext], pathlib.Path]:
    """The model made by training stage `stage` (its base model when it had nothing to train on)."""
    return lambda ctx: pathlib.Path(read_json(ctx.dep(stage) / MODEL_POINTER)["model_dir"])


# -- Algorithm 1, steps 3-4 ---------------------------------------------------------------------
def select_stage(feedback_from: str, samples_from: str, verdicts_from: str) -> Callable[[StageContext], dict[str, Any]]:
    """One passing refinement per task, the lowest sample index (selected.jsonl)."""
    def run(ctx: StageContext) -> dict[str, Any]:
        samples = {_by_sample(s): s for s in read_jsonl(ctx.dep(samples_from) / SAMPLES)}
        chosen: dict[int, dict[str, Any]] = {}
        for v in sorted(read_jsonl(ctx.dep(verdicts_from) / VERDICTS), key=_by_sample):
            if v["passed"] and v["task_id"] not in chosen:
                chosen[v["task_id"]] = {"task_id": v["task_id"], "sample": v["sample"],
                                        "completion": samples[_by_sample(v)]["completion"]}
        out = [chosen[k] for k in sorted(chosen)]
        write_jsonl(ctx.dir / SELECTED, out)
        schema.check_file(ctx.dir / SELECTED, "selected")
        return {"tasks_refined": len(read_jsonl(ctx.dep(feedback_from) / FEEDBACK)), "selected": len(out)}
    return run


def perplexity_stage(base_model: Callable[[StageContext], pathlib.Path],
                     sets: Callable[[StageContext], dict[str, list[tuple[int, Any]]]], cfg: dict[str, Any]) -> Callable[[StageContext], dict[str, Any]]:
    """Per-example perplexity of each training source under the base model (Figure 3; perplexity.jsonl)."""
    def run(ctx: StageContext) -> dict[str, Any]:
        import math

        from ilf_jax.model.store import load_model, load_tokenizer
        from ilf_jax.train import evaluate

        res = ctx.resources
        groups = sets(ctx)
        base = base_model(ctx)
        mesh = res.mesh()
        config, params = load_model(base, mesh)
        tok = load_tokenizer(res.tokenizer_dir(base))
        out = []
        for name, items in sorted(groups.items()):
            if not items:
                continue
            nll = evaluate(params, config, tok, [e for _, e in items], cfg["batch_size"],
                           max_length=cfg["max_length"], max_target_length=cfg["max_target_length"], mesh=mesh)
            out += [{"source": name, "task_id": tid, "nll": float(v), "perplexity": float(math.exp(min(v, 50.0)))}
                    for (tid, _), v in zip(items, nll)]
        write_jsonl(ctx.dir / PERPLEXITY, out)
        schema.check_file(ctx.dir / PERPLEXITY, "perplexity")
        return {name: len(items) for name, items in groups.items()}
    return run
