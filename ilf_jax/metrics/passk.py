"""pass@k (Chen et al. 2021's unbiased estimator) and the "1+ correct" fraction, from pass counts."""

from __future__ import annotations

from typing import Hashable, Iterable, Mapping


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) for one task, as a stable product (no big factorials); ValueError if k > n."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_at_k_table(counts: Mapping[Hashable, tuple[int, int]], ks: Iterable[int] = (1, 10)) -> dict[str, float]:
    """Average pass@k over tasks ({task: (n, c)}) for each k, plus `one_plus_correct` and `tasks`."""
    if not counts:
        raise ValueError("no tasks to score")
    table: dict[str, float] = {}
    for k in ks:
        table[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
    table["one_plus_correct"] = sum(c > 0 for _, c in counts.values()) / len(counts)
    table["tasks"] = float(len(counts))
    return table
