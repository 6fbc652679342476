"""Orbax checkpoints of a training run: the TrainState plus a JSON record of the data position.

Saves are periodic and final, the newest `keep` are kept, and writes are atomic (an interrupted
save leaves no step directory). Restoring uses an abstract target that carries shardings, so a
state saved on one mesh restores onto another.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from ilf_jax.errors import IlfError
from ilf_jax.train.state import TrainState


class Checkpoints:
    """`directory/<step>/{state,meta}` managed by an Orbax CheckpointManager."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 2, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: TrainState, meta: dict[str, Any], force: bool = True) -> None:
        """Start saving `state` (copied to host before this returns, so it may be donated next)."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise IlfError(f"{self.directory}: no checkpoint")
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """(state, meta) of `step` (default: the latest), laid out as `target`'s shardings say."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise IlfError(f"{self.directory}: no checkpoint to restore")
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
            )
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise IlfError(f"{self.directory}: cannot restore step {step}: {str(e).splitlines()[0]}") from None
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def tree_equal(a: Any, b: Any) -> bool:
    """Exact equality of two pytrees of arrays (host copies)."""
    import numpy as np

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))
