"""Batched sampling: jitted prefill + KV-cache `lax.while_loop` decode with the MBPP stop rule."""

from ilf_jax.sample.policy import Policy
from ilf_jax.sample.sampler import Completion, RowResult, Sampler, SamplingConfig, sample

__all__ = ["Completion", "Policy", "RowResult", "Sampler", "SamplingConfig", "sample"]
