"""`ilf status RUN_DIR [key=value ...]`: which stages of a run are done, partial, stale or pending."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (or a pipeline YAML)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides to compare against")


def run(args: argparse.Namespace) -> int:
    from ilf_jax.pipeline import app_feedback, engine
    from ilf_jax.pipeline.run import config_from, open_run

    opened = open_run(config_from(args.run_dir, args.overrides), progress=False, check=False)
    rows = engine.status(opened.stages, opened.dir, opened.ids)
    width = max(len(name) for name, _ in rows)
    for name, state in rows:
        summary = ""
        if state == "done":
            summary = json.dumps((engine.read_state(opened.dir, name) or {}).get("summary", {}), sort_keys=True)
        print(f"{name:<{width}}  {state:<7}  {summary}")
    done = sum(st == "done" for _, st in rows)
    print(f"{done}/{len(rows)} stages done in {opened.dir}")
    for line in app_feedback.progress_lines(opened.dir):
        print(line)
    return 0
