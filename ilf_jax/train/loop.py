"""`train` (resumable fine-tuning run) and `evaluate` (per-example target NLL)."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from ilf_jax.errors import IlfError
from ilf_jax.jsonl import RecordLog, atomic_write_text
from ilf_jax.model.family import CONFIG_TYPES, ModelConfig, config_from_file
from ilf_jax.model.family import init_params as random_params
from ilf_jax.model.lora import Lora
from ilf_jax.parallel.distributed import barrier, fetch, global_array, local_rows, map_shared, put_global
from ilf_jax.parallel.mesh import make_mesh
from ilf_jax.parallel.sharding import DEFAULT_RULES, Rules, param_shardings
from ilf_jax.processes import is_writer
from ilf_jax.train import data as data_lib
from ilf_jax.train.checkpoint import Checkpoints
from ilf_jax.train.config import TrainConfig
from ilf_jax.train.data import Example
from ilf_jax.train.optim import learning_rate_schedule, make_optimizer
from ilf_jax.train.state import abstract_state, init_state, state_shardings
from ilf_jax.train.step import batch_shardings, make_eval_step, make_train_step

MODEL_DIR = "model"
HF_DIR = "hf"
PEFT_DIR = "peft"  # LoRA runs: the adapters as a PEFT directory (adapter_config.json + safetensors)
CKPT_DIR = "checkpoints"
METRICS = "metrics.jsonl"
SUMMARY = "train_summary.json"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Where the run's outputs are, and a summary of its metrics."""

    model_dir: pathlib.Path | None  # ours (store.load_model reads it); None when stopped early
    hf_dir: pathlib.Path | None  # HF export (transformers loads it), when cfg.export_hf
    steps: int  # optimizer steps done
    total_steps: int
    summary: dict[str, Any]  # first_loss, final_loss, mean_loss_last_epoch, tokens, seconds, ...
    metrics_path: pathlib.Path


def _resolve_tokenizer(tokenizer: Any, model: Any) -> tuple[Any, pathlib.Path | None]:
    from ilf_jax.model.store import load_tokenizer

    if tokenizer is None:
        if isinstance(model, (str, pathlib.Path)):
            return load_tokenizer(model), pathlib.Path(model)
        raise IlfError("train: a tokenizer (object or directory) is required when the model is not a directory")
    if isinstance(tokenizer, (str, pathlib.Path)):
        return load_tokenizer(tokenizer), pathlib.Path(tokenizer)
    return tokenizer, None


def _model_config(model: Any, cfg: TrainConfig) -> ModelConfig:
    from ilf_jax.model.store import read_config

    if isinstance(model, CONFIG_TYPES):
        config = model
    elif isinstance(model, tuple):
        config = model[0]
    elif isinstance(model, (str, pathlib.Path)):
        path = pathlib.Path(model)
        config = config_from_file(path) if path.is_file() else read_config(path)
    else:
        raise IlfError(f"train: model must be a directory, a config, or (config, params); got {type(model).__name__}")
    # fp32 master weights (LoRA: the frozen base in lora.base_dtype); compute dtype and remat from the train config.
    param_dtype = "float32" if cfg.lora is None else cfg.lora.base_dtype
    return config.replace(dtype=cfg.dtype, param_dtype=param_dtype, remat=cfg.remat)


def _initial_params(model: Any, config: ModelConfig, cfg: TrainConfig, mesh: Mesh, given: Any, rules: Rules) -> Any:
    from ilf_jax.model.store import load_model

    shardings = param_shardings(config, mesh, rules)
    if given is not None:
        params = given
    elif isinstance(model, tuple) and model[1] is not None:
        params = model[1]
    elif cfg.init == "random" or isinstance(model, CONFIG_TYPES) or isinstance(model, tuple) or pathlib.Path(model).is_file():
        init = jax.jit(lambda k: random_params(config, k), out_shardings=shardings)
        return init(jax.random.key(cfg.seed))
    else:
        _, params = load_model(model, mesh, rules, dtype=config.dtype, param_dtype=config.param_dtype, remat=config.remat)
    return put_global(jax.tree.map(lambda p: p.astype(config.param_dtype), params), shardings)


def _lora_setup(model: Any, config: ModelConfig, cfg: TrainConfig, given: Any) -> tuple[Lora | None, dict[str, Any] | None]:
    """The run's `Lora` and the adapter record (base directory, rank, alpha, targets), checked
    against the model before anything is compiled."""
    if cfg.lora is None:
        return None, None
    from ilf_jax.model.store import lora_of

    if not isinstance(model, (str, pathlib.Path)) or not pathlib.Path(model).is_dir() or given is not None:
        raise IlfError("train: lora needs the base model as a directory (HF or ours), and no init_params")
    lc = cfg.lora
    lora = lora_of(config, lc.targets, lc.rank, lc.alpha)
    meta = {"base": str(pathlib.Path(model).absolute()), "rank": lc.rank, "alpha": lc.alpha,
            "targets": list(lc.targets), "base_dtype": lc.base_dtype}
    return lora, meta


