"""The model-family interface: everything sampler, trainer, memory planner, store and CLI need
from a model, implemented once per family and selected from the config.

A config's type picks its `Family`; an HF `config.json`'s `model_type` picks the config type.
Callers use the functions below (`forward(params, tokens, config, ...)`, `init_cache(config,
...)`, ...) and never ask which family they hold.
"""

from __future__ import annotations

import dataclasses
import pathlib
from types import ModuleType
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


# What a family's model module and weight-map module each provide, under the Family field names.
_FROM_MODEL = ("init_params", "abstract_params", "param_specs", "forward", "init_cache", "lm_head")
_FROM_WEIGHTS = ("weight_map", "ignored_suffixes")


def _family(name: str, config_type: type, model_types: tuple[str, ...], model: ModuleType, weights: ModuleType) -> Family:
    """The family whose model module defines the functional API and `CACHE_AXES`, and whose
    weights module the HF weight map."""
    api = {k: getattr(model, k) for k in _FROM_MODEL} | {k: getattr(weights, k) for k in _FROM_WEIGHTS}
    return Family(name=name, config_type=config_type, model_types=model_types, cache_axes=model.CACHE_AXES, **api)


FAMILIES = (
    _family("codegen", CodeGenConfig, ("codegen",), codegen, codegen_weight_map),
    _family("llama", LlamaConfig, tuple(VARIANTS), llama, llama_weight_map),
)
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
    """Logits (or final hidden states) and the updated cache; see `common.LinenModel.forward` for the arguments."""
    return family_of(config).forward(params, tokens, config, **kwargs)


def lm_head(params: Any, config: ModelConfig) -> tuple[jax.Array, jax.Array | None]:
    """(kernel [E, V], bias [V] or None) of the model's LM head."""
    return family_of(config).lm_head(params, config)


def cache_axes(config: ModelConfig) -> tuple[str | None, ...]:
    """Logical names of a cache entry's dims."""
    return family_of(config).cache_axes


def _on_config(field: str) -> Callable[..., Any]:
    """The plain function `field(config, *args)`: the Family field `field` of `config`'s family."""

    def call(config: ModelConfig, *args: Any, **kwargs: Any) -> Any:
        return getattr(family_of(config), field)(config, *args, **kwargs)

    call.__name__ = call.__qualname__ = field
    call.__doc__ = f"`{field}` of the config's family (see `Family`)."
    return call


init_params = _on_config("init_params")  # (config, rng) -> params
abstract_params = _on_config("abstract_params")  # (config) -> ShapeDtypeStructs
param_specs = _on_config("param_specs")  # (config) -> logical PartitionSpecs
init_cache = _on_config("init_cache")  # (config, batch, slots, dtype=None) -> cache
weight_map = _on_config("weight_map")  # (config) -> [Entry]
ignored_suffixes = _on_config("ignored_suffixes")  # (config) -> suffixes


def describe(config: ModelConfig) -> str:
    """A short human-readable size summary, e.g. 'qwen2: 28 layers, 1536 wide, 12 heads (2 kv)'."""
    kv = config.n_kv_heads
    heads = f"{config.n_head} heads" + (f" ({kv} kv)" if kv != config.n_head else "")
    return f"{config.model_type}: {config.n_layer} layers, {config.n_embd} wide, {heads}, vocab {config.vocab_size}"
