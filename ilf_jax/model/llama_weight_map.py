"""The map between HF Llama / Qwen2 / Qwen3 tensor names and our parameter paths.

HF projections are `nn.Linear` weights [out, in]; ours keep heads explicit: q [E, H, D],
k and v [E, KV, D], o [H, D, E]; MLP kernels and the LM head are plain transposes.
"""

from __future__ import annotations


from ilf_jax.model.llama_config import LlamaConfig
from ilf_jax.model.weight_map import Entry, same, transpose

# Buffers some checkpoints carry; they are recomputed, not loaded.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def ignored_suffixes(cfg: LlamaConfig) -> tuple[str, ...]:
    """Tensor names a checkpoint may hold that we do not load (a tied model's copy of the embedding)."""
    return IGNORED_SUFFIXES + (("lm_head.weight",) if cfg.tie_word_embeddings else ())


def _heads_in(heads: int, d: int, e: int) -> tuple:
    """[heads * D, E] <-> [E, heads, D]."""
    return (lambda w: w.T.reshape(e, heads, d)), (lambda w: w.reshape(e, heads * d).T)


def _bias(heads: int, d: int) -> tuple:
    return (lambda b: b.reshape(heads, d)), (lambda b: b.reshape(heads * d))


def weight_map(cfg: LlamaConfig) -> list[Entry]:
    """Every parameter of a model of this config, in HF's order."""
    e, h, kv, d, inner, v = cfg.hidden_size, cfg.n_head, cfg.n_kv_heads, cfg.head_size, cfg.intermediate_size, cfg.vocab_size
    o_to_jax = lambda w: w.T.reshape(h, d, e)  # noqa: E731
    o_to_hf = lambda w: w.reshape(h * d, e).T  # noqa: E731
    entries = [Entry(("embed",), "model.embed_tokens.weight", same, same, (v, e))]
    for i in range(cfg.n_layer):
        p, hf = f"layers_{i}", f"model.layers.{i}"
        a = f"{hf}.self_attn"
        entries.append(Entry((p, "input_norm", "scale"), f"{hf}.input_layernorm.weight", same, same, (e,)))
        for name, heads in (("q", h), ("k", kv), ("v", kv)):
            entries.append(Entry((p, "attn", name), f"{a}.{name}_proj.weight", *_heads_in(heads, d, e), (heads * d, e)))
            if cfg.qkv_bias:
                entries.append(Entry((p, "attn", f"{name}_bias"), f"{a}.{name}_proj.bias", *_bias(heads, d), (heads * d,)))
        entries.append(Entry((p, "attn", "o"), f"{a}.o_proj.weight", o_to_jax, o_to_hf, (e, h * d)))
        if cfg.o_bias:
            entries.append(Entry((p, "attn", "o_bias"), f"{a}.o_proj.bias", same, same, (e,)))
        if cfg.qk_norm:
            entries += [
                Entry((p, "attn", "q_norm", "scale"), f"{a}.q_norm.weight", same, same, (d,)),
                Entry((p, "attn", "k_norm", "scale"), f"{a}.k_norm.weight", same, same, (d,)),
            ]
        entries.append(Entry((p, "post_norm", "scale"), f"{hf}.post_attention_layernorm.weight", same, same, (e,)))
        for name, shape in (("gate", (inner, e)), ("up", (inner, e)), ("down", (e, inner))):
            entries.append(Entry((p, "mlp", name, "kernel"), f"{hf}.mlp.{name}_proj.weight", transpose, transpose, shape))
            if cfg.mlp_bias:
                entries.append(Entry((p, "mlp", name, "bias"), f"{hf}.mlp.{name}_proj.bias", same, same, shape[:1]))
    entries.append(Entry(("norm", "scale"), "model.norm.weight", same, same, (e,)))
    if not cfg.tie_word_embeddings:
        entries.append(Entry(("lm_head",), "lm_head.weight", transpose, transpose, (v, e)))
    return entries



