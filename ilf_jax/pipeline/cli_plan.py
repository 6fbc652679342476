"""`ilf plan CONFIG [key=value ...]`: print a run's stages and its up-front counts without loading a model.

Tasks per split (and the ones the reference's `def` regex skips), annotation rows kept and left out,
each training stage's examples and optimizer updates, each sampling stage's samples, and estimates of
the tokens to sample and to train on (see `ilf_jax.pipeline.preview`).
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="pipeline YAML, or a run directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config values")


def run(args: argparse.Namespace) -> int:
    from ilf_jax.pipeline import preview
    from ilf_jax.pipeline.run import config_from
    from ilf_jax.pipeline.sources import load_tasks

    cfg = config_from(args.config, args.overrides)
    print(preview.render(preview.build(cfg, load_tasks(cfg.tasks))))
    return 0
