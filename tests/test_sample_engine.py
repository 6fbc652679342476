"""The slot engine: the same completions as the static sampler (its oracle) whatever the slots, chunks
and mesh; one prefill per prompt; the ring cache against a full forward; bad settings refused early."""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import TINY_CONFIGS, save_hf, tiny_hf_model, tiny_tokenizer
from ilf_jax.errors import IlfError
from ilf_jax.model.codegen import forward
from ilf_jax.model.store import load_model, load_tokenizer
from ilf_jax.parallel import make_mesh
from ilf_jax.model.common import cache_bucket
from ilf_jax.sample import Sampler, SamplingConfig
from ilf_jax.sample import slots as sl
from ilf_jax.sample.policy import Policy
from ilf_jax.sample.static import generate_static
from ilf_jax.sample.stop import StopTables, token_texts

N_NEW = 40


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny model pushed towards newlines and letters, so that rows end by the stop rule at very different steps."""
    d = tmp_path_factory.mktemp("engine_model")
    save_hf(tiny_hf_model(2, **TINY_CONFIGS["c"]), d)
    tiny_tokenizer(d)
    config, params = load_model(d)
    tok = load_tokenizer(d)
    texts = token_texts(tok, config.vocab_size)
    boost = np.array([3.0 if "\n" in t else 1.5 if t[:1].isalpha() or t[:1] == "#" else 0.0 for t in texts], np.float32)
    params = jax.tree.map(lambda x: x, params)
    params["lm_head"]["bias"] = params["lm_head"]["bias"] + boost
    return config, params, tok


PROMPTS = ["def add(a, b):\n", "for i in range(10):\n    print(i)\ndef f(xs):\n", "x", '"""\nWrite a function\n"""\ndef g(s):\n    if', "def h():\n    return"]


def _tokens(rows) -> list[tuple[list[int], str]]:
    return [(r.tokens.tolist(), r.finish_reason) for r in rows]


@pytest.fixture(scope="module")
def sampler(model):
    config, params, tok = model
    return Sampler(params, config, tok)


@pytest.fixture(scope="module")
def oracle(sampler):
    """The static sampler's rows for both policies (the oracle of every test below)."""
    out = {}
    for name, cfg in _configs().items():
        ids = sampler.encode(PROMPTS, cfg)
        out[name] = (ids, generate_static(sampler, ids, cfg))
    return out


def _configs(**kw) -> dict[str, SamplingConfig]:
    base = dict(n=3, max_new_tokens=N_NEW, buckets=(16, 32), seed=4, **{"batch_size": 8, **kw})
    return {"greedy": SamplingConfig(temperature=0.0, **base), "sampled": SamplingConfig(temperature=0.8, top_k=50, top_p=0.9, **base)}


def test_oracle_rows_stop_at_very_different_lengths(oracle):
    for name, (_, rows) in oracle.items():
        lengths = [len(r.tokens) for r in rows]
        assert min(lengths) <= 10 and max(lengths) >= 30 and len(set(lengths)) >= 4, (name, lengths)
        assert "stop" in {r.finish_reason for r in rows}
    assert "length" in {r.finish_reason for r in oracle["greedy"][1]}
    assert len({len(r.tokens) for r in oracle["sampled"][1]}) >= 8
    sampled = oracle["sampled"][1]
    assert sampled[0].tokens.tolist() != sampled[1].tokens.tolist()  # samples of one prompt differ


@pytest.mark.parametrize("slots,chunk,name", [(2, 16, "sampled"), (4, 3, "greedy"), (8, 1, "sampled")])
def test_engine_equals_static_sampler(model, oracle, slots, chunk, name):
    config, params, tok = model
    sampler = Sampler(params, config, tok)
    cfg = _configs(batch_size=slots, chunk_steps=chunk)[name]
    ids, want = oracle[name]
    got = sampler.generate_tokens(ids, cfg)
    assert _tokens(got) == _tokens(want)
    stats = sampler.stats
    assert stats.prefills == len(PROMPTS)  # one prefill per prompt, even when its samples are placed in several chunks
    assert stats.rows == len(PROMPTS) * 3 and stats.tokens == sum(len(r.tokens) for r in want)
    # The cache follows the live rows: never longer than the longest row needs, shorter at times.
    assert stats.slots == slots and max(stats.cache_lengths) <= cache_bucket(max(map(len, ids)) + N_NEW - 1)
    assert min(stats.cache_lengths) < max(stats.cache_lengths)
    if slots >= 4:
        assert stats.row_steps < stats.slots * stats.steps  # the tail ran on fewer slots