def mesh_for(shape: Sequence[int]) -> Mesh:
    """The mesh of a config's (data, fsdp, tensor) sizes; without a -1, a smaller product uses
    the first devices only (e.g. (1, 1, 1) on a host with 8)."""
    devices = jax.devices()
    if -1 not in shape and 0 < math.prod(shape) < len(devices):
        if jax.process_count() > 1:
            raise IlfError(f"mesh {tuple(shape)} uses {math.prod(shape)} of {len(devices)} devices; "
                           "a multi-process run needs a mesh over every device (e.g. a -1 size)")
        devices = devices[: math.prod(shape)]
    return make_mesh(shape, devices)


def _put_batch(batch: dict[str, np.ndarray], shardings: dict[str, Any]) -> dict[str, jax.Array]:
    # Every host builds the same global batch; each device takes its slice (works multi-host).
    return {k: jax.make_array_from_callback(v.shape, shardings[k], lambda idx, v=v: v[idx]) for k, v in batch.items()}


def _encode(tok: Any, examples: list[Example], cfg: TrainConfig) -> list[data_lib.Encoded]:
    """Tokenized examples; with several processes each tokenizes its share, then all merge."""
    return map_shared(lambda part: data_lib.encode_examples(tok, part, cfg.max_length, cfg.max_target_length), examples)


class _Logger:
    """metrics.jsonl (a `jsonl.RecordLog` by step, cut back to the resumed step) + TensorBoard."""

    def __init__(self, out_dir: pathlib.Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.records = RecordLog(out_dir / METRICS, lambda rec: rec["step"])
        self.records.retain(lambda rec: rec["step"] <= start_step)
        try:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1)
        except ImportError:  # pragma: no cover
            self.writer = None

    def log(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append([rec])
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"train/{k}", v, rec["step"])

    def close(self) -> None:
        if self.enabled:
            self.records.close()
            if self.writer is not None:
                self.writer.close()


