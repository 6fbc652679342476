"""The run's report: Table 4/2/3-style numbers from verdict files, plots, `results.json` and `report.md`."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import statistics
from typing import Any, Iterable, Sequence

from ilf_jax.jsonl import atomic_write_json, atomic_write_text, read_json, write_jsonl
from ilf_jax.metrics import intervals, paired_differences, pass_at_k_table
from ilf_jax.pipeline.engine import StageContext
from ilf_jax.processes import is_writer

REPORT, RESULTS, METRICS, PLOTS, TB = "report.md", "results.json", "metrics.jsonl", "plots", "tb"
TABLE4_HEADER = "| method | feedback | fine-tuning data | pass@1 | pass@10 | 1+ correct | tasks |"


def counts(verdicts: Iterable[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """{task_id: (samples, passing samples)}."""
    out: dict[int, list[int]] = {}
    for v in verdicts:
        n_c = out.setdefault(v["task_id"], [0, 0])
        n_c[0] += 1
        n_c[1] += bool(v["passed"])
    return {k: (n, c) for k, (n, c) in out.items()}


def scores(task_counts: dict[int, tuple[int, int]], ks: Sequence[int]) -> dict[str, float | None]:
    """pass@k for each k (None where k exceeds the samples per task), 1+ correct and the task count."""
    if not task_counts:
        return {**{f"pass@{k}": None for k in ks}, "one_plus_correct": None, "tasks": 0}
    n_min = min(n for n, _ in task_counts.values())
    table = pass_at_k_table(task_counts, [k for k in ks if k <= n_min])
    return {**{f"pass@{k}": table.get(f"pass@{k}") for k in ks}, "one_plus_correct": table["one_plus_correct"],
            "tasks": int(table["tasks"])}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """Confidence intervals: percentile bootstrap over tasks with `samples` resamples, seeded, at `level`."""

    seed: int = 0
    samples: int = 10_000
    level: float = 0.95


def _metrics(task_counts: dict[int, tuple[int, int]], ks: Sequence[int]) -> list[str]:
    """The metrics estimable from these counts: pass@k for k up to the fewest samples of a task, 1+ correct."""
    n_min = min(n for n, _ in task_counts.values())
    return [f"pass@{k}" for k in ks if k <= n_min] + ["one_plus_correct"]


def uncertainty(task_counts: dict[int, tuple[int, int]], baseline: dict[int, tuple[int, int]] | None,
                ks: Sequence[int], b: Bootstrap) -> dict[str, Any]:
    """`ci`: each estimable metric's bootstrap interval [low, high]; `vs_zero_shot` (with a `baseline` on the same
    tasks): the paired difference (method - baseline) and its interval."""
    if not task_counts:
        return {"ci": {}, "vs_zero_shot": None}
    metrics = _metrics(task_counts, ks)
    ci = intervals(task_counts, metrics, seed=b.seed, n_boot=b.samples, level=b.level)
    out: dict[str, Any] = {"ci": {m: [v.low, v.high] for m, v in ci.items()}, "vs_zero_shot": None}
    if baseline is not None and set(baseline) == set(task_counts):
        metrics = [m for m in metrics if m in _metrics(baseline, ks)]
        diff = paired_differences(task_counts, baseline, metrics, seed=b.seed, n_boot=b.samples, level=b.level)
        out["vs_zero_shot"] = {m: {"diff": v.value, "low": v.low, "high": v.high} for m, v in diff.items()}
    return out


def _cell(row: dict[str, Any], metric: str) -> str:
    """A metric with its interval, e.g. `36.0% [30.2, 41.9]`."""
    ci = row.get("ci", {}).get(metric)
    return _pct(row.get(metric)) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _points(d: dict[str, float] | None) -> str:
    """A paired difference in points with its interval, e.g. `+3.2 [-1.0, +7.5]`."""
    return "n/a" if d is None else f"{100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


@dataclasses.dataclass(frozen=True)
class Method:
    """A model evaluated on the test split: its label, its feedback and data, and the stage that made it."""

    name: str
    feedback: str
    data: str
    train_stage: str | None  # None: the base model


@dataclasses.dataclass(frozen=True)
class ReportParams:
    """What the report shows: pass@k for `ks`, the evaluated `methods`, `rounds` ILF rounds, the
    leakage-guard setting, the samples per test task (`n`), the intervals' bootstrap, and `table1`: whether the
    base model's collection samples and its test samples were drawn alike (then Table 1 pools them)."""

    ks: tuple[int, ...]
    methods: tuple[Method, ...]
    rounds: int
    allow_test: bool
    n: int
    bootstrap: Bootstrap = Bootstrap()
    table1: bool = False


