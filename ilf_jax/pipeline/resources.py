"""What stages share within one process: the config, tasks, annotations, and loaded models (cached)."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

from ilf_jax.data.task import Task
from ilf_jax.pipeline.sources import Annotations, TaskSet, load_run_annotations


@dataclasses.dataclass
class Resources:
    """The run's config and inputs; models are loaded on first use and kept per directory."""

    config: dict[str, Any]
    run_dir: pathlib.Path
    task_set: TaskSet
    progress: bool = True
    _samplers: dict[str, Any] = dataclasses.field(default_factory=dict)

    def task(self, task_id: int) -> Task:
        return self.task_set.tasks[task_id]

    @functools.cached_property
    def annotations(self) -> Annotations | None:
        """The human annotation rows for the run (leakage guard applied), or None without a file."""
        fb = self.config["feedback"]
        if not fb["annotations"]:
            return None
        return load_run_annotations(fb["annotations"], self.task_set, fb["allow_test_annotations"])

    def tokenizer_dir(self, model_dir: str | pathlib.Path) -> pathlib.Path:
        """Where a model's tokenizer lives: the configured one for the base model, else the model's own."""
        base = self.config["model"]
        if str(model_dir) == base["dir"] and base["tokenizer"]:
            return pathlib.Path(base["tokenizer"])
        return pathlib.Path(model_dir)

    def mesh(self) -> Any:
        """The sampling / evaluation mesh (None: the default device; with several processes, a
        mesh over every device with `make_mesh`'s default shape)."""
        shape = self.config["model"]["mesh"]
        from ilf_jax.parallel.mesh import make_mesh, parse_mesh

        if shape is None:
            import jax

            return make_mesh() if jax.process_count() > 1 else None

        return make_mesh(parse_mesh(shape) if isinstance(shape, str) else tuple(shape))

    def sampler(self, model_dir: str | pathlib.Path) -> Any:
        """A Sampler for the model in `model_dir` (loaded once per process, compiled functions kept)."""
        key = str(model_dir)
        if key not in self._samplers:
            from ilf_jax.model.store import load_model, load_tokenizer
            from ilf_jax.sample import Sampler

            self._samplers.clear()  # one model in memory at a time
            mesh = self.mesh()
            config, params = load_model(model_dir, mesh)
            self._samplers[key] = Sampler(params, config, load_tokenizer(self.tokenizer_dir(model_dir)), mesh)
        return self._samplers[key]
