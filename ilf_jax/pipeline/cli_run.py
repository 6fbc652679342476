"""`ilf run CONFIG [key=value ...]`: create or resume a run directory and run every stage of the pipeline.

CONFIG is a pipeline YAML (see configs/paper/, configs/pipeline/) or an existing run directory
(its manifest's config is reused). Finished stages are skipped, an interrupted one resumes,
and a changed config value reruns exactly the stages that depend on it.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline YAML, or a run directory to resume")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config values, e.g. run_dir=runs/x sampling.n=10")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ilf_jax.pipeline import report
    from ilf_jax.pipeline.run import config_from, execute, open_run

    opened = open_run(config_from(args.config, args.overrides), progress=not args.no_progress)
    execute(opened)
    print(report.print_table(opened.dir))
    print(f"report: {opened.dir / report.REPORT}")
    return 0
