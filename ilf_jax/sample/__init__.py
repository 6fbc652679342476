"""Batched sampling: a continuous-batching slot engine over a ring KV cache, with the MBPP stop rule on device."""

from ilf_jax.sample.policy import Policy
from ilf_jax.sample.sampler import Completion, RowResult, Sampler, SamplingConfig, sample

__all__ = ["Completion", "Policy", "RowResult", "Sampler", "SamplingConfig", "sample"]
