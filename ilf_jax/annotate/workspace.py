"""Where an annotation session keeps its files: `RUN_DIR/annotate/` for a run, `NAME.annotate/`
beside a queue JSONL. The export and progress files are the contract with the pipeline."""

from __future__ import annotations

import dataclasses
import pathlib

from ilf_jax.errors import IlfError

QUEUE, DATABASE, EXPORT, PROGRESS = "queue.jsonl", "annotations.sqlite", "annotations.jsonl", "progress.json"


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


def run_workspace(run_dir: pathlib.Path) -> Workspace:
    """A run's annotation folder (its queue is written by the run's feedback stage)."""
    return Workspace(run_dir / "annotate", run_dir / "annotate" / QUEUE)


def workspace_for(target: str | pathlib.Path) -> Workspace:
    """The workspace of a run directory or of a queue JSONL file."""
    path = pathlib.Path(target)
    if path.is_dir():
        return run_workspace(path)
    if path.is_file():
        return Workspace(path.with_name(path.stem + ".annotate"), path)
    raise IlfError(f"{path}: neither a run directory nor a queue JSONL file")
