"""The sampling API: `Sampler` (holds the model, caches compiled functions) and `sample`.

Rows are (prompt, sample) pairs. They are sorted by prompt length, chunked into device batches
of `batch_size` rows, padded on the left to a length bucket (so that a few compilations serve
every prompt), generated with `decode.generate`, and put back in (prompt_index, sample) order.
A row's key is `fold_in(fold_in(PRNGKey(seed), key_id), sample)` with `key_id` the prompt's
index (or a caller-given id), so results do not depend on the batch a row lands in.

Prompts longer than `n_positions - max_new_tokens` tokens are truncated from the left (as the
reference sampler did, with `truncation_side="left"`), with a logged warning; the indices of
the truncated prompts are in `Sampler.truncated` after each call.

Multi-process (one process per host, a mesh over every process's devices): `sample` is an SPMD
call that every process makes with the same prompts. Each process tokenizes and decodes only its
share of the prompts (merged with `allgather_objects`), builds the same host batches, places them
as global arrays, and gets every completion back.

The returned text is the generated text up to the EOS token, decoded in context (after the
prompt: `ilf_jax.model.tokens`), cut by `ilf_jax.data.formats.truncate_completion`, i.e. exactly
the paper's program body; the on-device stop rule only ends generation early and never before
that cut.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from ilf_jax.errors import IlfError
from ilf_jax.model.tokens import decode_continuation
from ilf_jax.model.family import ModelConfig
from ilf_jax.parallel.distributed import allgather_objects, fetch, process_share, put_global
from ilf_jax.parallel.sharding import DEFAULT_RULES, Rules, batch_sharding, constrainer, param_shardings, replicated
from ilf_jax.sample import decode
from ilf_jax.sample.policy import Policy
from ilf_jax.sample.stop import StopTables

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. `temperature=0` is greedy (then every sample of a prompt is the same)."""

    n: int = 1  # samples per prompt
    temperature: float = 0.8
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    max_new_tokens: int = 1024  # the reference's bound
    seed: int = 0
    stop_rule: bool = True  # stop at the end of the generated function (EOS always stops)
    batch_size: int = dataclasses.field(default=32, metadata={"identity": False})  # rows (prompt x sample) per device call; results do not depend on it
    buckets: tuple[int, ...] = DEFAULT_BUCKETS  # prompt lengths are padded up to one of these

    def __post_init__(self) -> None:
        if self.n < 1:
            raise IlfError(f"n={self.n}: need at least one sample per prompt")
        if self.temperature < 0:
            raise IlfError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise IlfError(f"top_k={self.top_k} must be >= 0 (0 is off)")
        if not 0.0 < self.top_p <= 1.0:
            raise IlfError(f"top_p={self.top_p} must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise IlfError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.batch_size < 1:
            raise IlfError(f"batch_size={self.batch_size} must be >= 1")
        if any(b < 1 for b in self.buckets):
            raise IlfError(f"buckets={self.buckets} must be positive lengths")

    @property
    def policy(self) -> Policy:
        if self.temperature == 0.0:
            return Policy(temperature=0.0)
        return Policy(temperature=float(self.temperature), top_k=int(self.top_k), top_p=float(self.top_p))


@dataclasses.dataclass(frozen=True)
class Completion:
    """One sample: `text` is the generated text after the prompt, cut by the paper's rule.

    `finish_reason` is "eos", "stop" (end of the function) or "length" (max_new_tokens);
    `num_tokens` counts the tokens the model generated for it, the EOS / stop token included.
    """

    prompt_index: int
    sample: int
    text: str
    finish_reason: str
    num_tokens: int


@dataclasses.dataclass(frozen=True)
class RowResult:
    """Raw output of one row: its generated tokens (up to and including the EOS / stop token)."""

    prompt_index: int
    sample: int
    tokens: np.ndarray
    finish_reason: str


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class Sampler:
    """Samples completions from one model; compiled functions are cached across calls.

    `params` may live anywhere; with a `mesh` they are placed by `param_shardings` (a no-op when
    already so placed), rows are sharded over ('data', 'fsdp') and heads over 'tensor'.
    `debug=True` runs the same step function from a Python loop instead of `lax.while_loop`.
    """

    def __init__(
        self,
        params: Any,
        config: ModelConfig,
        tokenizer: Any,
        mesh: Mesh | None = None,
        *,
        rules: Rules = DEFAULT_RULES,
        debug: bool = False,
    ):
        self.config, self.tokenizer, self.mesh, self.rules, self.debug = config, tokenizer, mesh, rules, debug
        if mesh is not None:
            params = put_global(params, param_shardings(config, mesh, rules))
        self.params = params
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_id = int(config.eos_token_id if eos is None else eos)
        self.pad_id = self.eos_id
        tables = StopTables.from_tokenizer(tokenizer, config.vocab_size).device()
        self.tables = tables if mesh is None else put_global(tables, replicated(mesh))
        self._fns: dict[tuple, Callable] = {}
        self.truncated: list[int] = []

    # -- compiled functions -------------------------------------------------------------------
    @property
    def batch_shards(self) -> int:
        if self.mesh is None:
            return 1
        return math.prod(self.mesh.shape[a] for a in ("data", "fsdp"))

    def _static(self, cfg: SamplingConfig) -> decode.Static:
        return decode.Static(self.config, cfg.policy, cfg.max_new_tokens, self.eos_id, cfg.stop_rule)

    def _constrain(self):
        return decode.no_constraint if self.mesh is None else constrainer(self.mesh, self.rules)

    def _shardings(self):
        if self.mesh is None:
            return None
        m = self.mesh
        return dict(params=param_shardings(self.config, m, self.rules), b2=batch_sharding(m, 2, self.rules), b1=batch_sharding(m, 1, self.rules), rep=replicated(m))

    def _generate_fn(self, st: decode.Static, batch: int, length: int) -> Callable:
        """jit(tokens, valid, key_ids, samples, seed) -> (out, num, reason) for one batch shape."""
        key = ("gen", st, batch, length)
        if key not in self._fns:
            constrain = self._constrain()

            def run(params, tokens, valid, key_ids, samples, seed, tables):
                keys = decode.row_keys(seed, key_ids, samples)
                state = decode.generate(params, tokens, valid, keys, tables, st, constrain)
                return state.out, state.num, state.reason

            sh = self._shardings()
            if sh is None:
                self._fns[key] = jax.jit(run)
            else:
                self._fns[key] = jax.jit(
                    run,
                    in_shardings=(sh["params"], sh["b2"], sh["b2"], sh["b1"], sh["b1"], sh["rep"], sh["rep"]),
                    out_shardings=(sh["b2"], sh["b1"], sh["b1"]),
                )
        return self._fns[key]

    def _debug_fns(self, st: decode.Static) -> tuple[Callable, Callable, Callable]:
        key = ("debug", st)
        if key not in self._fns:
            constrain = self._constrain()
            self._fns[key] = (
                jax.jit(decode.row_keys),
                jax.jit(functools.partial(decode.prefill, st=st, constrain=constrain)),
                jax.jit(functools.partial(decode.step, st=st, constrain=constrain)),
            )
        return self._fns[key]

    # -- host side ----------------------------------------------------------------------------
    def max_prompt_len(self, cfg: SamplingConfig) -> int:
        limit = self.config.n_positions - cfg.max_new_tokens
        if limit < 1:
            raise IlfError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt (n_positions={self.config.n_positions})")
        return limit

    def encode(self, prompts: Sequence[str], cfg: SamplingConfig) -> list[list[int]]:
        """Token ids of each prompt, truncated from the left to fit the context (indices in `self.truncated`)."""
        limit = self.max_prompt_len(cfg)
        ids = self._tokenize(list(prompts))
        self.truncated = [i for i, t in enumerate(ids) if len(t) > limit]
        if self.truncated:
            log.warning("%d prompt(s) longer than %d tokens were truncated from the left: indices %s", len(self.truncated), limit, self.truncated[:10])
        out = []
        for t in ids:
            if not t:
                raise IlfError("an empty prompt cannot be sampled from (it has no tokens)")
            out.append(list(t[-limit:]))
        return out

    @property
    def _multiprocess(self) -> bool:
        return self.mesh is not None and jax.process_count() > 1

    def _tokenize(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of `prompts`; with several processes each tokenizes its share, then all merge."""
        if not self._multiprocess:
            return self.tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
        share = process_share(len(prompts))
        mine = self.tokenizer(prompts[share.start : share.stop], add_special_tokens=False)["input_ids"] if len(share) else []
        return [list(t) for part in allgather_objects([list(t) for t in mine]) for t in part]

    def _bucket(self, length: int, cfg: SamplingConfig) -> int:
        limit = self.max_prompt_len(cfg)
        for b in sorted(cfg.buckets):
            if b >= length:
                return min(b, limit)
        return limit

    def generate_tokens(
        self,
        token_ids: Sequence[Sequence[int]],
        cfg: SamplingConfig,
        *,
        key_ids: Sequence[int] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[RowResult]:
        """Generate for already tokenized prompts; rows ordered by (prompt_index, sample)."""
        st = self._static(cfg)
        key_ids = list(range(len(token_ids))) if key_ids is None else [int(k) for k in key_ids]
        if len(key_ids) != len(token_ids):
            raise IlfError(f"{len(key_ids)} key ids for {len(token_ids)} prompts")
        rows = sorted(((len(token_ids[p]), p, s) for p in range(len(token_ids)) for s in range(cfg.n)))
        total = len(rows)
        if total == 0:
            return []
        shards = self.batch_shards
        batch = _round_up(cfg.batch_size, shards)
        if total < batch:  # a small request: a smaller batch (a power of two, to bound compilations)
            batch = min(batch, _round_up(1 << (total - 1).bit_length(), shards))
        results: dict[tuple[int, int], RowResult] = {}
        for start in range(0, total, batch):
            chunk = rows[start : start + batch]
            length = self._bucket(max(r[0] for r in chunk), cfg)
            tokens = np.full((batch, length), self.pad_id, np.int32)
            valid = np.zeros((batch, length), bool)
            kid = np.zeros((batch,), np.int32)
            smp = np.zeros((batch,), np.int32)
            for i, (n, p, s) in enumerate(chunk):
                tokens[i, length - n :] = token_ids[p]
                valid[i, length - n :] = True
                kid[i], smp[i] = key_ids[p], s
            for i in range(len(chunk), batch):  # filler rows: a one-token prompt, results dropped
                tokens[i, -1], valid[i, -1] = self.pad_id, True
            out, num, reason = self._run(st, tokens, valid, kid, smp, cfg.seed)
            for i, (n, p, s) in enumerate(chunk):
                results[(p, s)] = RowResult(p, s, out[i, : num[i]].copy(), decode.REASONS[int(reason[i])])
            if progress is not None:
                progress(min(start + batch, total), total)
        return [results[k] for k in sorted(results)]

    def _run(self, st, tokens, valid, kid, smp, seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seed = np.uint32(seed % (1 << 32))
        if not self.debug:
            fn = self._generate_fn(st, *tokens.shape)
            args = (tokens, valid, kid, smp, seed)
            if self._multiprocess:  # global arrays from the (identical) host batch of every process
                sh = self._shardings()
                args = put_global(args, (sh["b2"], sh["b2"], sh["b1"], sh["b1"], sh["rep"]))
            out, num, reason = fetch(fn(self.params, *args, self.tables))
        else:
            keys_fn, prefill_fn, step_fn = self._debug_fns(st)
            keys = keys_fn(seed, kid, smp)
            state, _ = decode.generate_debug(prefill_fn, step_fn, self.params, tokens, valid, keys, self.tables)
            out, num, reason = state.out, state.num, state.reason
        return np.asarray(out), np.asarray(num), np.asarray(reason)

    def decode_text(self, tokens: Sequence[int]) -> str:
        """The generated text of `tokens` cut by the paper's rule (`truncate_completion`)."""
        return completion_text(self.tokenizer, tokens, self.eos_id)

    def sample(
        self,
        prompts: Sequence[str],
        cfg: SamplingConfig,
        progress: Callable[[int, int], None] | None = None,
        *,
        key_ids: Sequence[int] | None = None,
    ) -> list[Completion]:
        """`cfg.n` completions of each prompt, ordered by (prompt_index, sample).

        `progress(rows_done, rows_total)` is called after each device batch. `key_ids` (default:
        the prompt's index) are the integers folded into each prompt's key; pass stable ids to
        get the same samples when a prompt list is split or resumed.
        """
        rows = self.generate_tokens(self.encode(prompts, cfg), cfg, key_ids=key_ids, progress=progress)
        if self._multiprocess:  # each process decodes its share of the rows
            share = process_share(len(rows))
            texts = [t for part in allgather_objects([self.decode_text(rows[i].tokens) for i in share]) for t in part]
        else:
            texts = [self.decode_text(r.tokens) for r in rows]
        return [Completion(r.prompt_index, r.sample, t, r.finish_reason, int(len(r.tokens))) for r, t in zip(rows, texts)]


def completion_text(tokenizer: Any, tokens: Sequence[int], eos_id: int) -> str:
    """Generated tokens as the completion text: up to the EOS token (whatever string the tokenizer
    gives it), decoded in context after the prompt, cut by the paper's rule (`truncate_completion`)."""
    from ilf_jax.data.formats import truncate_completion

    ids = [int(t) for t in tokens]
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    return truncate_completion(decode_continuation(tokenizer, ids))


def sample(
    params: Any,
    config: ModelConfig,
    tokenizer: Any,
    prompts: Sequence[str],
    cfg: SamplingConfig,
    mesh: Mesh | None = None,
) -> list[Completion]:
    """One-shot form of `Sampler(params, config, tokenizer, mesh).sample(prompts, cfg)`."""
    return Sampler(params, config, tokenizer, mesh).sample(prompts, cfg)
