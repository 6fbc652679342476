"""The sampling engine's device side: decode slots over a ring KV cache, as pure functions.

A slot holds one row (a prompt's sample). The cache is the model family's (per layer {"k", "v"}
[slots, kv_heads, L, head_dim]) used as a ring whose write column `col` is shared by every slot:
a decode step writes each slot's new key at `col`, and a slot's `length` valid keys are the
columns just before it (mod L). Attention does not depend on key order, so a slot placed at
any time attends over exactly its prompt and its own generated tokens. `L` is a bucket just
above the longest live row (plus a chunk of steps); `resize_layer` moves the ring into another
bucket between chunks, so a step reads about as much cache as the live rows hold.

- `prefill_prompt` runs one (left-padded) prompt once: its KV and next-token logits;
- `place` copies that KV into the slots of some of its samples and draws their first tokens;
- `decode_chunk` runs up to k steps over all slots in a `lax.while_loop`, with per-slot done
  masks and the on-device stop rule, and returns the tokens it drew.

A row's t-th token is drawn with `fold_in(row_key, t)` and its row key is
`fold_in(fold_in(PRNGKey(seed), key_id), sample)`, so a row's tokens depend only on
(seed, key_id, sample) and its prompt, never on its slot or on when it was admitted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ilf_jax.model.common import Cache, Constrain, causal_mask, lm_head_logits, no_constraint, positions_from_mask
from ilf_jax.model.family import ModelConfig, cache_axes, forward, init_cache, lm_head
from ilf_jax.sample.policy import Policy, choose
from ilf_jax.sample.stop import initial_state, stop_update

RUNNING, EOS, STOP, LENGTH = 0, 1, 2, 3
REASONS = {EOS: "eos", STOP: "stop", LENGTH: "length"}


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything the compiled functions specialise on (besides array shapes), the activation-sharding hook included."""

    config: ModelConfig
    policy: Policy
    max_new_tokens: int
    eos_id: int
    stop_rule: bool = True
    constrain: Constrain = no_constraint
    head_rows: bool = False  # decode with the LM head as [V, E] rows (`decode_head`)


@struct.dataclass
class Slots:
    cache: Cache  # per layer {"k", "v"} [S, kv_heads, L, head_dim], a ring written at `col`
    col: jax.Array  # () int32: the column the next step writes, for every slot
    length: jax.Array  # [S] int32: valid keys of the slot (the columns just before `col`)
    keys: jax.Array  # [S, 2] uint32 row keys
    last: jax.Array  # [S] int32: the token to feed next
    num: jax.Array  # [S] int32: tokens the row generated (the EOS / stop token included)
    limit: jax.Array  # [S] int32: the row's max new tokens
    done: jax.Array  # [S] bool (free slots are done)
    after_nl: jax.Array  # [S] int8 stop state (`stop.AFTER_NEWLINE`: the row's text so far ends with a newline)
    reason: jax.Array  # [S] int32: RUNNING / EOS / STOP / LENGTH


def row_keys(seed: jax.Array, key_ids: jax.Array, samples: jax.Array) -> jax.Array:
    """[B, 2] uint32 keys: fold_in(fold_in(PRNGKey(seed), key_id), sample)."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i, s: jax.random.fold_in(jax.random.fold_in(base, i), s))(key_ids, samples)


def draw(logits: jax.Array, keys: jax.Array, index: jax.Array, policy: Policy) -> jax.Array:
    """Each row's token number `index` [B] from its logits [B, V] and row key [B, 2]."""
    return choose(logits, jax.vmap(jax.random.fold_in)(keys, index), policy)


def advance(token, done, num, limit, after_nl, reason, tables: dict[str, jax.Array], st: Static):
    """Append `token` [B] to every live row: (token, done, num, after_nl, reason, live); done rows get EOS."""
    token = jnp.where(done, st.eos_id, token)
    live = ~done
    hit_eos = live & (token == st.eos_id)
    stop, after_nl = stop_update(tables, token, after_nl)
    hit_stop = live & ~hit_eos & stop if st.stop_rule else jnp.zeros_like(live)
    num = num + live.astype(jnp.int32)
    reason = jnp.where(hit_eos, EOS, jnp.where(hit_stop, STOP, reason))
    done = done | hit_eos | hit_stop
    reason = jnp.where(~done & (num >= limit), LENGTH, reason)
    return token, done | (num >= limit), num, after_nl, reason, live


