"""The `ilf` command: a thin dispatcher that imports only the subcommand it runs.

Each subcommand lives beside the code it drives, as a module exposing
`configure(parser)` (adds arguments) and `run(args) -> int`. `ilf exec` never imports JAX.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ilf_jax.errors import IlfError

# name, module (exposing configure(parser) and run(args)), help: one command a line.
_TABLE = """\
convert   ilf_jax.model.cli_convert    convert an HF model directory (CodeGen, Llama, Qwen2/3) to an ilf_jax checkpoint
export    ilf_jax.model.cli_export     export an ilf_jax checkpoint to an HF directory
sample    ilf_jax.sample.cli           sample completions for prompts
exec      ilf_jax.execute.cli          run programs against their unit tests in a sandbox
train     ilf_jax.train.cli            fine-tune a model on prompt/completion records
run       ilf_jax.pipeline.cli_run     run (or resume) the ILF pipeline from a config
status    ilf_jax.pipeline.cli_status  show which stages of a run are done
plan      ilf_jax.pipeline.cli_plan    print a run's stages, data counts and token estimates before any model is loaded
stage     ilf_jax.pipeline.cli_stage   run one stage of the ILF pipeline (`ilf stage list CONFIG` lists them)
demo      ilf_jax.demo.cli             run the embedded CPU-sized ILF experiment
data      ilf_jax.data.cli             fetch and verify MBPP and the ILF annotation file into a cache
annotate  ilf_jax.annotate.cli         serve the web app where people write feedback on failing programs
"""
COMMANDS: dict[str, tuple[str, str]] = {name: (module, help_text) for name, module, help_text in
                                        (line.split(None, 2) for line in _TABLE.splitlines())}

# Commands that run the same program on every host of a pod or cluster.
MULTI_HOST = ("convert", "sample", "train", "run", "demo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ilf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ilf` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _parser().parse_args(argv)  # prints usage / error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"ilf {name}", description=COMMANDS[name][1])
    module.configure(parser)
    args = parser.parse_args(rest)
    try:
        if name in MULTI_HOST:
            from ilf_jax.parallel.distributed import initialize

            initialize()  # joins a pod / cluster when one is configured; no-op on one host
        return int(module.run(args) or 0)
    except IlfError as e:
        print(f"ilf {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ilf {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
