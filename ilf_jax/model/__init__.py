"""CodeGen-Mono in Flax Linen, its config, and HF checkpoint conversion."""

from ilf_jax.model.config import CodeGenConfig
from ilf_jax.model.codegen import CodeGen, causal_mask, forward, init_cache, init_params, param_specs

__all__ = [
    "CodeGenConfig",
    "CodeGen",
    "causal_mask",
    "forward",
    "init_cache",
    "init_params",
    "param_specs",
]
