"""Uncertainty of pass@k over a benchmark's tasks: seeded percentile bootstrap intervals, and paired
differences between two methods on the same tasks (pure functions; numpy only).

MBPP_Test has 94-100 tasks, so a few points of pass@1 can be noise: resampling tasks with replacement
shows how much. A paired difference resamples the same tasks for both methods, so the task difficulty that
both share cancels and the interval is much narrower than two separate intervals suggest.
"""

from __future__ import annotations

import dataclasses
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from ilf_jax.metrics.passk import pass_at_k

Counts = Mapping[Hashable, tuple[int, int]]  # {task: (n samples, c correct)}


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate (the mean over tasks) with its bootstrap confidence interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def per_task(counts: Counts, metric: str) -> dict[Hashable, float]:
    """Each task's score for `metric`: `pass@K` (the unbiased estimator) or `one_plus_correct`."""
    if metric == "one_plus_correct":
        return {t: float(c > 0) for t, (_, c) in counts.items()}
    if not metric.startswith("pass@") or not metric[5:].isdigit():
        raise ValueError(f"metric {metric!r} must be 'pass@K' or 'one_plus_correct'")
    k = int(metric[5:])
    return {t: pass_at_k(n, c, k) for t, (n, c) in counts.items()}


def bootstrap_mean(values: Sequence[float], *, seed: int = 0, n_boot: int = 10_000, level: float = 0.95) -> Interval:
    """Mean of `values` with a percentile bootstrap interval (resampling the values with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("need a non-empty 1-D sequence of per-task values")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(float(x.mean()), float(low), float(high), level)


def intervals(counts: Counts, metrics: Iterable[str] = ("pass@1", "pass@10"), *, seed: int = 0,
              n_boot: int = 10_000, level: float = 0.95) -> dict[str, Interval]:
    """For each metric, the mean over tasks with its bootstrap interval (tasks in sorted order, so the same
    counts and seed always give the same interval)."""
    if not counts:
        raise ValueError("no tasks to score")
    tasks = sorted(counts, key=repr)
    out = {}
    for m in metrics:
        scores = per_task(counts, m)
        out[m] = bootstrap_mean([scores[t] for t in tasks], seed=seed, n_boot=n_boot, level=level)
    return out


def paired_differences(counts: Counts, baseline: Counts, metrics: Iterable[str] = ("pass@1", "pass@10"), *,
                       seed: int = 0, n_boot: int = 10_000, level: float = 0.95) -> dict[str, Interval]:
    """For each metric, mean over tasks of (method - baseline) with a paired bootstrap interval; both must
    score the same tasks (ValueError naming one that only one of them has)."""
    only = set(counts) ^ set(baseline)
    if only:
        t = sorted(only, key=repr)[0]
        raise ValueError(f"paired difference needs the same tasks: task {t!r} is only in "
                         f"{'the method' if t in counts else 'the baseline'}")
    if not counts:
        raise ValueError("no tasks to score")
    tasks = sorted(counts, key=repr)
    out = {}
    for m in metrics:
        a, b = per_task(counts, m), per_task(baseline, m)
        out[m] = bootstrap_mean([a[t] - b[t] for t in tasks], seed=seed, n_boot=n_boot, level=level)
    return out
