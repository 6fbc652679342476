"""Scores from verdicts: pass@k and the "1+ correct" fraction (pure functions)."""

from ilf_jax.metrics.passk import pass_at_k, pass_at_k_table

__all__ = ["pass_at_k", "pass_at_k_table"]
