"""Multi-controller JAX: process start-up, per-process shares of work, and merging host results.

One process per host; all of them run the same program over a global mesh. Host-side work
(tokenizing, executing programs) is split by `process_share` and merged with `allgather_objects`,
both in one call with `map_shared`, so that every process sees every record; only the writer
process (`ilf_jax.processes.is_writer`) writes shared files.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Sharding

from ilf_jax.errors import IlfError

ENV_COORDINATOR = "ILF_COORDINATOR"
ENV_NUM_PROCESSES = "ILF_NUM_PROCESSES"
ENV_PROCESS_ID = "ILF_PROCESS_ID"


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Start the multi-controller runtime from arguments or ILF_* environment variables.

    With nothing given: on TPU VMs and under SLURM JAX discovers the cluster itself; elsewhere
    this is one process and nothing is done. CPU clusters get gloo collectives.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if coordinator is None:
        cluster = ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "SLURM_JOB_ID")
        if any(os.environ.get(k) for k in cluster) and int(os.environ.get("SLURM_NTASKS", "2")) > 1:
            jax.distributed.initialize()
        return
    if num_processes is None or process_id is None:
        raise IlfError(f"{ENV_COORDINATOR} is set: also give the number of processes and this process's id")
    if not 0 <= process_id < num_processes:
        raise IlfError(f"process id {process_id} is outside 0..{num_processes - 1}")
    if os.environ.get("JAX_PLATFORMS", "cpu").startswith("cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def process_share(n: int, index: int | None = None, count: int | None = None) -> range:
    """The contiguous slice of `n` items this process handles (sizes differ by at most one)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return range(start, start + base + (index < extra))


def map_shared(fn: Callable[[list[Any]], list[Any]], items: Sequence[Any]) -> list[Any]:
    """`fn(items)` computed in parts: each process applies `fn` to its share, and every process gets
    all the results, in order (for host-side work: tokenizing, running programs, decoding)."""
    if jax.process_count() == 1:
        return list(fn(list(items)))
    share = process_share(len(items))
    return [r for part in allgather_objects(list(fn([items[i] for i in share]))) for r in part]


def global_array(local: np.ndarray, sharding: Sharding, global_shape: Sequence[int] | None = None) -> jax.Array:
    """A global array from this process's rows (its share of the leading axis)."""
    if global_shape is None:
        return jax.make_array_from_process_local_data(sharding, local)
    return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))


def put_global(tree: Any, shardings: Any) -> Any:
    """Place a pytree (host arrays or jax.Arrays) into `shardings`; `shardings` may be one Sharding.

    One process: `jax.device_put`. Several: jax.Arrays that already span the mesh are resharded
    by `device_put`; host values (identical on every process) go through
    `jax.make_array_from_callback`, so each process transfers only the slices its devices hold.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    if isinstance(shardings, Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def put(x: Any, sharding: Sharding) -> jax.Array:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def fetch(tree: Any) -> Any:
    """Host numpy copies of a pytree of (possibly multi-process) arrays; collective when arrays span
    other processes (every process must call it, in the same order)."""
    def get(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def local_rows(sharding: Sharding, global_shape: Sequence[int], axis: int = 0) -> range:
    """The contiguous range of indices along `axis` that this process's devices hold."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
        sl = index[axis] if index else slice(None)
        start, stop, _ = sl.indices(global_shape[axis])
        starts.append(start)
        stops.append(stop)
    rows = range(min(starts), max(stops))
    covered = set()
    for a, b in zip(starts, stops):
        covered.update(range(a, b))
    if len(covered) != len(rows):
        raise ValueError(f"this process's rows along axis {axis} are not contiguous; use a mesh whose batch axes follow process order")
    return rows


def allgather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in process order (pickled; for modest host-side records)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    sizes = multihost_utils.process_allgather(np.array([payload.size], np.int64))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: payload.size] = payload
    gathered = multihost_utils.process_allgather(padded)
    return [pickle.loads(gathered[i, : int(sizes[i][0])].tobytes()) for i in range(jax.process_count())]


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(value: Any) -> Any:
    """Check that all processes hold the same JSON-able `value` (e.g. a stage's done state); return it."""
    values = allgather_objects(json.dumps(value, sort_keys=True))
    if len(set(values)) != 1:
        raise RuntimeError(f"processes disagree: {values}")
    return value
