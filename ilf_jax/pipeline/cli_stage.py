"""`ilf stage NAME CONFIG [key=value ...]`: run one stage of a run (its dependencies must be done).

`ilf stage list CONFIG` lists the stage names with the stages each depends on.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="stage name, e.g. r1.sample_base, or `list`")
    parser.add_argument("config", help="pipeline YAML, or a run directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config values")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ilf_jax.pipeline.run import config_from, execute, open_run

    if args.name == "list":
        opened = open_run(config_from(args.config, args.overrides), progress=False, check=False)
        for stage in opened.stages:
            print(f"{stage.name}  <- {', '.join(stage.deps) or '(inputs only)'}")
        return 0
    opened = open_run(config_from(args.config, args.overrides), progress=not args.no_progress)
    opened.stage(args.name)
    execute(opened, only=args.name)
    print(f"stage {args.name}: done")
    return 0
