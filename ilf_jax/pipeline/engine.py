"""Stages as functions from input artifacts to output artifacts, with identities, skipping and resuming.

A stage's identity hashes its name, the config values it depends on, the fingerprints of the
external files it reads and the identities of the stages it reads from. Its folder holds
`stage.json` ({identity, done, summary}). Running a plan: a done stage with the same identity
is skipped; a stage with another identity is wiped and rerun; an unfinished one resumes.

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
from ilf_jax.pipeline.records import atomic_write_json, is_writer, read_json

STATE = "stage.json"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step: `fn(ctx)` writes the stage's outputs under `ctx.dir` and returns a JSON summary."""

    name: str
    fn: Callable[[StageContext], dict[str, Any]]
    deps: tuple[str, ...] = ()
    config: Any = None
    inputs: tuple[str, ...] = ()  # keys into the run's input fingerprints


@dataclasses.dataclass
class StageContext:
    """What a stage function sees: its folder, its dependencies' folders and the run's shared resources."""

    stage: Stage
    dir: pathlib.Path
    dep_dirs: dict[str, pathlib.Path]
    resources: Any

    def dep(self, name: str) -> pathlib.Path:
        """The folder of dependency `name` (it must be listed in the stage's deps)."""
        return self.dep_dirs[name]


def stage_dir(run_dir: pathlib.Path, name: str) -> pathlib.Path:
    return run_dir / "stages" / name


def identity(stage: Stage, dep_ids: Mapping[str, str], fingerprints: Mapping[str, str]) -> str:
    """sha256 over the stage's name, config values, input fingerprints and dependency identities."""
    blob = json.dumps({"name": stage.name, "config": stage.config,
                       "inputs": {k: fingerprints[k] for k in stage.inputs},
                       "deps": {d: dep_ids[d] for d in stage.deps}}, sort_keys=True, default=str)
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


def run_stage(stage: Stage, run_dir: pathlib.Path, ids: Mapping[str, str], resources: Any,
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
    ctx = StageContext(stage, sdir, {d: stage_dir(run_dir, d) for d in stage.deps}, resources)
    summary = stage.fn(ctx)
    state = {"identity": ident, "done": True, "name": stage.name, "summary": summary,
             "seconds": round(time.time() - t0, 3)}
    atomic_write_json(sdir / STATE, state)
    _agree(stage.name, True)  # every process finished the stage and process 0 wrote it
    if on_done is not None:
        on_done(stage, state)
    return state


def _multiprocess() -> bool:
    import sys

    jax = sys.modules.get("jax")
    return jax is not None and jax.process_count() > 1


def _agree(name: str, done: bool) -> bool:
    """`done`, checked to be the same on every process (which also waits for all of them)."""
    if not _multiprocess():
        return done
    from ilf_jax.parallel.distributed import agree

    return agree({"stage": name, "done": done})["done"]


def _barrier(name: str) -> None:
    if _multiprocess():
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
