"""Scores from verdicts: pass@k, the "1+ correct" fraction, and their bootstrap intervals (pure functions)."""

from ilf_jax.metrics.bootstrap import Interval, intervals, paired_differences
from ilf_jax.metrics.passk import pass_at_k, pass_at_k_table

__all__ = ["Interval", "intervals", "paired_differences", "pass_at_k", "pass_at_k_table"]
