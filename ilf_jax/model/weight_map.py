"""The declarative map between HF CodeGen tensor names and our parameter paths, with transforms.

Each entry: our path, the HF name, and a pair of pure functions (HF array -> ours, ours -> HF).
CodeGen's fused `qkv_proj` weight [3E, E] is laid out as mp_num = 4 blocks, each holding
q, v, k (in that order) for n_head / 4 heads; ours is [E, 3 (q, k, v), heads, head_dim].
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ilf_jax.model.config import CodeGenConfig

MP_NUM = 4
_HF_PART = (0, 2, 1)  # our q, k, v are HF's block parts 0, 2, 1 (HF orders q, v, k)

# Non-parameter buffers that old CodeGen checkpoints carry; they are recomputed, not loaded.
IGNORED_SUFFIXES = (".attn.causal_mask", ".attn.masked_bias", ".attn.bias", ".attn.embed_positions")


@dataclasses.dataclass(frozen=True)
class Entry:
    path: tuple[str, ...]
    hf_name: str
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: tuple[int, ...]


def same(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    return x.T


def leading_axis(entry: Entry) -> int | None:
    """Which of our array's axes is the HF tensor's leading axis, for entries whose transform
    commutes with slicing that axis (plain and transposed); None for the reshuffled ones (qkv, out)."""
    if entry.to_jax is same:
        return 0
    if entry.to_jax is transpose and len(entry.hf_shape) == 2:
        return 1
    return None


def _qkv_entries(cfg: CodeGenConfig) -> tuple[Callable, Callable]:
    e, h, d = cfg.n_embd, cfg.n_head, cfg.head_dim
    per_block = h // MP_NUM

    def to_jax(w: np.ndarray) -> np.ndarray:
        blocks = w.reshape(MP_NUM, 3, per_block, d, e)[:, _HF_PART]
        return blocks.transpose(4, 1, 0, 2, 3).reshape(e, 3, h, d)

    def to_hf(w: np.ndarray) -> np.ndarray:
        blocks = w.reshape(e, 3, MP_NUM, per_block, d)[:, _HF_PART]
        return blocks.transpose(2, 1, 3, 4, 0).reshape(3 * e, e)

    return to_jax, to_hf


def weight_map(cfg: CodeGenConfig) -> list[Entry]:
    """Every parameter of a CodeGen model of this config, in HF's order."""
    e, h, d, inner, v = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.inner_dim, cfg.vocab_size
    qkv_to_jax, qkv_to_hf = _qkv_entries(cfg)
    out_to_jax = lambda w: w.T.reshape(h, d, e)  # noqa: E731
    out_to_hf = lambda w: w.reshape(h * d, e).T  # noqa: E731
    entries = [Entry(("wte",), "transformer.wte.weight", same, same, (v, e))]
    for i in range(cfg.n_layer):
        p, hf = f"h_{i}", f"transformer.h.{i}"
        entries += [
            Entry((p, "ln_1", "scale"), f"{hf}.ln_1.weight", same, same, (e,)),
            Entry((p, "ln_1", "bias"), f"{hf}.ln_1.bias", same, same, (e,)),
            Entry((p, "attn", "qkv"), f"{hf}.attn.qkv_proj.weight", qkv_to_jax, qkv_to_hf, (3 * e, e)),
            Entry((p, "attn", "out"), f"{hf}.attn.out_proj.weight", out_to_jax, out_to_hf, (e, e)),
            Entry((p, "mlp", "fc_in", "kernel"), f"{hf}.mlp.fc_in.weight", transpose, transpose, (inner, e)),
            Entry((p, "mlp", "fc_in", "bias"), f"{hf}.mlp.fc_in.bias", same, same, (inner,)),
            Entry((p, "mlp", "fc_out", "kernel"), f"{hf}.mlp.fc_out.weight", transpose, transpose, (e, inner)),
            Entry((p, "mlp", "fc_out", "bias"), f"{hf}.mlp.fc_out.bias", same, same, (e,)),
        ]
    entries += [
        Entry(("ln_f", "scale"), "transformer.ln_f.weight", same, same, (e,)),
        Entry(("ln_f", "bias"), "transformer.ln_f.bias", same, same, (e,)),
        Entry(("lm_head", "kernel"), "lm_head.weight", transpose, transpose, (v, e)),
        Entry(("lm_head", "bias"), "lm_head.bias", same, same, (v,)),
    ]
    return entries


def ignored_suffixes(cfg: CodeGenConfig) -> tuple[str, ...]:
    """Tensor names a CodeGen checkpoint may hold that we do not load."""
    return IGNORED_SUFFIXES
