"""Shared by the benchmarks: the dense fp32 matmul peak of this machine, measured with JAX."""

from __future__ import annotations

import time


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of the best of `reps` jitted n x n x n fp32 matmuls (the denominator of MFU)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
