"""Sampling: cached decode vs full forward, parity with transformers, policies, stop rule (sharding: test_sample_engine.py)."""

from __future__ import annotations

import functools
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import TINY_CONFIGS, random_batch, save_hf, tiny_hf_model, tiny_tokenizer
from ilf_jax.data.formats import EOS, truncate_completion
from ilf_jax.model.codegen import forward
from ilf_jax.model.store import load_model, load_tokenizer
from ilf_jax.model.tokens import decode_continuation, encode_continuations
from ilf_jax.sample import Sampler, SamplingConfig
from ilf_jax.sample import slots, static
from ilf_jax.sample.policy import Policy
from ilf_jax.sample.sampler import completion_text
from ilf_jax.sample.stop import StopTables, byte_fallback_values, host_stop_index, initial_state, token_texts


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> pathlib.Path:
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _model(tmp_path_factory, tokenizer_dir, name: str, seed: int = 0):
    d = tmp_path_factory.mktemp(f"model_{name}")
    hf = tiny_hf_model(seed, **TINY_CONFIGS[name])
    save_hf(hf, d)
    config, params = load_model(d)
    return hf, config, params, load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def model_b(tmp_path_factory, tokenizer_dir):
    return _model(tmp_path_factory, tokenizer_dir, "b", seed=1)


@pytest.fixture(scope="module")
def model_c(tmp_path_factory, tokenizer_dir):
    return _model(tmp_path_factory, tokenizer_dir, "c", seed=2)


def _prompts(rng: np.random.Generator, vocab: int, lengths=(7, 3, 11, 5)) -> list[list[int]]:
    return [list(map(int, rng.integers(1, vocab, size=n))) for n in lengths]


def _no_stop_tables(vocab: int) -> dict:
    return StopTables.from_texts([], vocab).device()


# -- cached decode ------------------------------------------------------------------------------


def test_cached_decode_matches_full_forward(model_b):
    _, config, params, _ = model_b
    tokens, valid = random_batch(np.random.default_rng(0), 3, 9, config.vocab_size)
    st = slots.Static(config, Policy(temperature=0.0), max_new_tokens=10, eos_id=-1, stop_rule=False)
    prefill = jax.jit(functools.partial(static.prefill, st=st))
    step = jax.jit(functools.partial(static.step, st=st))
    keys = slots.row_keys(np.uint32(0), jnp.arange(3), jnp.zeros(3, jnp.int32))
    limits = jnp.full((3,), 10, jnp.int32)
    state, seen = static.generate_debug(prefill, step, params, tokens, valid, keys, limits, _no_stop_tables(config.vocab_size), collect_logits=True)
    out = np.asarray(state.out)
    assert len(seen) == 10 and (np.asarray(state.num) == 10).all()
    # One full forward over prompt + generated tokens gives the logits of every prefix at once.
    full_tokens = np.concatenate([tokens, out], axis=1)
    full_valid = np.concatenate([valid, np.ones_like(out, bool)], axis=1)
    full, _ = forward(params, full_tokens, config, valid=full_valid)
    expected = np.asarray(full)[:, tokens.shape[1] - 1 : -1]  # position P-1+t predicts token t
    got = np.stack([np.asarray(l) for l in seen], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert (out == expected.argmax(-1)).all()


# -- parity with transformers -------------------------------------------------------------------


def test_greedy_matches_transformers_generate(model_c):
    import torch

    hf, config, params, tok = model_c
    prompts = _prompts(np.random.default_rng(1), config.vocab_size)
    n_new = 32
    sampler = Sampler(params, config, tok)
    cfg = SamplingConfig(n=1, temperature=0.0, max_new_tokens=n_new, stop_rule=False, batch_size=4, buckets=(16,))
    ours = sampler.generate_tokens(prompts, cfg)
    p = max(map(len, prompts))
    ids = torch.tensor([[0] * (p - len(x)) + x for x in prompts])
    mask = torch.tensor([[0] * (p - len(x)) + [1] * len(x) for x in prompts])
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=0, eos_token_id=None)
    ref = ref[:, p:].numpy()
    assert ref.shape == (4, n_new)
    for row, r in zip(ours, ref):
        assert row.finish_reason in ("length", "eos")
        np.testing.assert_array_equal(row.tokens, r[: len(row.tokens)])
        if row.finish_reason == "length":
            assert len(row.tokens) == n_new


