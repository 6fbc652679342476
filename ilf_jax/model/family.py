"""The model-family interface: everything sampler, trainer, memory planner, store and CLI need
from a model, implemented once per family and selected from the config.

A config's type picks its `Family`; an HF `config.json`'s `model_type` picks the config type.
Callers use the functions below (`forward(params, tokens, config, ...)`, `init_cache(config,
...)`, ...) and never ask which family they hold.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Union

import jax

from ilf_jax.errors import IlfError
from ilf_jax.model import codegen, llama
from ilf_jax.model import llama_weight_map, weight_map as codegen_weight_map
from ilf_jax.model.config import CodeGenConfig, read_model_file
from ilf_jax.model.llama_config import VARIANTS, LlamaConfig
from ilf_jax.model.weight_map import Entry

ModelConfig = Union[CodeGenConfig, LlamaConfig]


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture's implementation of the interface (pure functions of config and params)."""

    name: str
    config_type: type
    model_types: tuple[str, ...]  # the HF `model_type`s it reads
    init_params: Callable[[Any, jax.Array], Any]
    abstract_params: Callable[[Any], Any]  # ShapeDtypeStructs, nothing allocated
    param_specs: Callable[[Any], Any]  # logical axis names of every parameter
    forward: Callable[..., tuple[jax.Array, Any]]  # (params, tokens, config, *, positions, mask, valid, cache, ...)
    init_cache: Callable[..., Any]  # (config, batch, slots, dtype=None) -> list of {"k", "v"}
    cache_axes: tuple[str | None, ...]  # logical names of a cache entry's dims
    lm_head: Callable[[Any, Any], tuple[jax.Array, jax.Array | None]]  # (kernel [E, V], bias [V] or None)
    weight_map: Callable[[Any], list[Entry]]  # HF tensor <-> our leaf, both ways
    ignored_suffixes: Callable[[Any], tuple[str, ...]]  # checkpoint tensors that are not loaded


CODEGEN = Family(
    name="codegen",
    config_type=CodeGenConfig,
    model_types=("codegen",),
    init_params=codegen.init_params,
    abstract_params=codegen.abstract_params,
    param_specs=codegen.param_specs,
    forward=codegen.forward,
    init_cache=codegen.init_cache,
    cache_axes=codegen.CACHE_AXES,
    lm_head=lambda params, config: (params["lm_head"]["kernel"], params["lm_head"]["bias"]),
    weight_map=codegen_weight_map.weight_map,
    ignored_suffixes=codegen_weight_map.ignored_suffixes,
)

LLAMA = Family(
    name="llama",
    config_type=LlamaConfig,
    model_types=tuple(VARIANTS),
    init_params=llama.init_params,
    abstract_params=llama.abstract_params,
    param_specs=llama.param_specs,
    forward=llama.forward,
    init_cache=llama.init_cache,
    cache_axes=llama.CACHE_AXES,
    lm_head=llama.lm_head,
    weight_map=llama_weight_map.weight_map,
    ignored_suffixes=llama_weight_map.ignored_suffixes,
)

FAMILIES = (CODEGEN, LLAMA)
_BY_CONFIG = {f.config_type: f for f in FAMILIES}
_BY_MODEL_TYPE = {t: f for f in FAMILIES for t in f.model_types}
CONFIG_TYPES = tuple(_BY_CONFIG)


def family_of(config: Any) -> Family:
    """The family implementing `config`'s architecture."""
    try:
        return _BY_CONFIG[type(config)]
    except KeyError:
        raise IlfError(f"not a model config: {type(config).__name__}") from None


def config_from_dict(d: dict[str, Any], source: str = "config") -> ModelConfig:
    """The config of whichever family reads `d["model_type"]` (our YAML files without one are CodeGen)."""
    model_type = d.get("model_type", "codegen")
    family = _BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise IlfError(f"{source}: model_type is {model_type!r}, supported: {', '.join(_BY_MODEL_TYPE)}")
    return family.config_type.from_dict(d, source=source)


def config_from_file(path: str | pathlib.Path) -> ModelConfig:
    """Read an HF `config.json`, a directory holding one, or one of our YAML model configs."""
    d, source = read_model_file(path)
    return config_from_dict(d, source=source)


# The interface as plain functions of the config, for callers that hold a config of any family.
def forward(params: Any, tokens: jax.Array, config: ModelConfig, **kwargs: Any) -> tuple[jax.Array, Any]:
    """Logits (or final hidden states) and the updated cache; see `codegen.forward` for the arguments."""
    return family_of(config).forward(params, tokens, config, **kwargs)


def init_params(config: ModelConfig, rng: jax.Array) -> Any:
    return family_of(config).init_params(config, rng)


def abstract_params(config: ModelConfig) -> Any:
    return family_of(config).abstract_params(config)


def param_specs(config: ModelConfig) -> Any:
    return family_of(config).param_specs(config)


def init_cache(config: ModelConfig, batch: int, slots: int, dtype: Any = None) -> Any:
    return family_of(config).init_cache(config, batch, slots, dtype)


def cache_axes(config: ModelConfig) -> tuple[str | None, ...]:
    return family_of(config).cache_axes


def lm_head(params: Any, config: ModelConfig) -> tuple[jax.Array, jax.Array | None]:
    return family_of(config).lm_head(params, config)


def weight_map(config: ModelConfig) -> list[Entry]:
    return family_of(config).weight_map(config)


def ignored_suffixes(config: ModelConfig) -> tuple[str, ...]:
    return family_of(config).ignored_suffixes(config)


def describe(config: ModelConfig) -> str:
    """A short human-readable size summary, e.g. 'qwen2: 28 layers, 1536 wide, 12 heads (2 kv)'."""
    kv = config.n_kv_heads
    heads = f"{config.n_head} heads" + (f" ({kv} kv)" if kv != config.n_head else "")
    return f"{config.model_type}: {config.n_layer} layers, {config.n_embd} wide, {heads}, vocab {config.vocab_size}"
