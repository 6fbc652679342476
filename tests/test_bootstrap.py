"""Bootstrap intervals over tasks: seeded, correct width against the analytic standard error, and paired
differences that cancel shared task difficulty."""

from __future__ import annotations

import math
import random

import pytest

from ilf_jax.metrics import intervals, paired_differences, pass_at_k_table
from ilf_jax.metrics.bootstrap import bootstrap_mean, per_task


def _counts(n_tasks: int, seed: int, n: int = 10) -> dict[int, tuple[int, int]]:
    rng = random.Random(seed)
    return {t: (n, rng.randint(0, n)) for t in range(n_tasks)}


def test_point_estimate_is_the_table_and_seed_fixes_the_interval():
    counts = _counts(94, 0)
    ci = intervals(counts, ("pass@1", "pass@10", "one_plus_correct"), seed=42, n_boot=2000)
    table = pass_at_k_table(counts, (1, 10))
    assert ci["pass@1"].value == pytest.approx(table["pass@1"]) and ci["pass@10"].value == pytest.approx(table["pass@10"])
    assert ci["one_plus_correct"].value == pytest.approx(table["one_plus_correct"])
    assert all(i.low < i.value < i.high for i in (ci["pass@1"], ci["one_plus_correct"]))
    assert intervals(counts, seed=42, n_boot=2000) == {k: ci[k] for k in ("pass@1", "pass@10")}
    assert intervals(counts, seed=43, n_boot=2000)["pass@1"] != ci["pass@1"]
    shuffled = dict(sorted(counts.items(), reverse=True))  # task order does not matter
    assert intervals(shuffled, seed=42, n_boot=2000)["pass@1"] == ci["pass@1"]


def test_width_matches_the_normal_approximation():
    rng = random.Random(1)
    values = [float(rng.random() < 0.3) for _ in range(400)]
    ci = bootstrap_mean(values, seed=0, n_boot=4000)
    p = sum(values) / len(values)
    half = 1.96 * math.sqrt(p * (1 - p) / len(values))
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.1)
    assert ci.contains(p) and not ci.contains(p + 2 * half)


def test_paired_difference_cancels_shared_difficulty():
    base = _counts(100, 2, n=30)
    same = paired_differences(base, base, seed=0, n_boot=500)["pass@1"]
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    better = {t: (n, min(n, c + 3)) for t, (n, c) in base.items()}  # 3 more correct samples on every task
    diff = paired_differences(better, base, seed=0, n_boot=2000)["pass@1"]
    solo_a, solo_b = intervals(better, seed=0, n_boot=2000)["pass@1"], intervals(base, seed=0, n_boot=2000)["pass@1"]
    assert diff.value == pytest.approx(solo_a.value - solo_b.value)
    assert diff.low > 0 and (diff.high - diff.low) < 0.25 * (solo_a.high - solo_a.low)
    assert solo_a.low < solo_b.high  # separately the intervals overlap; paired, the gain is clear


def test_bad_input():
    with pytest.raises(ValueError, match="task 99 is only in the method"):
        paired_differences({**_counts(3, 0), 99: (10, 1)}, _counts(3, 0))
    with pytest.raises(ValueError, match="metric"):
        per_task(_counts(3, 0), "pass@x")
    with pytest.raises(ValueError, match="no tasks"):
        intervals({})
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])
