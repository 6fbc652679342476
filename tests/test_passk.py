"""pass@k: the stable estimator equals brute force over all k-subsets; table averages; bad k refused."""

from __future__ import annotations

import itertools
import math

import pytest

from ilf_jax.metrics import pass_at_k, pass_at_k_table


def _brute(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute(n, c, k), abs=1e-12)


def test_large_n_is_stable():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(200, 13, 10) == pytest.approx(1 - math.comb(187, 10) / math.comb(200, 10), rel=1e-12)


def test_refuses_bad_arguments():
    for n, c, k in ((5, 1, 6), (5, 6, 1), (5, 1, 0), (5, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_table_averages_and_one_plus_correct():
    table = pass_at_k_table({"a": (10, 0), "b": (10, 10), "c": (10, 1)}, ks=(1, 10))
    assert table["pass@1"] == pytest.approx((0 + 1 + 0.1) / 3)
    assert table["pass@10"] == pytest.approx(2 / 3)
    assert table["one_plus_correct"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        pass_at_k_table({"a": (5, 1)}, ks=(10,))