def train(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    cfg: TrainConfig,
    out_dir: str | pathlib.Path,
    *,
    progress: bool = True,
    init_params: Any = None,
    mesh: Mesh | None = None,
    stop_after: int | None = None,
    rules: Rules = DEFAULT_RULES,
) -> TrainResult:
    """Fine-tune (or train from scratch) and write `out_dir/{model,hf,checkpoints,metrics.jsonl}`.

    `model`: a model directory (HF or ours), a model config file (.yaml / config.json) or
    model config of any family (random init), or `(config, params)`. `tokenizer`: an object or a directory
    (default: the model directory's). `init_params` overrides the starting weights. A run resumes
    from the latest checkpoint in `out_dir`, at the exact data position; a finished run returns at
    once. `stop_after` halts (with a checkpoint) after that many total steps, as a pre-emption would.
    `rules` (logical axis -> mesh axes) place params, optimizer state and batches, as `Sampler`'s do.
    """
    out_dir = pathlib.Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    if not examples:
        raise IlfError("train: no examples")
    is_host0 = is_writer()
    tok, tok_dir = _resolve_tokenizer(tokenizer, model)
    config = _model_config(model, cfg)
    if mesh is None:
        mesh = mesh_for(cfg.mesh)

    lora, lora_meta = _lora_setup(model, config, cfg, init_params)
    encoded = _encode(tok, list(examples), cfg)
    fp = data_lib.fingerprint(encoded)
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = cfg.micro_batch_size * dp
    if cfg.batch_size % rows and not cfg.packing:
        raise IlfError(f"train: batch_size={cfg.batch_size} is not a multiple of micro_batch_size x data-parallel = {rows}")
    accum = cfg.batch_size // rows  # packed steps have as many micro-batches as their rows need
    spe = data_lib.steps_per_epoch(len(encoded), cfg.batch_size, cfg.remainder)
    total = spe * cfg.epochs
    tx = make_optimizer(cfg, total)
    schedule = learning_rate_schedule(cfg, total)
    shardings = state_shardings(config, tx, mesh, lora, rules)

    ckpts = Checkpoints(out_dir / CKPT_DIR, keep=cfg.keep)
    latest = ckpts.latest_step()
    if latest is not None:
        meta = ckpts.read_meta(latest)
        if meta.get("data") != fp or meta.get("steps_per_epoch") != spe:
            ckpts.close()
            raise IlfError(f"{out_dir}: its checkpoints were made with other data or batch size; use a new out_dir")
        if meta.get("lora") != lora_meta:
            ckpts.close()
            raise IlfError(f"{out_dir}: its checkpoints were made with lora={meta.get('lora')}, this run has lora={lora_meta}; use a new out_dir")
        if latest >= total and (out_dir / MODEL_DIR).is_dir() and (out_dir / SUMMARY).is_file():
            ckpts.close()
            return _result(out_dir, cfg, latest, total)
        state, meta = ckpts.restore(abstract_state(config, tx, mesh, lora, rules), latest)
        start = int(meta["step"])
    else:
        if lora is None:
            params = _initial_params(model, config, cfg, mesh, init_params, rules)
        else:
            params = jax.jit(lora.init, out_shardings=shardings.params)(jax.random.key(cfg.seed))
        state = init_state(params, tx, shardings)
        del params
        start = 0
        if is_host0 and (out_dir / METRICS).is_file():
            (out_dir / METRICS).unlink()

    base = None
    if lora is not None:  # the frozen base: loaded once, never updated, not in the checkpoints
        base = _initial_params(model, config, cfg, mesh, None, rules)
    nominal = cfg.batch_size if cfg.remainder == "carry" else None
    step_fn = make_train_step(config, tx, mesh, shardings, schedule, lora=lora, rules=rules, nominal_batch=nominal,
                              base_shardings=None if lora is None else param_shardings(config, mesh, rules))
    extra = () if lora is None else (base,)
    bshard = batch_shardings(mesh, rules)
    # Several processes: each builds only its rows of every global batch.
    my_rows = None if jax.process_count() == 1 else local_rows(bshard["tokens"], (1, rows, 1), axis=1)
    lengths = [e.length for e in encoded]
    logger = _Logger(out_dir, start, is_host0)
    end = total if stop_after is None else min(total, stop_after)
    bar = None
    if progress and is_host0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
    summary = {"first_loss": None, "final_loss": None, "tokens": 0}
    orders: dict[int, list[np.ndarray]] = {}
    t_last, tokens_since, all_tokens = time.perf_counter(), 0, 0
    t_start = t_last
    pending = []
    try:
        for s in range(start, end):
            epoch, pos = divmod(s, spe)
            if epoch not in orders:
                orders = {epoch: data_lib.epoch_updates(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length,
                                                        cfg.remainder)}
            idx = orders[epoch][pos]
            host = data_lib.step_batch(encoded, idx, cfg.batch_size, accum, cfg.length_multiple, cfg.max_length, my_rows,
                                       weighting=cfg.loss_weighting, packing=cfg.packing, micro_rows=rows)
            n_micro, t = host["tokens"].shape[0], host["tokens"].shape[-1]
            n_tok = int(sum(min(encoded[i].length - 1, t) for i in idx))
            if my_rows is None:
                batch = _put_batch(host, bshard)
            else:
                batch = {k: global_array(v, bshard[k], (n_micro, rows, t)) for k, v in host.items()}
            state, metrics = step_fn(state, batch, *extra)
            tokens_since += n_tok
            all_tokens += n_tok
            pending.append((s + 1, epoch, metrics))
            done = s + 1
            if done % cfg.log_every == 0 or done == end:
                fetched = jax.device_get([m for _, _, m in pending])
                now = time.perf_counter()
                tps = tokens_since / max(now - t_last, 1e-9)
                for (n, ep, _), m in zip(pending, fetched):
                    rec = {"step": n, "epoch": ep, "loss": float(m["loss"]), "lr": float(m["lr"]),
                           "grad_norm": float(m["grad_norm"]), "target_tokens": int(round(float(m["tokens"]))), "tokens_per_s": tps}
                    logger.log(rec)
                    if summary["first_loss"] is None:
                        summary["first_loss"] = rec["loss"]
                    summary["final_loss"] = rec["loss"]
                if bar is not None:
                    bar.set_postfix(loss=f"{summary['final_loss']:.4f}", tok_s=f"{tps:.0f}")
                pending, tokens_since, t_last = [], 0, now
            if bar is not None:
                bar.update(1)
            if (cfg.save_every and done % cfg.save_every == 0) or done == end:
                ckpts.save(done, state, {"step": done, "epoch": done // spe, "position": done % spe,
                                         "steps_per_epoch": spe, "data": fp, "total_steps": total, "lora": lora_meta})
        ckpts.wait()
    finally:
        if bar is not None:
            bar.close()
        logger.close()
    if end < total:
        ckpts.close()
        summary.update(steps=end, total_steps=total, tokens=all_tokens, seconds=time.perf_counter() - t_start)
        return TrainResult(None, None, end, total, summary, out_dir / METRICS)
    ckpts.close()
    if start == end:  # resumed at the very end: fetch the last losses from the log
        summary = {}
    _finish(out_dir, cfg, config, state.params, tok, tok_dir, summary, total, all_tokens, time.perf_counter() - t_start,
            lora, lora_meta, base)
    return _result(out_dir, cfg, total, total)


