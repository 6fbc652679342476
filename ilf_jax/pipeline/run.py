"""Opening a run (validate, plan, fingerprint inputs, manifest) and running its stages in order."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

from ilf_jax.configfile import apply_overrides, to_data
from ilf_jax.errors import IlfError
from ilf_jax.pipeline import engine, plan, validate
from ilf_jax.pipeline.config import PipelineConfig, load, resolve
from ilf_jax.pipeline.manifest import MANIFEST, fingerprint, read_manifest, write_manifest
from ilf_jax.pipeline.resources import ModelRef, Services
from ilf_jax.pipeline.sources import load_tasks


@dataclasses.dataclass
class Run:
    """An opened run: its config, services, stage plan, evaluated methods and stage identities."""

    config: PipelineConfig
    services: Services
    stages: list[engine.Stage]
    methods: list[plan.Method]
    ids: dict[str, str]
    inputs: dict[str, str]

    @property
    def dir(self) -> pathlib.Path:
        return self.services.run_dir

    def stage(self, name: str) -> engine.Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise IlfError(f"no stage {name!r} in this run (see `ilf stage list CONFIG`)")


def config_from(target: str, overrides: Sequence[str]) -> PipelineConfig:
    """The config of a YAML file, or of an existing run directory (its manifest), with overrides."""
    path = pathlib.Path(target)
    if path.is_dir():
        manifest = read_manifest(path)
        if manifest is None:
            raise IlfError(f"{path}: not a run directory (no {MANIFEST})")
        return resolve(apply_overrides(manifest["config"], overrides), pathlib.Path.cwd(), str(path / MANIFEST))
    return load(path, overrides)


def _fingerprints(cfg: PipelineConfig) -> dict[str, str]:
    """Fingerprints of the run's external inputs."""
    tasks = cfg.tasks
    out = {"model": fingerprint(cfg.model.dir) if cfg.model.dir else "(made by model.prepare)"}
    if cfg.model.tokenizer:
        out["model"] += ":" + fingerprint(cfg.model.tokenizer)
    if tasks.source == "mbpp":
        out["tasks"] = fingerprint(tasks.path)
    else:
        out["tasks"] = json.dumps({k: getattr(tasks, k) for k in ("source", "hf_name", "factory", "factory_args")}, sort_keys=True)
    if tasks.line_endings != "lf":  # the same source read with other bytes (ids, and so params, stay)
        out["tasks"] += f":{tasks.line_endings}"
    if cfg.feedback.annotations:
        out["annotations"] = fingerprint(cfg.feedback.annotations)
    fb_model = cfg.feedback.model.dir
    out["feedback_model"] = fingerprint(fb_model) if fb_model else out["model"]
    if "humaneval" in cfg.evaluation.benchmarks:
        from ilf_jax.data.humaneval import installed_path

        out["humaneval"] = fingerprint(cfg.evaluation.humaneval_path or installed_path())
    return out


def open_run(cfg: PipelineConfig, progress: bool = True, check: bool = True) -> Run:
    """Validate every input (unless `check` is off, e.g. for status), build the plan and identities."""
    task_set = load_tasks(cfg.tasks)
    services = _services(cfg, task_set, progress)
    if check:
        validate.everything(cfg, task_set, lambda: services.annotations, plan.sweep_points(cfg))
    stages, methods = plan.build(cfg, task_set)
    inputs = _fingerprints(cfg)
    return Run(cfg, services, stages, methods, engine.identities(stages, inputs), inputs)


def _services(cfg: PipelineConfig, task_set: Any, progress: bool) -> Services:
    """The run's sources and services from its config."""
    model, fb = cfg.model, cfg.feedback
    base = ModelRef(pathlib.Path(model.dir), pathlib.Path(model.tokenizer or model.dir)) if model.dir else None
    services = Services(pathlib.Path(cfg.run_dir), task_set, base, base, fb.annotations, fb.allow_test_annotations,
                        model.mesh, cfg.executor.workers, progress, cfg.evaluation.humaneval_path)
    if fb.model.dir:
        services.feedback_model = services.model_ref(fb.model.dir)
    return services


def _manifest(run: Run) -> None:
    states = {s.name: {"identity": run.ids[s.name], "status": st}
              for s, (_, st) in zip(run.stages, engine.status(run.stages, run.dir, run.ids))}
    write_manifest(run.dir, to_data(run.config), run.inputs, states)


def execute(run: Run, only: str | None = None) -> None:
    """Run every stage in order (skipping done ones), or just stage `only` (its deps must be done)."""
    _manifest(run)
    targets = [run.stage(only)] if only else run.stages
    for stage in targets:
        engine.run_stage(stage, run.dir, run.ids, run.services, on_done=lambda *_: _manifest(run))
