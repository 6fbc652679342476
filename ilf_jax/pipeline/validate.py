"""Up-front checks of everything a run reads, so that bad input fails before any expensive work."""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

from ilf_jax.data.formats import task_prompt
from ilf_jax.errors import IlfError
from ilf_jax.pipeline.sources import TaskSet, import_callable


def writable_dir(path: pathlib.Path) -> None:
    """Create `path` if needed and prove a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise IlfError(f"run_dir {path}: not writable: {e.strerror or e}") from None


def model_dir(path: str, what: str) -> None:
    """A model directory must exist and hold a config.json."""
    p = pathlib.Path(path)
    if not p.is_dir():
        raise IlfError(f"{what} {p}: directory does not exist")
    if not (p / "config.json").is_file():
        raise IlfError(f"{what} {p}: no config.json (expected an HF model or ilf_jax checkpoint directory)")


def tokenizer_dir(path: pathlib.Path, what: str) -> None:
    """The tokenizer must load from `path`."""
    from ilf_jax.model.store import load_tokenizer

    try:
        load_tokenizer(path)
    except IlfError as e:
        raise IlfError(f"{what}: {e}") from None


def tasks(task_set: TaskSet) -> None:
    """The run needs test and train tasks, and every selected task must have a prompt in the paper's format."""
    for split in ("test", "train"):
        if not task_set.splits[split]:
            raise IlfError(f"config: the {split} split selects no tasks (see tasks.ids / tasks.limit)")
    for ids in task_set.splits.values():
        for tid in ids:
            try:
                task_prompt(task_set.tasks[tid])
            except (ValueError, IndexError) as e:
                raise IlfError(f"task {tid}: cannot build its prompt: {e}") from None


def train_configs(cfg: dict[str, Any], sweep_points: list[dict[str, Any]]) -> None:
    """Every training section (and sweep point) must be a valid TrainConfig."""
    from ilf_jax.train.config import TrainConfig

    for section in ("refiner", "finetune"):
        try:
            TrainConfig.from_dict(cfg[section]["train"])
            for point in sweep_points:
                TrainConfig.from_dict({**cfg[section]["train"], **point})
        except IlfError as e:
            raise IlfError(f"config: {section}.train: {e}") from None


def sampling_configs(cfg: dict[str, Any]) -> None:
    """Every sampling section must make a valid SamplingConfig."""
    from ilf_jax.pipeline.config import sampling_section
    from ilf_jax.sample import SamplingConfig

    for name, overlay in (("sampling", {}), ("refiner.sampling", cfg["refiner"]["sampling"]),
                          ("evaluation.sampling", cfg["evaluation"]["sampling"])):
        knobs = {k: v for k, v in sampling_section(cfg, overlay).items() if k != "chunk"}
        try:
            SamplingConfig(**knobs)
        except (ValueError, IlfError) as e:
            raise IlfError(f"config: {name}: {e}") from None
    if cfg["sampling"]["chunk"] < 1:
        raise IlfError("config: sampling.chunk must be a positive integer")


def everything(cfg: dict[str, Any], task_set: TaskSet, annotations_loader: Any, sweep_points: list[dict[str, Any]]) -> None:
    """All checks, cheapest first; `annotations_loader()` loads (and so validates) the annotation file."""
    writable_dir(pathlib.Path(cfg["run_dir"]))
    tasks(task_set)
    model_dir(cfg["model"]["dir"], "model.dir")
    tokenizer_dir(pathlib.Path(cfg["model"]["tokenizer"] or cfg["model"]["dir"]), "model tokenizer")
    fb = cfg["feedback"]
    if fb["source"] == "model" and fb["model"]["dir"]:
        model_dir(fb["model"]["dir"], "feedback.model.dir")
    if fb["annotator"]:
        import_callable(fb["annotator"], "feedback.annotator")
    if fb["annotations"]:
        annotations_loader()
    train_configs(cfg, sweep_points)
    sampling_configs(cfg)