# -- policies ---------------------------------------------------------------------------------


def test_top_k_1_and_tiny_top_p_equal_greedy_and_debug_equals_loop(model_c):
    _, config, params, tok = model_c
    prompts = _prompts(np.random.default_rng(2), config.vocab_size)
    sampler = Sampler(params, config, tok)
    base = dict(n=2, max_new_tokens=12, stop_rule=False, batch_size=8, buckets=(16,))
    greedy = sampler.generate_tokens(prompts, SamplingConfig(temperature=0.0, **base))
    for kw in (dict(temperature=0.8, top_k=1), dict(temperature=1.3, top_p=1e-6)):
        rows = sampler.generate_tokens(prompts, SamplingConfig(**kw, **base))
        assert [r.tokens.tolist() for r in rows] == [g.tokens.tolist() for g in greedy]
    sampled = SamplingConfig(temperature=0.8, top_k=20, top_p=0.9, **base)
    loop = sampler.generate_tokens(prompts, sampled)
    debug = Sampler(params, config, tok, debug=True).generate_tokens(prompts, sampled)
    assert [r.tokens.tolist() for r in loop] == [r.tokens.tolist() for r in debug]
    assert loop[0].tokens.tolist() != loop[1].tokens.tolist()  # samples of one prompt differ
    # Results do not depend on the device batch a row lands in.
    small = sampler.generate_tokens(prompts, SamplingConfig(**{**base, "batch_size": 2}, temperature=0.8, top_k=20, top_p=0.9))
    assert [r.tokens.tolist() for r in small] == [r.tokens.tolist() for r in loop]


def test_warp_top_k_top_p():
    from ilf_jax.sample.policy import warp

    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda **kw: np.isfinite(np.asarray(warp(logits, Policy(**kw))))[0].tolist()  # noqa: E731
    assert kept(top_k=2) == [True, True, False, False, False]
    assert kept(top_p=0.5) == [True, False, False, False, False]
    assert kept(top_p=0.6) == [True, True, False, False, False]
    assert kept(top_p=0.86) == [True, True, True, True, False]
    assert kept(top_k=3, top_p=0.99) == [True, True, True, False, False]


