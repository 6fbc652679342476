"""A frozen config for the Llama architecture and its close relatives (Qwen2, Qwen3), read from
an HF `config.json` (legacy `rope_theta` / `rope_scaling` or transformers 5's `rope_parameters`)
or one of our YAML model files, and written back as the `config.json` transformers loads.

The variants differ only in data: which biases the attention projections carry, whether q and
k are RMS-normalised per head, and the HF architecture name (`VARIANTS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ilf_jax.errors import IlfError
from ilf_jax.model.config_base import ConfigBase, alias


@dataclasses.dataclass(frozen=True)
class Variant:
    """What one HF `model_type` of this architecture fixes."""

    architecture: str
    bias_from: str | None  # the HF field that switches q/k/v/o biases on (None: fixed below)
    qkv_bias: bool = False
    qk_norm: bool = False
    default_head_dim: int | None = None  # transformers' default when config.json has no head_dim


VARIANTS = {
    "llama": Variant("LlamaForCausalLM", bias_from="attention_bias"),
    "qwen2": Variant("Qwen2ForCausalLM", bias_from=None, qkv_bias=True),
    "qwen3": Variant("Qwen3ForCausalLM", bias_from="attention_bias", qk_norm=True, default_head_dim=128),
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """`rope_scaling`: "linear" divides positions by `factor`; "llama3" rescales the low
    frequencies by `factor` and interpolates the band between the two wavelength thresholds."""

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def to_hf(self) -> dict[str, Any]:
        if self.rope_type == "linear":
            return {"rope_type": "linear", "factor": self.factor}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


_ROPE_TYPES = ("linear", "llama3")


def _rope_scaling(d: dict[str, Any] | None, source: str) -> RopeScaling | None:
    if not d:
        return None
    kind = d.get("rope_type", d.get("type", "default"))
    if kind == "default":
        return None
    if kind not in _ROPE_TYPES:
        raise IlfError(f"{source}: rope_scaling.rope_type is {kind!r}; supported: default, {', '.join(_ROPE_TYPES)}")
    if "factor" not in d:
        raise IlfError(f"{source}: rope_scaling has no 'factor'")
    keys = {f.name for f in dataclasses.fields(RopeScaling)} - {"rope_type"}
    if kind == "llama3":
        missing = [k for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings") if k not in d]
        if missing:
            raise IlfError(f"{source}: rope_scaling (llama3) has no {missing[0]!r}")
    return RopeScaling(rope_type=kind, **{k: d[k] for k in keys if k in d})


@dataclasses.dataclass(frozen=True)
class LlamaConfig(ConfigBase):
    """Shape and numerics of a Llama-architecture model; field names follow HF's `LlamaConfig`.

    `n_layer`, `n_embd`, `n_head` and `n_positions` name the same sizes as CodeGen's config,
    so sampler, trainer and planner read either."""

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: as many as query heads
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False  # biases on q, k, v
    o_bias: bool = False  # bias on the output projection
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm of q and k (Qwen3)
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = 1
    eos_token_id: int = 2
    pad_token_id: int | None = None
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype of the parameters
    remat: bool = False  # recompute each block in the backward pass

    def __post_init__(self) -> None:
        if self.model_type not in VARIANTS:
            raise IlfError(f"model_type={self.model_type!r} is not one of {sorted(VARIANTS)}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise IlfError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        # Resolved defaults, so that configs read from either form compare equal.
        object.__setattr__(self, "head_dim", self.head_dim or self.hidden_size // self.num_attention_heads)
        object.__setattr__(self, "num_key_value_heads", self.num_key_value_heads or self.num_attention_heads)
        if self.num_attention_heads % self.n_kv_heads:
            raise IlfError(f"num_attention_heads={self.num_attention_heads} is not a multiple of num_key_value_heads={self.n_kv_heads}")
        if self.head_size % 2:
            raise IlfError(f"head_dim={self.head_size} must be even (rotary pairs)")
        if self.hidden_act != "silu":
            raise IlfError(f"hidden_act={self.hidden_act!r} is not supported (silu)")
        self.check_dtypes()

    # The sizes under the names the rest of the project uses for every family.
    n_layer = alias("num_hidden_layers")
    n_embd = alias("hidden_size")
    n_head = alias("num_attention_heads")
    n_kv_heads = alias("num_key_value_heads")
    n_positions = alias("max_position_embeddings")
    head_size = alias("head_dim")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> LlamaConfig:
        """Build from an HF config dict of a Llama, Qwen2 or Qwen3 model (extra HF keys ignored)."""
        model_type = d.get("model_type", "llama")
        variant = VARIANTS.get(model_type)
        if variant is None:
            raise IlfError(f"{source}: model_type is {model_type!r}, expected one of {sorted(VARIANTS)}")
        if d.get("use_sliding_window"):
            raise IlfError(f"{source}: use_sliding_window is true; sliding-window attention is not supported")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise IlfError(f"{source}: pretraining_tp={d['pretraining_tp']} is not supported (1)")
        known = {f.name for f in dataclasses.fields(cls)} - {"rope_scaling", "qkv_bias", "o_bias", "qk_norm"}
        kwargs = {k: v for k, v in d.items() if k in known and v is not None}
        kwargs.setdefault("head_dim", variant.default_head_dim)
        rope = d.get("rope_parameters") or {}
        if "rope_theta" in rope:
            kwargs["rope_theta"] = rope["rope_theta"]
        kwargs["rope_scaling"] = _rope_scaling(d.get("rope_scaling") or rope, source)
        bias = bool(d.get(variant.bias_from, False)) if variant.bias_from else variant.qkv_bias
        kwargs.update(qkv_bias=bias, o_bias=bias if variant.bias_from else False, qk_norm=variant.qk_norm)
        eos = kwargs.get("eos_token_id")
        if isinstance(eos, list):
            kwargs["eos_token_id"] = eos[0]
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise IlfError(f"{source}: {e}") from None
        except IlfError as e:
            raise IlfError(f"{source}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` content that transformers (4.x and 5.x) loads for this model type."""
        variant = VARIANTS[self.model_type]
        out: dict[str, Any] = {
            "architectures": [variant.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else self.rope_scaling.to_hf(),
            "hidden_act": self.hidden_act,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "attention_dropout": 0.0,
            "torch_dtype": self.param_dtype,
        }
        if variant.bias_from:
            out[variant.bias_from] = self.qkv_bias
        if self.model_type == "llama":
            out["mlp_bias"] = self.mlp_bias
        else:
            out["use_sliding_window"] = False
        return out
