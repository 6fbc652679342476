"""Model families (CodeGen; Llama / Qwen2 / Qwen3) in Flax Linen behind one interface, their
configs, and HF checkpoint conversion."""

from ilf_jax.model.codegen import CodeGen, causal_mask
from ilf_jax.model.config import CodeGenConfig
from ilf_jax.model.family import (
    CONFIG_TYPES,
    Family,
    ModelConfig,
    abstract_params,
    cache_axes,
    config_from_dict,
    config_from_file,
    family_of,
    forward,
    init_cache,
    init_params,
    lm_head,
    param_specs,
)
from ilf_jax.model.llama_config import LlamaConfig

__all__ = [
    "CONFIG_TYPES",
    "CodeGen",
    "CodeGenConfig",
    "Family",
    "LlamaConfig",
    "ModelConfig",
    "abstract_params",
    "cache_axes",
    "causal_mask",
    "config_from_dict",
    "config_from_file",
    "family_of",
    "forward",
    "init_cache",
    "init_params",
    "lm_head",
    "param_specs",
]
