"""`ilf demo [--run-dir DIR] [--seed S] [--config YAML] [key=value ...]`: ILF end to end on CPU, no download.

Runs the pipeline of configs/demo.yaml (what `ilf run configs/demo.yaml` runs): the base model is
made by its first stages (corpus, tokenizer, pretraining from random weights; `ilf_jax.demo.stages`),
then ILF on the generated task family with the scripted annotator; prints the Table 4-style
comparison on the held-out test tasks. Running it again resumes or reuses the finished work; the
same seed gives the same table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, Sequence

CONFIG_NAME = "demo.yaml"


def default_config() -> pathlib.Path:
    """configs/demo.yaml of the source tree this package runs from (README installs it editable)."""
    return pathlib.Path(__file__).resolve().parents[2] / "configs" / CONFIG_NAME


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config values, e.g. sampling.n=2 demo.corpus.n_docs=4000")
    parser.add_argument("--run-dir", default=None, help="run directory (default: the config's, runs/demo)")
    parser.add_argument("--seed", type=int, default=None, help="one seed for tasks, corpus, model, sampling, annotator")
    parser.add_argument("--config", default=None, help=f"demo YAML (default: configs/{CONFIG_NAME})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def demo_config(path: str | pathlib.Path | None = None, overrides: Sequence[str] = (), run_dir: str | None = None,
                seed: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(demo section, raw pipeline config) from the YAML, overrides, run dir and seed (one seed drives
    the task family, corpus, weights, sampling, annotator and training)."""
    from ilf_jax.configfile import apply_overrides, load_yaml
    from ilf_jax.demo.stages import demo_section

    path = path or default_config()
    raw = apply_overrides({"demo": {}, **load_yaml(path)}, overrides)
    if seed is not None:
        raw["demo"]["seed"] = seed
    demo = demo_section(raw["demo"], str(path))
    s = demo.seed
    raw.setdefault("tasks", {}).setdefault("factory_args", {})["seed"] = s
    raw.setdefault("sampling", {})["seed"] = s
    fb = raw.setdefault("feedback", {})
    fb["annotator_seed"] = s
    fb["shuffle_seed"] = s
    for section in ("refiner", "finetune"):
        raw.setdefault(section, {}).setdefault("train", {})["seed"] = s
    if run_dir is not None:
        raw["run_dir"] = run_dir
    return demo, raw


def run(args: argparse.Namespace) -> int:
    from ilf_jax.pipeline import report
    from ilf_jax.pipeline.config import resolve
    from ilf_jax.pipeline.run import execute, open_run

    t0 = time.time()
    demo, raw = demo_config(args.config, args.overrides, args.run_dir, args.seed)
    cfg = resolve(raw, pathlib.Path.cwd())
    run_dir = pathlib.Path(cfg.run_dir)
    print(f"ilf demo: run directory {run_dir} (seed {demo.seed})", flush=True)
    opened = open_run(cfg, progress=not args.no_progress)
    print(f"ilf demo: {len(opened.stages)} pipeline stages "
          f"({', '.join(f'{k} {len(v)}' for k, v in opened.services.task_set.splits.items())} tasks)", flush=True)
    execute(opened)
    res = json.loads((run_dir / report.RESULTS).read_text())
    sys.stdout.write(summary_text(res, run_dir, time.time() - t0))
    return 0


def feedback_annotations(res: dict[str, Any]) -> int:
    """Feedback annotations ILF used: scripted-annotator notes on pi_Refine's data plus on the train failures."""
    rnd = res["table3"][0]
    return int(rnd["refine_data"].get("kept", 0)) + int(rnd["feedback"].get("with_feedback", 0))


def summary_text(res: dict[str, Any], run_dir: pathlib.Path, seconds: float | None = None) -> str:
    """The closing table: every method's pass@1 / pass@10 on the held-out tasks, data used, paths."""
    from ilf_jax.pipeline import report

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:5.1f}%"

    n = res["samples_per_task"]["evaluation"]
    rows = res["table4"]
    rnd = res["table3"][0]
    lines = ["", f"ILF on the held-out test tasks ({res['tasks']['test']} tasks, {n} samples each):", "",
             f"{'method':<12} {'feedback':<20} {'fine-tuning data':<24} {'pass@1':>7} {'pass@10':>8} {'examples':>9}"]
    for r in rows:
        ex = "-" if r["trained_on"] is None else str(r["trained_on"])
        lines.append(f"{r['name']:<12} {r['feedback']:<20} {r['data']:<24} {pct(r.get('pass@1')):>7} "
                     f"{pct(r.get('pass@10')):>8} {ex:>9}")
    by = {r["name"]: r for r in rows}
    if "ilf" in by and "zero_shot" in by and by["ilf"].get("pass@1") is not None:
        gain = 100 * (by["ilf"]["pass@1"] - by["zero_shot"]["pass@1"])
        lines.append(f"\nILF vs zero-shot base: {gain:+.1f} points pass@1.")
    col, fb = rnd["collect"], rnd["feedback"]
    lines.append(
        f"Feedback annotations used by ILF: {feedback_annotations(res)} "
        f"({rnd['refine_data'].get('kept', 0)} to train pi_Refine on the refine split, "
        f"{fb.get('with_feedback', 0)} on train-split failures); {col.get('failing_tasks', 0)} of "
        f"{col.get('tasks', 0)} refine/train tasks had no correct base sample; "
        f"{rnd['selected']} passing refinements fine-tuned pi_theta*.")
    lines.append(f"Report: {run_dir / report.REPORT}")
    lines.append(f"Results: {run_dir / report.RESULTS}")
    lines.append(f"Plots: {run_dir / report.PLOTS}/")
    if seconds is not None:
        lines.append(f"Done in {seconds / 60:.1f} min.")
    return "\n".join(lines) + "\n"