def _selection(summary: dict[str, Any]) -> dict[str, Any] | None:
    """A method's sweep choice on the validation split (`sweep.select_on`), from its choose stage's summary."""
    return {k: summary[k] for k in ("chosen", "metric", "split", "validation")} if "chosen" in summary else None


def summary_input(stage: str) -> str:
    """The report's input name for a stage's summary (the report reads every stage's)."""
    return f"summary:{stage}"


def results(ctx: StageContext, p: ReportParams) -> dict[str, Any]:
    """Every number of the report, as a JSON-ready mapping."""
    ks = list(p.ks)

    def verdicts(name: str) -> list[dict[str, Any]]:
        return [dataclasses.asdict(v) for v in ctx.read(name)]

    def summary(stage: str) -> dict[str, Any]:
        return ctx.read(summary_input(stage))

    def scored(task_counts: dict[int, tuple[int, int]], baseline: dict[int, tuple[int, int]] | None) -> dict[str, Any]:
        return {**scores(task_counts, ks), **uncertainty(task_counts, baseline, ks, p.bootstrap)}

    by_method = {m.name: counts(verdicts(f"eval.{m.name}")) for m in p.methods}
    zero = by_method.get("zero_shot")
    table4 = [{**dataclasses.asdict(m), **scored(by_method[m.name], None if m.name == "zero_shot" else zero),
               "trained_on": summary(m.train_stage).get("examples") if m.train_stage else None,
               "trained": summary(m.train_stage).get("trained") if m.train_stage else None,
               "selection": _selection(summary(m.train_stage)) if m.train_stage else None}
              for m in p.methods]
    table2 = {kind: scored(counts(verdicts(f"fewshot.{kind}")), None)
              for kind in ("relevant", "unrelated") if ctx.has(f"fewshot.{kind}")}
    he = {m.name: counts(verdicts(f"humaneval.{m.name}")) for m in p.methods if ctx.has(f"humaneval.{m.name}")}
    humaneval = [{"name": name, **scored(c, None if name == "zero_shot" else he.get("zero_shot"))} for name, c in he.items()]
    table1 = None
    if p.table1 and zero is not None:  # zero-shot on every sampled MBPP task: the collection splits + the test split
        pooled = {**counts(verdicts("r1.execute_base")), **zero}
        table1 = {**scored(pooled, None), "splits": sorted(s for s, ids in ctx.source("tasks").splits.items()
                                                           if set(ids) & set(pooled))}
    rounds = []
    for r in range(1, p.rounds + 1):
        R = f"r{r}"
        rounds.append({
            "round": r,
            "base_on_collect_splits": scores(counts(verdicts(f"{R}.execute_base")), ks),
            "pi_refine_on_train": scores(counts(verdicts(f"{R}.execute_refinements")), ks),
            "collect": summary(f"{R}.collect"),
            "refine_data": summary(f"{R}.refine_data"),
            "feedback": summary(f"{R}.feedback"),
            "selected": summary(f"{R}.select").get("selected"),
        })
        rounds[-1]["feedback_annotations"] = (rounds[-1]["refine_data"].get("kept", 0)
                                              + rounds[-1]["feedback"].get("with_feedback", 0))
    ann = ctx.source("annotations") if "annotations" in ctx.stage.sources else None
    ppl: dict[str, Any] = {}
    if ctx.has("perplexity"):
        by_source: dict[str, list[float]] = {}
        for rec in ctx.read("perplexity"):
            by_source.setdefault(rec.source, []).append(rec.perplexity)
        ppl = {s: {"n": len(v), "mean": statistics.fmean(v), "median": statistics.median(v)} for s, v in sorted(by_source.items())}
    skipped = {split: list(ids) for split, ids in ctx.source("tasks").skipped.items() if ids}
    return {
        **({"skipped_tasks": skipped} if skipped else {}),  # tasks.def_match=reference's dropped tasks
        "table1": table1,
        "table4": table4,
        "humaneval": humaneval,
        "table2": table2,
        "table3": rounds,
        "perplexity": ppl,
        "leakage": {"excluded_test_annotations": len(ann.excluded_test_ids) if ann else 0,
                    "excluded_test_ids": list(ann.excluded_test_ids) if ann else [],
                    "allow_test_annotations": p.allow_test,
                    "test_annotations_used": rounds[0]["refine_data"].get("test_annotations_used", 0)},
        "tasks": {s: len(ids) for s, ids in ctx.source("tasks").splits.items()},
        "samples_per_task": {"evaluation": p.n},
        "bootstrap": dataclasses.asdict(p.bootstrap),
    }


