"""A frozen CodeGen config, read from an HF `config.json` or one of our YAML model files."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import yaml

from ilf_jax.errors import IlfError
from ilf_jax.model.config_base import ConfigBase, alias, fixed


@dataclasses.dataclass(frozen=True)
class CodeGenConfig(ConfigBase):
    """Shape and numerics of a CodeGen model; field names follow HF's `CodeGenConfig`."""

    vocab_size: int = 51200
    n_positions: int = 2048
    n_embd: int = 1024
    n_layer: int = 20
    n_head: int = 16
    rotary_dim: int = 32
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype of the parameters
    remat: bool = False  # recompute each block in the backward pass

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise IlfError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % 4:
            raise IlfError(f"n_head={self.n_head} must be a multiple of 4 (CodeGen's mp_num=4 qkv layout)")
        if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            raise IlfError(f"rotary_dim={self.rotary_dim} must be even and at most head_dim={self.head_dim}")
        if self.activation_function != "gelu_new":
            raise IlfError(f"activation_function={self.activation_function!r} is not supported (gelu_new)")
        self.check_dtypes()

    # The names every family's config answers to.
    model_type = fixed("codegen")
    tie_word_embeddings = fixed(False)
    n_kv_heads = alias("n_head")
    head_size = alias("head_dim")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> CodeGenConfig:
        """Build from an HF config dict (extra HF keys are ignored; a non-CodeGen model is refused)."""
        model_type = d.get("model_type", "codegen")
        if model_type != "codegen":
            raise IlfError(f"{source}: model_type is {model_type!r}, expected 'codegen'")
        aliases = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head"}
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in d.items():
            key = aliases.get(key, key)
            if key in known and value is not None:
                kwargs[key] = value
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise IlfError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> CodeGenConfig:
        """Read an HF `config.json`, a directory holding one, or one of our YAML model configs."""
        d, source = read_model_file(path)
        return cls.from_dict(d, source=source)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` content that `transformers.CodeGenForCausalLM` loads."""
        return {
            "architectures": ["CodeGenForCausalLM"],
            "model_type": "codegen",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "rotary_dim": self.rotary_dim,
            "n_inner": self.n_inner,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation_function": self.activation_function,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": False,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "torch_dtype": self.param_dtype,
        }


def read_model_file(path: str | pathlib.Path) -> tuple[dict[str, Any], str]:
    """(fields, source name) of an HF `config.json`, a directory holding one, or a YAML model config."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise IlfError(f"{path}: config file not found")
    try:
        text = path.read_text()
        d = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise IlfError(f"{path}: not valid {'YAML' if path.suffix != '.json' else 'JSON'}: {e}".splitlines()[0]) from None
    if not isinstance(d, dict):
        raise IlfError(f"{path}: expected a mapping of config fields")
    return d, str(path)
