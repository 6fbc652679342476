"""Which process am I, JAX-free: the process count, and "does this process write shared files".

They look at JAX only when something else already imported it, so the executor and the data
layer can ask without importing JAX; a run that never imported JAX is one process.
"""

from __future__ import annotations

import sys


def process_count() -> int:
    """The number of processes in this (multi-controller JAX) run; 1 when JAX is not imported."""
    jax = sys.modules.get("jax")
    return 1 if jax is None else jax.process_count()


def is_writer() -> bool:
    """True unless this is a non-main process of a multi-process JAX run: the one process that writes
    shared files (records, stage states, manifests, reports)."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0