def markdown(res: dict[str, Any]) -> str:
    """report.md: the tables and the plots."""
    boot = res["bootstrap"]
    lines = ["# ILF run report", "",
             f"Tasks per split: {', '.join(f'{k} {v}' for k, v in res['tasks'].items())}; "
             f"{res['samples_per_task']['evaluation']} samples per test task.", "",
             f"Brackets: {100 * boot['level']:.0f}% bootstrap confidence intervals over tasks ({boot['samples']} "
             f"resamples, seed {boot['seed']}).", ""]
    if res["table1"]:
        t1 = res["table1"]
        lines += ["## Table 1: zero-shot on all of MBPP (every sampled task)", "",
                  "| splits | pass@1 | pass@10 | 1+ correct | tasks |", "|---|---|---|---|---|",
                  f"| {' + '.join(t1['splits'])} | {_cell(t1, 'pass@1')} | {_cell(t1, 'pass@10')} | "
                  f"{_cell(t1, 'one_plus_correct')} | {t1['tasks']} |", ""]
    else:
        lines += ["Table 1 (zero-shot on all of MBPP) is left out: it needs zero-shot on the test split and the "
                  "collection samples drawn with the same settings as the test samples (no `evaluation.sampling` overlay).", ""]
    lines += ["## Table 4: pass rates on the test split", "", TABLE4_HEADER, "|---|---|---|---|---|---|---|"]
    for row in res["table4"]:
        note = " (no training data: base model)" if row["trained"] is False else ""
        if row.get("selection"):
            note += f" (`{row['selection']['chosen']}`, chosen on {row['selection']['split']})"
        lines.append(f"| {row['name']}{note} | {row['feedback']} | {row['data']} | {_cell(row, 'pass@1')} | "
                     f"{_cell(row, 'pass@10')} | {_cell(row, 'one_plus_correct')} | {row['tasks']} |")
    paired = [row for row in res["table4"] if row.get("vs_zero_shot")]
    if paired:
        lines += ["", "Paired difference against zero-shot (points, method - zero-shot on the same tasks, with its interval):",
                  "", "| method | pass@1 | pass@10 | 1+ correct |", "|---|---|---|---|"]
        lines += [f"| {row['name']} | " + " | ".join(_points(row["vs_zero_shot"].get(m))
                                                    for m in ("pass@1", "pass@10", "one_plus_correct")) + " |" for row in paired]
    if res.get("humaneval"):
        lines += ["", "## HumanEval: the same models, sampler, executor and pass@k", "",
                  "| method | pass@1 | pass@10 | 1+ correct | problems | pass@1 vs zero-shot (points) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {row['name']} | {_cell(row, 'pass@1')} | {_cell(row, 'pass@10')} | {_cell(row, 'one_plus_correct')} | "
                  f"{row['tasks']} | {_points((row['vs_zero_shot'] or {}).get('pass@1')) if row['name'] != 'zero_shot' else '-'} |"
                  for row in res["humaneval"]]
    chosen = [row for row in res["table4"] if row.get("selection")]
    if chosen:
        lines += ["", "## Sweep: settings chosen on the validation split", ""]
        for row in chosen:
            sel = row["selection"]
            scores = ", ".join(f"{name}{' (chosen)' if name == sel['chosen'] else ''} {_pct(v)}"
                               for name, v in sel["validation"].items())
            lines.append(f"- {row['name']}: {sel['metric']} on the {sel['split']} split chose `{sel['chosen']}`; only it "
                         f"was evaluated on the test split. Validation: {scores}.")
    lines += ["", "## Table 2: few-shot refinement without fine-tuning (base model, train tasks with feedback)", ""]
    if res["table2"]:
        lines += ["| feedback | pass@1 | pass@10 | 1+ correct | tasks |", "|---|---|---|---|---|"]
        for kind, row in res["table2"].items():
            lines.append(f"| {kind} | {_cell(row, 'pass@1')} | {_cell(row, 'pass@10')} | {_cell(row, 'one_plus_correct')} | {row['tasks']} |")
    else:
        lines.append("Not run (add `fewshot_refine` to `baselines`).")
    lines += ["", "## Table 3: pi_Refine on the train tasks, and the base model on the collection splits", "",
              "| round | model | pass@1 | pass@10 | 1+ correct | tasks |", "|---|---|---|---|---|---|"]
    for rnd in res["table3"]:
        for label, key in (("pi_Refine (train tasks)", "pi_refine_on_train"), ("base (collection splits)", "base_on_collect_splits")):
            row = rnd[key]
            lines.append(f"| {rnd['round']} | {label} | {_pct(row.get('pass@1'))} | {_pct(row.get('pass@10'))} | "
                         f"{_pct(row['one_plus_correct'])} | {row['tasks']} |")
    lines += ["", "## Data", ""]
    for rnd in res["table3"]:
        rd, fb, col = rnd["refine_data"], rnd["feedback"], rnd["collect"]
        lines.append(f"- Round {rnd['round']}: {col.get('failing_tasks', 0)} of {col.get('tasks', 0)} sampled tasks had "
                     f"no correct sample; pi_Refine data: {rd.get('kept', 0)} of {rd.get('triples', 0)} triples kept by "
                     f"the annotation filter; {fb.get('with_feedback', 0)} train programs with feedback; "
                     f"{rnd['selected']} passing refinements selected (one per task).")
        lines.append(f"- Round {rnd['round']}: feedback annotations used by ILF: {rnd['feedback_annotations']} "
                     f"({rd.get('kept', 0)} training pi_Refine, {fb.get('with_feedback', 0)} on train-split failures).")
    leak = res["leakage"]
    lines.append(f"- Leakage guard: {leak['excluded_test_annotations']} annotations in the test split were excluded "
                 f"from training (allow_test_annotations={str(leak['allow_test_annotations']).lower()}; "
                 f"{leak['test_annotations_used']} test-split annotations used).")
    if res.get("skipped_tasks"):
        lines.append("- Skipped as the reference skips them (its `def name\\(.*\\):` regex fails on the gold code; "
                     "tasks.def_match=reference): " + "; ".join(f"{split} {len(ids)} ({', '.join(map(str, ids))})"
                                                                for split, ids in res["skipped_tasks"].items()) + ".")
    if res["perplexity"]:
        lines += ["", "## Figure 3: perplexity of training sources under the base model", "",
                  "| source | examples | mean | median |", "|---|---|---|---|"]
        lines += [f"| {s} | {v['n']} | {v['mean']:.2f} | {v['median']:.2f} |" for s, v in res["perplexity"].items()]
    lines += ["", "## Plots", "", f"![pass@k per method]({PLOTS}/pass_at_k.png)", "",
              f"![perplexity of training sources]({PLOTS}/perplexity.png)", "",
              f"![training loss]({PLOTS}/loss.png)", ""]
    return "\n".join(lines)