def constrain_cache(cache: Cache, st: Static) -> Cache:
    """The cache with `st.constrain` applied to every entry (the model family's cache axes)."""
    names = cache_axes(st.config)
    return [{k: st.constrain(v, names) for k, v in layer.items()} for layer in cache]


def empty_slots(config: ModelConfig, slots: int, length: int) -> Slots:
    """`slots` free slots over a ring of `length` columns."""
    zeros = jnp.zeros((slots,), jnp.int32)
    return Slots(
        cache=init_cache(config, slots, length),
        col=jnp.zeros((), jnp.int32),
        length=zeros,
        keys=jnp.zeros((slots, 2), jnp.uint32),
        last=zeros,
        num=zeros,
        limit=zeros,
        done=jnp.ones((slots,), bool),
        after_nl=initial_state(slots),
        reason=zeros,
    )


def prefill_prompt(params: Any, tokens: jax.Array, valid: jax.Array, st: Static) -> tuple[Cache, jax.Array]:
    """One left-padded prompt [1, P] (`valid` marks real tokens) -> its KV [1, kv_heads, P, head_dim] and logits [1, V]."""
    cache = constrain_cache(init_cache(st.config, 1, tokens.shape[1]), st)
    logits, cache = forward(
        params, tokens, st.config, positions=positions_from_mask(valid), mask=causal_mask(valid), cache=cache, cache_index=0, constrain=st.constrain, last_only=True
    )
    return cache, logits[:, -1]


def _ring_strip(x: jax.Array, length: int, col: jax.Array) -> jax.Array:
    """A prompt's KV [1, H, P, D] (real keys last) as a ring row of `length` columns ending just before `col`."""
    p = x.shape[2]
    x = x[:, :, p - length :] if p >= length else jnp.pad(x, ((0, 0), (0, 0), (length - p, 0), (0, 0)))
    return jnp.roll(x, col, axis=2)


@struct.dataclass
class Placement:
    """Which slots one prompt's samples go to: `m` rows, each a slot id (>= S: skipped), a sample
    number and a max-new-tokens limit, keyed by (seed, key_id, sample)."""

    prompt_len: jax.Array  # () int32: the prompt's real tokens
    slot_ids: jax.Array  # [m] int32
    seed: jax.Array  # () uint32
    key_id: jax.Array  # () int32
    samples: jax.Array  # [m] int32
    limits: jax.Array  # [m] int32


def place(slots: Slots, kv: Cache, logits: jax.Array, rows: Placement, tables: dict[str, jax.Array], st: Static) -> tuple[Slots, jax.Array]:
    """Copy one prompt's KV into the slots of `rows` and draw each row's first token: (slots, first tokens [m])."""
    m, length = rows.slot_ids.shape[0], slots.cache[0]["k"].shape[2]
    keys = row_keys(rows.seed, jnp.broadcast_to(rows.key_id, (m,)), rows.samples)
    token = draw(jnp.broadcast_to(logits, (m, logits.shape[-1])), keys, jnp.zeros((m,), jnp.int32), st.policy)
    false, zero = jnp.zeros((m,), bool), jnp.zeros((m,), jnp.int32)
    token, done, num, after_nl, reason, _ = advance(token, false, zero, rows.limits, initial_state(m), zero, tables, st)

    def put(a: jax.Array, v: jax.Array) -> jax.Array:
        return a.at[rows.slot_ids].set(v.astype(a.dtype), mode="drop")

    cache = [
        {k: put(layer[k], jnp.broadcast_to(_ring_strip(new[k], length, slots.col), (m, *layer[k].shape[1:]))) for k in layer}
        for layer, new in zip(slots.cache, kv)
    ]
    slots = slots.replace(
        cache=constrain_cache(cache, st),
        length=put(slots.length, jnp.broadcast_to(rows.prompt_len, (m,))),
        keys=put(slots.keys, keys),
        last=put(slots.last, token),
        num=put(slots.num, num),
        limit=put(slots.limit, rows.limits),
        done=put(slots.done, done),
        after_nl=put(slots.after_nl, after_nl),
        reason=put(slots.reason, reason),
    )
    return slots, token


