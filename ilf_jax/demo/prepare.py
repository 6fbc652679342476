"""The demo's base model, made here: corpus -> tokenizer -> CodeGen pretrained from random weights.

`prepare(run_dir, demo, tasks_cfg)` runs three resumable steps under `run_dir/base/`, each
recorded in `base/prepare.json` with an identity (a hash of the settings it depends on):

1. `corpus`: documents of fresh task instances (none equal to a split task), written as JSONL;
2. `tokenizer`: a byte-level BPE trained on the corpus with `tokenizers`, saved for transformers;
3. `pretrain`: a tiny CodeGen trained from random init on the corpus with the project's trainer
   (`ilf_jax.train.train`, loss on every document token and on a closing EOS, so the model
   learns to stop); the trainer resumes from its own checkpoints when interrupted.

A finished step with the same identity is skipped; a changed setting wipes it and every later step.
The result is an ilf_jax model directory (config, tokenizer, Orbax params) that the pipeline
takes as `model.dir`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping

from ilf_jax.jsonl import atomic_write_json, read_json, read_jsonl, write_jsonl

BASE = "base"
STATE = "prepare.json"
CORPUS = "corpus.jsonl"
TOKENIZER_DIR = "tokenizer"
PRETRAIN_DIR = "pretrain"
STEPS = ("corpus", "tokenizer", "pretrain")

# Every key of the `demo` section; values are the defaults (configs/demo.yaml sets them all).
DEFAULTS: dict[str, Any] = {
    "seed": 0,  # task family, corpus, weight init, sampling and annotator seeds
    "corpus": {"n_docs": 16000, "bug_rate": 0.85},
    "tokenizer": {"vocab_size": 1024},
    "model": {"n_layer": 4, "n_embd": 128, "n_head": 4, "rotary_dim": 16, "n_positions": 512},
    "pretrain": {"learning_rate": 2.0e-3, "batch_size": 32, "epochs": 1, "warmup_steps": 0.2,
                 "schedule": "cosine", "weight_decay": 0.01, "max_length": 160, "max_target_length": 159,
                 "length_multiple": 32, "mesh": [1, 1, 1], "export_hf": False, "log_every": 10,
                 "save_every": 100},
}


def demo_settings(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `demo` section with defaults filled in; unknown keys are refused."""
    from ilf_jax.errors import IlfError

    out = json.loads(json.dumps(DEFAULTS))
    for key, value in (given or {}).items():
        if key not in DEFAULTS:
            raise IlfError(f"config: unknown key 'demo.{key}' (known: {', '.join(DEFAULTS)})")
        if isinstance(DEFAULTS[key], dict):
            if not isinstance(value, dict):
                raise IlfError(f"config: 'demo.{key}' must be a mapping")
            if key != "pretrain":  # pretrain holds TrainConfig fields, checked by TrainConfig
                unknown = sorted(set(value) - set(DEFAULTS[key]))
                if unknown:
                    raise IlfError(f"config: unknown key 'demo.{key}.{unknown[0]}' (known: {', '.join(DEFAULTS[key])})")
            out[key].update(value)
        else:
            out[key] = value
    return out