def _plots(out: pathlib.Path, res: dict[str, Any], losses: dict[str, list[tuple[int, float]]],
           ppl: dict[str, list[float]], ks: Sequence[int]) -> None:
    """pass_at_k.png, perplexity.png, loss.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig: Any, ax: Any, name: str, legend: bool, **legend_args: Any) -> None:
        if legend:
            ax.legend(**legend_args)
        fig.tight_layout()
        fig.savefig(out / name, metadata={"Software": None})
        plt.close(fig)

    out.mkdir(parents=True, exist_ok=True)
    rows = res["table4"]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 3.5))
    width = 0.8 / max(1, len(ks))
    for i, k in enumerate(ks):
        value = [100 * (r.get(f"pass@{k}") or 0) for r in rows]
        ci = [r.get("ci", {}).get(f"pass@{k}") for r in rows]
        err = [[v - 100 * c[0] if c else 0 for v, c in zip(value, ci)], [100 * c[1] - v if c else 0 for v, c in zip(value, ci)]]
        ax.bar([j + i * width for j in range(len(rows))], value, width, yerr=err, capsize=3, label=f"pass@{k}")
    ax.set_xticks([j + width * (len(ks) - 1) / 2 for j in range(len(rows))], [r["name"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel(f"% of test tasks ({100 * res['bootstrap']['level']:.0f}% CI)")
    save(fig, ax, "pass_at_k.png", True)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for source, values in sorted(ppl.items()):
        ax.hist(values, bins=20, alpha=0.5, label=source)
    ax.set_xlabel("perplexity under the base model")
    ax.set_ylabel("examples")
    save(fig, ax, "perplexity.png", bool(ppl))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in sorted(losses.items()):
        ax.plot([s for s, _ in curve], [v for _, v in curve], marker="." if len(curve) < 20 else None, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    save(fig, ax, "loss.png", bool(losses), fontsize="small")


def _tensorboard(path: pathlib.Path, res: dict[str, Any], ks: Sequence[int]) -> None:
    """Evaluation scalars per method (rewritten from scratch on each report)."""
    from tensorboardX import SummaryWriter

    shutil.rmtree(path, ignore_errors=True)
    with SummaryWriter(str(path)) as writer:
        for row in res["table4"]:
            for key in [f"pass@{k}" for k in ks] + ["one_plus_correct"]:
                if row.get(key) is not None:
                    writer.add_scalar(f"eval/{row['name']}/{key}", row[key], 0)


def report(ctx: StageContext, p: ReportParams) -> dict[str, Any]:
    """Write results.json, report.md, plots/, metrics.jsonl and tb/ in the run directory."""
    run_dir, ks = ctx.run_dir, list(p.ks)
    res = results(ctx, p)
    losses = {}
    for name in ctx.stage.inputs:
        if name.startswith("trainlog:") and (curve := ctx.read(name)) is not None:
            losses[name.partition(":")[2]] = curve
    ppl: dict[str, list[float]] = {}
    if ctx.has("perplexity"):
        for rec in ctx.read("perplexity"):
            ppl.setdefault(rec.source, []).append(rec.perplexity)
    if is_writer():
        _plots(run_dir / PLOTS, res, losses, ppl, ks)
    atomic_write_json(run_dir / RESULTS, res)
    atomic_write_text(run_dir / REPORT, markdown(res))
    summaries = sorted((n.partition(":")[2], n) for n in ctx.stage.inputs if n.startswith("summary:"))
    write_jsonl(run_dir / METRICS, [{"stage": stage, **ctx.read(name)} for stage, name in summaries]
                + [{"stage": "report", "method": r["name"], **{k: r.get(k) for k in [f"pass@{k}" for k in ks] + ["one_plus_correct"]}}
                   for r in res["table4"]])
    if is_writer():
        _tensorboard(run_dir / TB, res, ks)
    return {"methods": len(res["table4"]), **{r["name"]: r.get("pass@1") for r in res["table4"]}}


def print_table(run_dir: pathlib.Path) -> str:
    """The Table 4 rows of a finished run, as text (for the CLI)."""
    res = read_json(run_dir / RESULTS)
    return "\n".join(f"{r['name']:<28} pass@1 {_cell(r, 'pass@1'):>20}  pass@10 {_cell(r, 'pass@10'):>20}"
                     for r in res["table4"])