def _finish(out_dir, cfg, config, params, tok, tok_dir, summary, total, tokens, seconds, lora=None, lora_meta=None, base=None) -> None:
    from ilf_jax.model.convert import export_hf
    from ilf_jax.model.store import save_adapters, save_model

    save_config = config.replace(remat=False)
    if lora is None:
        model_dir = save_model(out_dir / MODEL_DIR, save_config, params, tok_dir)
    else:  # adapters only, with a reference to the base; load_model merges them on load
        model_dir = save_adapters(out_dir / MODEL_DIR, save_config.replace(param_dtype="float32"), lora_meta, params, tok_dir)
    if tok_dir is None and is_writer():
        tok.save_pretrained(str(model_dir))
    if lora is not None:
        _export_peft(lora, params, save_config, out_dir / PEFT_DIR, lora_meta["base"])
    if cfg.export_hf:
        if lora is not None:
            save_config = save_config.replace(param_dtype="float32")
            params = jax.jit(lambda b, a: lora.merge(b, a, jax.numpy.float32))(base, params)
        export_hf(params, save_config, out_dir / HF_DIR, tokenizer_dir=model_dir)
    if is_writer():
        losses = [json.loads(line) for line in (out_dir / METRICS).read_text().splitlines() if line.strip()]
        rec = {
            "steps": total,
            "first_loss": losses[0]["loss"] if losses else None,
            "final_loss": losses[-1]["loss"] if losses else None,
            "tokens_this_session": tokens,
            "seconds_this_session": seconds,
            "config": cfg.to_dict(),
        }
        atomic_write_text(out_dir / SUMMARY, json.dumps(rec, indent=2) + "\n")
    barrier("train_finish")


def _export_peft(lora: Lora, adapters: Any, config: ModelConfig, out_dir: pathlib.Path, base_dir: str) -> None:
    """The adapters as a PEFT LoRA directory (fetching is collective; process 0 writes)."""
    from ilf_jax.model.lora import export_peft
    from ilf_jax.model.family import weight_map

    host = fetch(adapters)
    if is_writer():
        export_peft(lora, host, weight_map(config), out_dir, base_dir)


def _result(out_dir: pathlib.Path, cfg: TrainConfig, steps: int, total: int) -> TrainResult:
    summary = json.loads((out_dir / SUMMARY).read_text()) if (out_dir / SUMMARY).is_file() else {}
    return TrainResult(
        model_dir=out_dir / MODEL_DIR,
        hf_dir=(out_dir / HF_DIR) if cfg.export_hf else None,
        steps=steps,
        total_steps=total,
        summary=summary,
        metrics_path=out_dir / METRICS,
    )


def evaluate(
    params: Any,
    config: ModelConfig,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 8,
    *,
    max_length: int = 1024,
    max_target_length: int = 512,
    length_multiple: int = 64,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> list[float]:
    """Mean NLL (nats per target token, EOS included) of each example's target; exp() is its
    perplexity. Examples are length-sorted into padded batches; results are in input order."""
    if isinstance(tokenizer, (str, pathlib.Path)):
        from ilf_jax.model.store import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    encoded = data_lib.encode_examples(tokenizer, list(examples), max_length, max_target_length)
    run = make_eval_step(config, mesh, rules)
    rows = batch_size
    if mesh is not None:
        dp = mesh.shape["data"] * mesh.shape["fsdp"]
        rows = -(-batch_size // dp) * dp
    order = np.argsort([-e.length for e in encoded], kind="stable")
    out = np.zeros(len(encoded))
    for i in range(0, len(order), rows):
        idx = order[i : i + rows]
        longest = max(encoded[j].length - 1 for j in idx)
        t = data_lib.padded_length(longest, length_multiple, max_length)
        batch = data_lib.make_batch(encoded, idx, rows, t)
        if mesh is not None:
            from ilf_jax.parallel.sharding import batch_sharding

            batch = _put_batch(batch, {k: batch_sharding(mesh, 2, rules) for k in batch})
        sums, counts = fetch(run(params, batch))
        for r, j in enumerate(idx):
            out[j] = sums[r] / counts[r] if counts[r] > 0 else math.nan
    return [float(x) for x in out]
