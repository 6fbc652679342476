"""Stages as typed values: a function, its parameters (a frozen dataclass) and its input artifacts,
with identities, skipping and resuming.

A stage function `fn(ctx, params)` sees only its parameters, the artifacts it was given (read with
`ctx.read(name)`) and the external sources it names (`ctx.source(name)`); it never sees the run's
config, so nothing it depends on can be left out of its identity. Dependencies are the stages
that produced its input artifacts. Identity = sha256(name, params, input identities, source
fingerprints); a parameter field with `metadata={"identity": False}` (batching, worker counts)
does not count. Each stage's folder holds `stage.json` ({identity, done, summary}). Running a
plan: a done stage with the same identity is skipped; a stage with another identity is wiped and
rerun; an unfinished one resumes.

Multi-process runs: every process runs every stage (sampling and training are SPMD programs);
they agree on whether a stage is done before it starts, only process 0 sets up and writes the
stage folder, and all wait at a barrier before the next stage reads its outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

from ilf_jax.errors import IlfError
from ilf_jax.pipeline.artifacts import STATE, Artifact, stage_dir
from ilf_jax.jsonl import atomic_write_json, read_json
from ilf_jax.processes import is_writer, process_count

__all__ = ["STATE", "Artifact", "Stage", "StageContext", "stage_dir", "identity", "identities", "run_stage", "status"]


def to_json(value: Any, identity_only: bool = False) -> Any:
    """A parameter value as JSON data (dataclasses as mappings; with `identity_only`, without the
    fields marked `metadata={"identity": False}`)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name), identity_only) for f in dataclasses.fields(value)
                if not (identity_only and f.metadata.get("identity") is False)}
    if isinstance(value, (list, tuple)):
        return [to_json(v, identity_only) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v, identity_only) for k, v in value.items()}
    if identity_only and isinstance(value, float) and value.is_integer():
        return int(value)  # 0 and 0.0 are one setting (a config read back from the manifest has floats)
    return value


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step: `fn(ctx, params)` writes the stage's outputs under `ctx.dir` and returns a JSON summary.

    `inputs` names the artifacts the function reads (their stages are its dependencies);
    `sources` names the run's external inputs it reads (their fingerprints enter its identity).
    """

    name: str
    fn: Callable[[StageContext, Any], dict[str, Any]]
    params: Any = None
    inputs: Mapping[str, Artifact] = dataclasses.field(default_factory=dict)
    sources: tuple[str, ...] = ()

    @property
    def deps(self) -> tuple[str, ...]:
        """The stages whose outputs this one reads, in the order of its inputs."""
        return tuple(dict.fromkeys(a.stage for a in self.inputs.values()))

    @property
    def config(self) -> Any:
        """The parameters as JSON data (what `stage.json` readers and `ilf stage list` show)."""
        return to_json(self.params)


@dataclasses.dataclass
class StageContext:
    """What a stage function sees besides its parameters: its folder, its inputs, its declared sources,
    and the process's services (model loading, executor workers, progress bars)."""

    stage: Stage
    dir: pathlib.Path
    run_dir: pathlib.Path
    services: Any

    @property
    def name(self) -> str:
        return self.stage.name

    def has(self, name: str) -> bool:
        return name in self.stage.inputs

    def read(self, name: str) -> Any:
        """The content of input artifact `name` (records, a model pointer, a summary)."""
        return self.stage.inputs[name].read(self.run_dir)

    def source(self, name: str) -> Any:
        """External input `name` (tasks, annotations, the base model); only the declared ones."""
        if name not in self.stage.sources:
            raise KeyError(f"stage {self.stage.name} reads source {name!r} without declaring it")
        return self.services.source(name)


def identity(stage: Stage, dep_ids: Mapping[str, str], fingerprints: Mapping[str, str]) -> str:
    """sha256 over the stage's name, parameters, input artifacts (with their stages' identities) and
    source fingerprints."""
    blob = json.dumps({"name": stage.name, "params": to_json(stage.params, identity_only=True),
                       "inputs": {k: [a.stage, a.kind.__name__, dep_ids[a.stage]] for k, a in stage.inputs.items()},
                       "sources": {k: fingerprints[k] for k in stage.sources}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def identities(plan: Sequence[Stage], fingerprints: Mapping[str, str]) -> dict[str, str]:
    """Every stage's identity, in plan order (a stage's deps come before it)."""
    ids: dict[str, str] = {}
    for stage in plan:
        missing = [d for d in stage.deps if d not in ids]
        if missing:
            raise ValueError(f"stage {stage.name}: dependency {missing[0]} is not earlier in the plan")
        ids[stage.name] = identity(stage, ids, fingerprints)
    return ids


def read_state(run_dir: pathlib.Path, name: str) -> dict[str, Any] | None:
    path = stage_dir(run_dir, name) / STATE
    return read_json(path) if path.is_file() else None


def is_done(run_dir: pathlib.Path, name: str, ident: str) -> bool:
    state = read_state(run_dir, name)
    return bool(state and state.get("done") and state.get("identity") == ident)


def run_stage(stage: Stage, run_dir: pathlib.Path, ids: Mapping[str, str], services: Any,
              on_done: Callable[[Stage, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume, or skip) one stage whose dependencies are done; returns its state record."""
    ident = ids[stage.name]
    sdir = stage_dir(run_dir, stage.name)
    state = read_state(run_dir, stage.name)
    if _agree(stage.name, bool(state and state.get("done") and state.get("identity") == ident)):
        return state
    for dep in stage.deps:
        if not is_done(run_dir, dep, ids[dep]):
            raise IlfError(f"stage {stage.name}: stage {dep} is not done (run `ilf run` or that stage first)")
    if (state is None or state.get("identity") != ident) and is_writer():
        if sdir.exists():
            shutil.rmtree(sdir)
        sdir.mkdir(parents=True)
        atomic_write_json(sdir / STATE, {"identity": ident, "done": False, "name": stage.name})
    _barrier(f"start:{stage.name}")
    t0 = time.time()
    summary = stage.fn(StageContext(stage, sdir, run_dir, services), stage.params)
    state = {"identity": ident, "done": True, "name": stage.name, "summary": summary,
             "seconds": round(time.time() - t0, 3)}
    atomic_write_json(sdir / STATE, state)
    _agree(stage.name, True)  # every process finished the stage and process 0 wrote it
    if on_done is not None:
        on_done(stage, state)
    return state


def agreed(value: Any) -> Any:
    """`value`, checked to be the same on every process of a multi-process run (which also waits for all)."""
    if process_count() == 1:
        return value
    from ilf_jax.parallel.distributed import agree

    return agree(value)


def _agree(name: str, done: bool) -> bool:
    """`done`, checked to be the same on every process (which also waits for all of them)."""
    return agreed({"stage": name, "done": done})["done"]


def _barrier(name: str) -> None:
    if process_count() > 1:
        from ilf_jax.parallel.distributed import barrier

        barrier(name)


def status(plan: Sequence[Stage], run_dir: pathlib.Path, ids: Mapping[str, str]) -> list[tuple[str, str]]:
    """(stage, 'done' | 'partial' | 'stale' | 'pending') for every stage of the plan."""
    out = []
    for stage in plan:
        state = read_state(run_dir, stage.name)
        if state is None:
            out.append((stage.name, "pending"))
        elif state.get("identity") != ids[stage.name]:
            out.append((stage.name, "stale"))
        else:
            out.append((stage.name, "done" if state.get("done") else "partial"))
    return out
