"""Where an annotation session keeps its files: `RUN_DIR/annotate/r{R}/` for a run waiting on
`feedback.source: app`, `NAME.annotate/` beside a queue JSONL. The queue, export and progress
files are the contract with the pipeline (`ilf_jax.pipeline.app_feedback`)."""

from __future__ import annotations

import dataclasses
import pathlib
import re

from ilf_jax.errors import IlfError
from ilf_jax.pipeline.app_feedback import EXPORT, PROGRESS, QUEUE, WORKSPACE

DATABASE = "annotations.sqlite"


@dataclasses.dataclass(frozen=True)
class Workspace:
    """The queue the items come from and the files written beside the database."""

    dir: pathlib.Path
    queue: pathlib.Path

    @property
    def database(self) -> pathlib.Path:
        return self.dir / DATABASE

    @property
    def export(self) -> pathlib.Path:
        return self.dir / EXPORT

    @property
    def progress(self) -> pathlib.Path:
        return self.dir / PROGRESS


def _round(path: pathlib.Path) -> int:
    m = re.fullmatch(r"r(\d+)", path.name)
    return int(m.group(1)) if m else -1


def workspace_for(target: str | pathlib.Path) -> Workspace:
    """The workspace of a queue JSONL file, of a workspace folder, or of a run directory (its
    latest round with a queue)."""
    path = pathlib.Path(target)
    if path.is_file():
        return Workspace(path.with_name(path.stem + ".annotate"), path)
    if not path.is_dir():
        raise IlfError(f"{path}: neither a run directory nor a queue JSONL file")
    if (path / QUEUE).is_file() or (path / DATABASE).is_file():
        return Workspace(path, path / QUEUE)
    rounds = sorted((d for d in (path / WORKSPACE).glob("r*") if (d / QUEUE).is_file()), key=_round)
    if not rounds:
        raise IlfError(f"{path}: no annotation queue in {path / WORKSPACE}; run the pipeline with "
                       f"feedback.source=app (its r1.annotate stage writes the queue), or pass a queue JSONL")
    return Workspace(rounds[-1], rounds[-1] / QUEUE)