def _identity(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_dir(run_dir: str | pathlib.Path) -> pathlib.Path:
    """Where `prepare` leaves the base model."""
    from ilf_jax.train.loop import MODEL_DIR

    return pathlib.Path(run_dir).absolute() / BASE / PRETRAIN_DIR / MODEL_DIR


def prepare(run_dir: str | pathlib.Path, demo: Mapping[str, Any], tasks_cfg: Any,
            progress: bool = True, log: Callable[[str], None] = print) -> pathlib.Path:
    """Make (or resume, or reuse) the demo's base model under `run_dir/base`; returns its directory."""
    base = pathlib.Path(run_dir).absolute() / BASE
    base.mkdir(parents=True, exist_ok=True)
    state_path = base / STATE
    state = read_json(state_path) if state_path.is_file() else {}
    ids = {}
    ids["corpus"] = _identity("corpus", demo["seed"], demo["corpus"], tasks_cfg.factory, tasks_cfg.factory_args)
    ids["tokenizer"] = _identity("tokenizer", ids["corpus"], demo["tokenizer"])
    ids["pretrain"] = _identity("pretrain", ids["tokenizer"], demo["model"], demo["pretrain"], demo["seed"])
    outputs = {"corpus": base / CORPUS, "tokenizer": base / TOKENIZER_DIR, "pretrain": base / PRETRAIN_DIR}
    stale = False
    for step in STEPS:  # a step whose settings changed is wiped, and so is every later one
        entry = state.get(step)
        if stale or (entry is not None and entry.get("identity") != ids[step]):
            stale = True
            state.pop(step, None)
            target = outputs[step]
            if target.is_dir():
                shutil.rmtree(target)  # e.g. pretraining checkpoints made from other data or settings
            elif target.exists():
                target.unlink()
        elif entry is None and step == "pretrain" and outputs[step].exists():
            shutil.rmtree(outputs[step])  # checkpoints of unknown settings (no record): start over
    atomic_write_json(state_path, state)

    def started(step: str) -> None:  # recorded first, so that a resumed step is known to be this one
        state[step] = {"identity": ids[step], "done": False}
        atomic_write_json(state_path, state)

    def done(step: str, **summary: Any) -> None:
        state[step] = {"identity": ids[step], "done": True, **summary}
        atomic_write_json(state_path, state)

    def finished(step: str) -> bool:
        return bool(state.get(step, {}).get("done"))

    if not finished("corpus"):
        t0 = time.time()
        docs = _corpus(demo, tasks_cfg)
        write_jsonl(base / CORPUS, [{"text": d} for d in docs])
        done("corpus", documents=len(docs), seconds=round(time.time() - t0, 2))
        log(f"[prepare] corpus: {len(docs)} documents ({time.time() - t0:.0f}s)")
    docs = None
    if not finished("tokenizer"):
        from ilf_jax.demo.tokenizer import save_tokenizer, train_tokenizer

        t0 = time.time()
        docs = [r["text"] for r in read_jsonl(base / CORPUS)]
        tok = train_tokenizer(docs, vocab_size=int(demo["tokenizer"]["vocab_size"]))
        save_tokenizer(tok, base / TOKENIZER_DIR)
        done("tokenizer", vocab_size=len(tok), seconds=round(time.time() - t0, 2))
        log(f"[prepare] tokenizer: {len(tok)} tokens ({time.time() - t0:.0f}s)")
    if not finished("pretrain"):
        from ilf_jax.model.config import CodeGenConfig
        from ilf_jax.train import TrainConfig, train
        from ilf_jax.train.data import Example

        docs = docs or [r["text"] for r in read_jsonl(base / CORPUS)]
        vocab = int(state["tokenizer"]["vocab_size"])
        config = CodeGenConfig(vocab_size=vocab, bos_token_id=0, eos_token_id=0, **demo["model"])
        cfg = TrainConfig.from_dict({"seed": int(demo["seed"]), **demo["pretrain"], "init": "random"})
        log(f"[prepare] pretraining the base model from random weights: {demo['model']}, "
            f"{len(docs)} documents x {cfg.epochs} epoch(s), batch {cfg.batch_size}")
        started("pretrain")  # the trainer resumes from its checkpoints if this is interrupted
        t0 = time.time()
        # The whole document is the target (loss on every token after the first, and on the EOS after it).
        result = train(config, base / TOKENIZER_DIR, [Example("", d) for d in docs], cfg, base / PRETRAIN_DIR,
                       progress=progress)
        done("pretrain", steps=result.steps, first_loss=result.summary.get("first_loss"),
             final_loss=result.summary.get("final_loss"), seconds=round(time.time() - t0, 2))
        log(f"[prepare] base model: {result.steps} steps, loss {result.summary.get('first_loss'):.2f} -> "
            f"{result.summary.get('final_loss'):.2f} ({time.time() - t0:.0f}s)")
    else:
        log(f"[prepare] base model ready (loss {state['pretrain'].get('final_loss'):.2f}): {model_dir(run_dir)}")
    return model_dir(run_dir)


def _corpus(demo: Mapping[str, Any], tasks_cfg: Any) -> list[str]:
    """The pretraining documents, none of them an instance of a split task."""
    from ilf_jax.demo.corpus import pretraining_corpus
    from ilf_jax.pipeline.sources import import_callable

    splits = import_callable(tasks_cfg.factory, "tasks.factory")(**tasks_cfg.factory_args)
    every = [t for items in splits.values() for t in items]
    c = demo["corpus"]
    return pretraining_corpus(int(demo["seed"]), n_docs=int(c["n_docs"]), bug_rate=float(c["bug_rate"]), exclude=every)