Head = tuple[jax.Array, jax.Array | None]  # (kernel, bias) of the LM head as a decode step multiplies by it


def decode_head(params: Any, st: Static) -> Head:
    """The LM head a decode step multiplies by: (kernel, bias), the kernel as [V, E] rows with `st.head_rows`.

    On CPU a [slots, E] x [V, E]^T product streams the vocabulary's weights about 1.5x faster than
    [slots, E] x [E, V] (the whole LM head is read every step). The engine materialises the rows once
    per model (a transpose of the LM head costs about a decode step) and passes them to every chunk;
    without `head_rows` the steps compute it themselves, and XLA folds it into the product (no copy).
    """
    kernel, bias = lm_head(params, st.config)
    return (kernel.T if st.head_rows else kernel), bias


def decode_step(
    params: Any, slots: Slots, tables: dict[str, jax.Array], head: Head | None, st: Static
) -> tuple[Slots, jax.Array, jax.Array]:
    """Feed every slot's last token at column `col` and draw the next: (slots, tokens [S], logits [S, V]).

    `head` is `decode_head(params, st)` computed beforehand, or None to compute it here."""
    length = slots.cache[0]["k"].shape[2]
    behind = (slots.col - jnp.arange(length)) % length  # 0 at `col`, 1 just before it, ...
    mask = behind[None, :] <= slots.length[:, None]
    hidden, cache = forward(
        params,
        slots.last[:, None],
        st.config,
        positions=slots.length[:, None],
        mask=mask[:, None, :],
        cache=slots.cache,
        cache_index=slots.col,
        constrain=st.constrain,
        hidden_only=True,
    )
    kernel, bias = decode_head(params, st) if head is None else head
    logits = st.constrain(lm_head_logits(hidden[:, 0], kernel, bias, st.config, rows=st.head_rows), ("act_batch", "act_vocab"))
    token = draw(logits, slots.keys, slots.num, st.policy)
    token, done, num, after_nl, reason, live = advance(token, slots.done, slots.num, slots.limit, slots.after_nl, slots.reason, tables, st)
    slots = slots.replace(
        cache=constrain_cache(cache, st),
        col=(slots.col + 1) % length,
        length=slots.length + live.astype(jnp.int32),
        last=token,
        num=num,
        done=done,
        after_nl=after_nl,
        reason=reason,
    )
    return slots, token, logits


def chunk_continues(step: jax.Array, slots: Slots, steps: int, exit_free: jax.Array) -> jax.Array:
    """Run another step: fewer than `steps` so far, a live slot left, and fewer than `exit_free` slots done."""
    done = slots.done.astype(jnp.int32).sum()
    return (step < steps) & (done < slots.done.shape[0]) & (done < exit_free)


def decode_chunk(
    params: Any, slots: Slots, tables: dict[str, jax.Array], head: Head | None, exit_free: jax.Array, st: Static, steps: int
) -> tuple[Slots, jax.Array, jax.Array]:
    """Up to `steps` decode steps in a `lax.while_loop`: (slots, tokens [S, steps] (EOS-filled), steps run).

    `head` as for `decode_step`."""
    out = jnp.full((slots.done.shape[0], steps), st.eos_id, jnp.int32)

    def body(carry):
        i, s, out = carry
        s, token, _ = decode_step(params, s, tables, head, st)
        return i + 1, s, jax.lax.dynamic_update_slice(out, token[:, None], (0, i))

    i, slots, out = jax.lax.while_loop(lambda c: chunk_continues(c[0], c[1], steps, exit_free), body, (jnp.zeros((), jnp.int32), slots, out))
    return slots, out, i


def resize_layer(x: jax.Array, col: jax.Array, length: int) -> jax.Array:
    """One cache array [S, H, L, D] (a ring written at `col`) as a ring of `length` columns written at 0.

    Keeps the last `length` columns before `col` (the caller makes sure every live row fits).
    """
    x = jnp.roll(x, -col, axis=2)
    old = x.shape[2]
    return x[:, :, old - length :] if length <= old else jnp.pad(x, ((0, 0), (0, 0), (length - old, 0), (0, 0)))


def take_slots(slots: Slots, index: jax.Array) -> Slots:
    """The slots `index` [m] (in that order) as a set of m slots over the same ring."""
    return jax.tree.map(lambda a: a[index] if a.ndim else a, slots)