def test_debug_loop_and_per_row_limits(model, sampler, oracle):
    """The Python step loop equals the while-loop chunks; per-row limits stop rows as the static sampler does."""
    config, params, tok = model
    ids, want = oracle["sampled"]
    cfg = _configs(chunk_steps=8)["sampled"]
    debug = Sampler(params, config, tok, debug=True).generate_tokens(ids, cfg)
    assert _tokens(debug) == _tokens(want)
    limits = [[1 + (7 * p + 5 * s) % N_NEW for s in range(3)] for p in range(len(ids))]
    got = sampler.generate_tokens(ids, cfg, limits=limits)
    assert _tokens(got) == _tokens(generate_static(sampler, ids, cfg, limits=limits))
    assert all(len(r.tokens) <= limits[r.prompt_index][r.sample] for r in got)
    assert any(r.finish_reason == "length" and len(r.tokens) < N_NEW for r in got)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_sharded_engine_equals_static_sampler(model, oracle, shape):
    config, params, tok = model
    mesh = make_mesh(shape)
    sampler = Sampler(params, config, tok, mesh)
    cfg = _configs(batch_size=8, chunk_steps=4)["sampled"]
    ids, want = oracle["sampled"]
    assert _tokens(sampler.generate_tokens(ids, cfg)) == _tokens(want)
    leaf = sampler.params["h_0"]["attn"]["qkv"]
    assert len(leaf.sharding.device_set) == 8


@pytest.mark.parametrize("head_rows", [False, True])
def test_ring_cache_decode_matches_full_forward(model, head_rows):
    """Rows placed at different times, across the ring's wrap, over a resize: each step's logits are
    those of a full forward over the row's prompt and tokens so far (LM head as [E, V] or as rows)."""
    config, params, _ = model
    st = sl.Static(config, Policy(temperature=0.0), max_new_tokens=30, eos_id=-1, stop_rule=False, head_rows=head_rows)
    tables = StopTables.from_texts([], config.vocab_size).device()
    prefill = jax.jit(functools.partial(sl.prefill_prompt, st=st))
    place = jax.jit(functools.partial(sl.place, st=st))
    step = jax.jit(functools.partial(sl.decode_step, st=st))
    head = sl.decode_head(params, st)  # given on odd steps; computed in the step (None) on even ones
    rng = np.random.default_rng(0)
    prompts = [list(map(int, rng.integers(1, config.vocab_size, size=n))) for n in (5, 9, 3)]
    admit = {0: 0, 4: 1, 9: 2}  # step -> the prompt placed into slot i just before it
    state = sl.empty_slots(config, 3, 16)
    seqs: dict[int, list[int]] = {}
    seen: dict[int, list[np.ndarray]] = {}
    for t in range(24):
        if t in admit:
            i, p = admit[t], prompts[admit[t]]
            tokens, valid = np.zeros((1, 16), np.int32), np.zeros((1, 16), bool)
            tokens[0, 16 - len(p) :], valid[0, 16 - len(p) :] = p, True
            kv, logits = prefill(params, tokens, valid)
            args = (np.int32(len(p)), np.array([i], np.int32), np.uint32(0), np.int32(i), np.zeros(1, np.int32), np.full(1, 30, np.int32))
            state, first = place(state, kv, logits, sl.Placement(*args), tables)
            seqs[i], seen[i] = p + [int(first[0])], []
        if t == 10:  # slot 0 would outgrow 16 columns at the next step
            cache = [{k: sl.resize_layer(v, state.col, 48) for k, v in layer.items()} for layer in state.cache]
            state = state.replace(cache=cache, col=jnp.zeros((), jnp.int32))
        state, token, logits = step(params, state, tables, head if t % 2 else None)
        for i in seqs:
            seqs[i].append(int(token[i]))
            seen[i].append(np.asarray(logits[i]))
    assert int(state.length[0]) == len(seqs[0]) - 1 > 16  # slot 0's row outgrew the first ring
    for i, seq in seqs.items():
        full, _ = forward(params, np.array([seq], np.int32), config)
        # The step's logits at the row's position j predict token j + 1 (the last two tokens came from decode steps).
        expected = np.asarray(full)[0, len(seq) - 1 - len(seen[i]) : -1]
        np.testing.assert_allclose(np.stack(seen[i]), expected, atol=1e-4, rtol=0)
        assert seq[len(seq) - len(seen[i]) :] == expected.argmax(-1).tolist()


def test_bad_settings_fail_before_compiling(model):
    config, params, tok = model
    sampler = Sampler(params, config, tok, make_mesh((2, 2, 2)))
    with pytest.raises(IlfError, match="batch_size=6 decode slots do not divide over the mesh's 4 batch shards"):
        sampler.sample(["def f():\n"], SamplingConfig(n=2, batch_size=6, max_new_tokens=8))
    with pytest.raises(IlfError, match="leaves no room for a prompt"):
        sampler.generate_tokens([[1, 2]], SamplingConfig(n=2, batch_size=8, max_new_tokens=config.n_positions))
    with pytest.raises(IlfError, match="n=0"):
        SamplingConfig(n=0)
    assert not sampler.engine._fns  # nothing was compiled