def _chi2(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson chi-square with bins of expected count < 5 pooled; (statistic, degrees of freedom)."""
    n = counts.sum()
    exp = probs * n
    big = exp >= 5
    c = np.append(counts[big], counts[~big].sum())
    e = np.append(exp[big], exp[~big].sum())
    keep = e > 0
    return float(((c[keep] - e[keep]) ** 2 / e[keep]).sum()), int(keep.sum() - 1)


def _chi2_critical(df: int, z: float = 3.719) -> float:
    """Upper quantile of chi-square (Wilson-Hilferty); z = 3.719 is the 1e-4 normal tail."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_temperature_sampling_matches_softmax(model_b):
    _, config, params, tok = model_b
    temperature, n = 0.7, 3000
    prompt = list(map(int, np.random.default_rng(3).integers(1, config.vocab_size, size=6)))
    cfg = SamplingConfig(n=n, temperature=temperature, max_new_tokens=2, stop_rule=False, batch_size=n, buckets=(8,), seed=5)
    rows = Sampler(params, config, tok).generate_tokens([prompt], cfg)
    first = np.array([r.tokens[0] for r in rows])
    second = np.array([r.tokens[1] if len(r.tokens) > 1 else -1 for r in rows])

    def probs(prefix, t):
        logits, _ = forward(params, np.array([prefix], np.int32), config)
        return np.asarray(jax.nn.softmax(logits[0, -1] / t))

    p1 = probs(prompt, temperature)
    assert p1.max() < 0.8 and (p1 > 0.01).sum() >= 5, "the test needs a spread-out distribution"
    counts = np.bincount(first, minlength=config.vocab_size)
    stat, df = _chi2(counts, p1)
    assert stat < _chi2_critical(df), (stat, df)
    # The same test must reject a wrong temperature.
    for wrong in (1.0, 0.5):
        stat_w, df_w = _chi2(counts, probs(prompt, wrong))
        assert stat_w > _chi2_critical(df_w), (wrong, stat_w, df_w)
    # The second token (drawn through the KV cache) given the most frequent first token.
    a = int(np.bincount(first).argmax())
    sel = second[first == a]
    assert len(sel) > 200
    p2 = probs(prompt + [a], temperature)
    stat2, df2 = _chi2(np.bincount(sel[sel >= 0], minlength=config.vocab_size), p2)
    assert stat2 < _chi2_critical(df2), (stat2, df2)
    # An off-by-one in the cache (the prefix without token a) is rejected.
    stat_off, df_off = _chi2(np.bincount(sel[sel >= 0], minlength=config.vocab_size), probs(prompt, temperature))
    assert stat_off > _chi2_critical(df_off), (stat_off, df_off)


# -- stop rule --------------------------------------------------------------------------------

CRAFTED = [
    "    return a + b\nprint(add(1, 2))\n",
    "    x = 1\n\n# a comment\n",
    '    y = 2\n"""doc"""\n',
    "    if x:\n        return 1\n    return 2\n  \nfor i in range(3):\n",
    "    return xs[0]<|endoftext|>\ndef more():\n",
    "return 1\n    y\nz",
    "\n\nfoo",
    "    a = 1\n 1\n(b)\n_c\n9\nDone",
]


def _record_all(tables, st, token_rows: np.ndarray) -> static.State:
    """Feed [B, L] tokens through the decode bookkeeping (no model): the stop logic on device."""
    b, length = token_rows.shape

    def body(state, tok):
        return static._record(state, tok, tables, st), None

    state = static.State(
        cache=None,
        slot_valid=None,
        prompt_len=None,
        keys=None,
        last=jnp.zeros((b,), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        out=jnp.full((b, length), st.eos_id, jnp.int32),
        done=jnp.zeros((b,), bool),
        after_nl=initial_state(b),
        reason=jnp.zeros((b,), jnp.int32),
        num=jnp.zeros((b,), jnp.int32),
        limit=jnp.full((b,), length, jnp.int32),
    )
    return jax.jit(lambda s, t: jax.lax.scan(body, s, t)[0])(state, jnp.asarray(token_rows.T))


@pytest.fixture(scope="module", params=["bpe", "bpe-crossing", "sentencepiece"])
def stop_tokenizer(request, tokenizer_dir, tmp_path_factory):
    """The tiny byte-level BPE; one whose merges cross newlines and spaces; a SentencePiece-style one."""
    from helpers import crossing_bpe_tokenizer, sentencepiece_tokenizer

    build = {"bpe": None, "bpe-crossing": crossing_bpe_tokenizer, "sentencepiece": sentencepiece_tokenizer}[request.param]
    return load_tokenizer(tokenizer_dir if build is None else build(tmp_path_factory.mktemp(request.param)))


def test_stop_rule_on_crafted_and_random_sequences(stop_tokenizer):
    tok = stop_tokenizer
    vocab = len(tok) + 8  # as in CodeGen, the embedding has ids the tokenizer lacks: they decode to ''
    texts = token_texts(tok, vocab)
    assert texts[-1] == "" and tok.decode([vocab - 1, 5]) == tok.decode([5])
    byte_values = byte_fallback_values(tok, texts)
    assert (max(byte_values) == 255) == (tok.eos_token == "</s>")  # the SentencePiece-style one falls back to bytes
    tables = StopTables.from_texts(texts, vocab, byte_values).device()
    eos = tok.eos_token_id
    rng = np.random.default_rng(0)
    # The crafted completions as they follow a prompt, with this tokenizer's EOS.
    seqs = encode_continuations(tok, [t.replace(EOS, tok.eos_token) for t in CRAFTED])
    # Single-character tokens too, so that "\n" and the next character come from different tokens.
    seqs += [[tok.convert_tokens_to_ids(c) for c in tok.convert_ids_to_tokens(s)] for s in seqs[:4]]
    # Random sequences biased towards newlines, spaces, letters, EOS and non-ASCII bytes.
    hot = [i for i, t in enumerate(texts) if "\n" in t or t.strip() == "" or t[:1].isalpha() or t[:1] in "#\"(" or byte_values[i] >= 0x80]
    assert vocab - 1 in hot  # empty tokens between a newline and the next character
    for _ in range(300):
        pool = hot if rng.random() < 0.8 else list(range(vocab))
        seqs.append(list(map(int, rng.choice(pool, size=int(rng.integers(1, 30))))))
    length = max(map(len, seqs)) + 1
    rows = np.array([s + [eos] * (length - len(s)) for s in seqs], np.int32)  # (EOS-padded: all end)
    st = slots.Static(None, Policy(0.0), max_new_tokens=length, eos_id=eos, stop_rule=True)
    state = _record_all(tables, st, rows)
    num, reason, out = np.asarray(state.num), np.asarray(state.reason), np.asarray(state.out)
    assert len(set(num.tolist())) > 5  # rows finish independently
    sampler_decode = lambda ids: completion_text(tok, ids, eos, truncate_completion)  # noqa: E731
    for i, s in enumerate(seqs):
        full = list(rows[i])
        got = full[: num[i]]
        # Nothing after the stop token is returned.
        assert (out[i, num[i] :] == eos).all()
        assert out[i, : num[i]].tolist() == got
        # The device stop never falls before the reference cut, and the text is the reference's.
        assert sampler_decode(got) == sampler_decode(full), (i, tok.decode(full))
        k = host_stop_index(texts, full, byte_values)
        e = full.index(eos)
        if k is not None and k < e:
            assert reason[i] == slots.STOP and num[i] == k + 1
        else:
            assert reason[i] == slots.EOS and num[i] == e + 1
        # When stopped by the rule, the pattern really completes on the last token.
        if reason[i] == slots.STOP:
            text, prev = decode_continuation(tok, got), decode_continuation(tok, got[:-1])
            assert re.search(r'\n[A-Za-z#"]', text) and not re.search(r'\n[A-Za-z#"]', prev)
    # The crafted texts stop where expected.
    for i, text in enumerate(CRAFTED):
        assert sampler_decode(list(rows[i][: num[i]])) == truncate_completion(text), text


def test_stop_rule_end_to_end_is_a_prefix_of_the_unstopped_run(model_c):
    """With the model: rows stop early at the rule, and their text is the cut of the full generation."""
    _, config, params, tok = model_c
    vocab = config.vocab_size
    texts = token_texts(tok, vocab)
    # Push the random model towards newlines and letters so that rows end at different steps.
    params = jax.tree.map(lambda x: x, params)
    boost = np.zeros(vocab, np.float32)
    for i, t in enumerate(texts):
        if "\n" in t:
            boost[i] = 4.0
        elif t[:1].isalpha() or t[:1] == "#":
            boost[i] = 2.5
    params["lm_head"]["bias"] = params["lm_head"]["bias"] + boost
    prompts = ["def add(a, b):\n", "for i in range(10):\n    print(i)\ndef f(xs):\n"]
    sampler = Sampler(params, config, tok)
    base = dict(n=4, temperature=1.0, max_new_tokens=24, batch_size=8, buckets=(32,), seed=3)
    stopped = sampler.generate_tokens(sampler.encode(prompts, SamplingConfig(**base)), SamplingConfig(**base))
    full = sampler.generate_tokens(sampler.encode(prompts, SamplingConfig(**base)), SamplingConfig(**base, stop_rule=False))
    completions = sampler.sample(prompts, SamplingConfig(**base), postprocess=truncate_completion)
    reasons = {r.finish_reason for r in stopped}
    assert "stop" in reasons and len({len(r.tokens) for r in stopped}) > 2, [(r.finish_reason, len(r.tokens)) for r in stopped]
    for s, f, c in zip(stopped, full, completions):
        assert f.tokens[: len(s.tokens)].tolist() == s.tokens.tolist()
        full_text = tok.decode(f.tokens.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if s.finish_reason != "length":
            assert c.text == truncate_completion(full_text)
        assert (c.prompt_index, c.sample, c.finish_reason, c.num_tokens) == (s.prompt_index, s.sample, s.finish_reason, len(s.tokens))


# -- prompts ----------------------------------------------------------------------------------


def test_long_prompt_is_truncated_from_the_left(model_c):
    _, config, params, tok = model_c
    sampler = Sampler(params, config, tok)
    cfg = SamplingConfig(n=1, temperature=0.0, max_new_tokens=config.n_positions - 8, batch_size=2)
    ids = sampler.encode(["def f(x):\n    return x\n" * 4, "x"], cfg)
    assert sampler.truncated == [0] and len(ids[0]) == 8 and len(ids[1]) >= 1
    with pytest.raises(Exception, match="no room"):
        sampler.encode(["x"], SamplingConfig(max_new_tokens=config.n_positions))


def test_kth_largest_equals_lax_top_k_with_ties_infinities_and_signed_zeros():
    from ilf_jax.sample.policy import kth_largest

    rng = np.random.default_rng(0)
    for trial in range(60):
        vocab = int(rng.integers(2, 300))
        k = int(rng.integers(1, vocab))
        x = rng.standard_normal((3, vocab)).astype(np.float32) * 10.0 ** rng.integers(-3, 4)
        if trial % 3 == 0:
            x = np.round(x, 1)  # ties
        if trial % 5 == 0:
            x[:, : vocab // 3] = -np.inf
        if trial % 7 == 0:
            x[0] = 0.0
            x[0, ::2] = -0.0
        ours = np.asarray(kth_largest(jnp.asarray(x), k))
        ref = np.asarray(jax.lax.top_k(jnp.asarray(x), k)[0][:, -1:])
        assert np.array_equal(ours, ref), (trial, ours, ref)


def test_top_k_candidates_hold_the_rows_top_k_and_flag_ties_outside():
    from ilf_jax.sample.policy import top_k_candidates

    rng = np.random.default_rng(1)
    for trial in range(12):
        vocab = int(rng.integers(60, 3000))
        k = int(rng.integers(1, 60))
        x = rng.standard_normal((4, vocab)).astype(np.float32)
        if trial % 3 == 0:
            x = np.round(x, 1)  # ties, block maxima included
        if trial % 4 == 0:
            x[:, : vocab // 2] = -np.inf
        values, ids, kth, complete = (np.asarray(a) for a in top_k_candidates(jnp.asarray(x), k))
        assert np.array_equal(kth, np.asarray(jax.lax.top_k(jnp.asarray(x), k)[0][:, -1:])), trial
        for r in range(4):
            real = ids[r] < vocab
            assert np.array_equal(values[r][real], x[r, ids[r][real]]) and np.all(values[r][~real] == -np.inf)
            kept = set(ids[r][values[r] >= kth[r]].tolist())
            full = set(np.flatnonzero(x[r] >= kth[r]).tolist())
            assert kept <= full and (kept == full) == bool(complete[r]), (trial, r)
    # A maximum outside the chosen blocks that ties the k-th largest: incomplete.
    x = np.full((1, 800), -5.0, np.float32)
    x[0, ::100] = 1.0  # 8 blocks' maxima tie; k = 2 picks two of them
    _, _, kth, complete = top_k_candidates(jnp.asarray(x), 2)
    assert float(kth[0, 0]) == 1.0 and not bool(complete[0])


def test_top_k_draw_equals_the_draw_over_the_whole_vocabulary():
    """`choose` with top-k (over the candidate blocks, or the whole row after a tie) picks the token
    the inverse CDF over the whole filtered vocabulary picks for the same uniform."""
    from ilf_jax.sample.policy import _inverse_cdf, choose, warp

    rng = np.random.default_rng(2)
    for vocab, k, top_p, ties in ((5000, 50, 1.0, False), (5000, 50, 0.9, False), (700, 7, 1.0, True), (51200, 50, 1.0, False)):
        x = (rng.standard_normal((64, vocab)) * 3).astype(np.float32)
        if ties:
            x = np.round(x)
        keys = jax.random.key_data(jax.random.split(jax.random.key(vocab), 64))
        policy = Policy(temperature=0.8, top_k=k, top_p=top_p)
        ours = np.asarray(choose(jnp.asarray(x), keys, policy))
        u = jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32))(keys)
        ref = np.asarray(_inverse_cdf(warp(jnp.asarray(x), policy), u))
        assert np.array_equal(ours, ref), (vocab, k, top_p, np.flatnonzero(ours != ref))
        assert len(set(ours.tolist())) > 5
