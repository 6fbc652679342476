"""The demo's base model as ordinary pipeline stages: corpus -> tokenizer -> CodeGen pretrained from random weights.

A pipeline config with `model.prepare: ilf_jax.demo.stages:base_model` (configs/demo.yaml) gets three
stages before the ILF rounds, their parameters read from its `demo` section (`DemoSection`):

1. `demo.corpus`: documents of fresh task instances (none equal to a split task), corpus.jsonl;
2. `demo.tokenizer`: a byte-level BPE trained on the corpus with `tokenizers`, saved for transformers;
3. `demo.pretrain`: a tiny CodeGen trained from random init on the corpus with the project's trainer
   (loss on every document token and on a closing EOS, so the model learns to stop); the trainer
   resumes from its own checkpoints when interrupted.

They are skipped, resumed and rerun like every stage (a changed setting reruns its stage and
everything after it); the pretrained model is the base model of every later stage.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, ClassVar

from ilf_jax.configfile import from_mapping
from ilf_jax.errors import IlfError
from ilf_jax.jsonl import atomic_write_json, read_jsonl, write_jsonl
from ilf_jax.pipeline.artifacts import TRAIN_DIR, Artifact, ModelPointer, Summary
from ilf_jax.pipeline.engine import Stage, StageContext
from ilf_jax.pipeline.sources import import_callable
from ilf_jax.train.config import TrainConfig

@dataclasses.dataclass(frozen=True)
class CorpusSection:
    n_docs: int = 16000  # prompt + body documents of fresh task instances (no split task)
    bug_rate: float = 0.85  # each applicable bug pattern is taught with this probability
    gold_style_rate: float = 0.1  # documents written in the gold styles (loops, filter/map), not the corpus idiom


@dataclasses.dataclass(frozen=True)
class TokenizerSection:
    vocab_size: int = 1024  # byte-level BPE trained with `tokenizers` on the corpus


# The tiny CodeGen's shape: CodeGenConfig fields and their demo values (the vocabulary is the tokenizer's).
_MODEL_SHAPE = {"n_layer": 4, "n_embd": 128, "n_head": 4, "rotary_dim": 16, "n_positions": 512}
DemoModelSection = dataclasses.make_dataclass(
    "DemoModelSection", [(k, int, dataclasses.field(default=v)) for k, v in _MODEL_SHAPE.items()], frozen=True,
    namespace={"__module__": __name__, "__doc__": "The tiny CodeGen's shape (CodeGenConfig fields)."})


@dataclasses.dataclass(frozen=True)
class DemoSection:
    """The `demo` section: one seed (task family, corpus, weight init; `ilf demo --seed` sets every other
    seed from it), the corpus, tokenizer and model sizes, and the pretraining run (TrainConfig fields;
    `init` is always random, `seed` defaults to the demo's)."""

    CONFIG_NOUN: ClassVar[str] = "demo"
    seed: int = 0
    corpus: CorpusSection = dataclasses.field(default_factory=CorpusSection)
    tokenizer: TokenizerSection = dataclasses.field(default_factory=TokenizerSection)
    model: DemoModelSection = dataclasses.field(default_factory=DemoModelSection)
    pretrain: dict[str, Any] = dataclasses.field(default_factory=dict)

    def pretrain_config(self) -> TrainConfig:
        """The pretraining run: `pretrain` over PRETRAIN_DEFAULTS, from random weights."""
        return TrainConfig.from_dict({"seed": self.seed, **PRETRAIN_DEFAULTS, **self.pretrain, "init": "random"})


# The pretraining run's settings where `demo.pretrain` does not give them (configs/demo.yaml gives all).
PRETRAIN_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2.0e-3, "batch_size": 32, "epochs": 1, "warmup_steps": 0.2, "schedule": "cosine", "weight_decay": 0.01,
    "max_length": 160, "max_target_length": 159, "length_multiple": 32, "mesh": [1, 1, 1], "export_hf": False,
    "log_every": 10, "save_every": 100}


def demo_section(raw: Any, label: str = "config") -> DemoSection:
    """The `demo` section, strictly read (and its pretraining run checked)."""
    demo = from_mapping(DemoSection, raw, label, "demo")
    try:
        demo.pretrain_config()
    except IlfError as e:
        raise IlfError(f"{label}: demo.pretrain: {e}") from None
    return demo


class Corpus:
    """The pretraining documents (corpus.jsonl)."""

    FILE: ClassVar[str] = "corpus.jsonl"

    @classmethod
    def load(cls, path: pathlib.Path) -> list[str]:
        return [r["text"] for r in read_jsonl(path)]


class TokenizerDir:
    """A tokenizer saved for transformers (the folder)."""

    FILE: ClassVar[str] = "tokenizer"

    @classmethod
    def load(cls, path: pathlib.Path) -> pathlib.Path:
        return path


@dataclasses.dataclass(frozen=True)
class CorpusParams:
    seed: int
    corpus: CorpusSection
    factory: str  # the task family whose split tasks the corpus leaves out
    factory_args: dict[str, Any]


def documents(p: CorpusParams) -> list[str]:
    """The pretraining documents, none of them an instance of a split task."""
    from ilf_jax.demo.corpus import pretraining_corpus

    splits = import_callable(p.factory, "tasks.factory")(**p.factory_args)
    every = [t for items in splits.values() for t in items]
    return pretraining_corpus(p.seed, n_docs=p.corpus.n_docs, bug_rate=p.corpus.bug_rate,
                              gold_style_rate=p.corpus.gold_style_rate, exclude=every)


def corpus(ctx: StageContext, p: CorpusParams) -> dict[str, Any]:
    docs = documents(p)
    write_jsonl(ctx.dir / Corpus.FILE, [{"text": d} for d in docs])
    return {"documents": len(docs)}


def tokenizer(ctx: StageContext, p: TokenizerSection) -> dict[str, Any]:
    from ilf_jax.demo.tokenizer import save_tokenizer, train_tokenizer

    tok = train_tokenizer(ctx.read("corpus"), vocab_size=p.vocab_size)
    save_tokenizer(tok, ctx.dir / TokenizerDir.FILE)
    return {"vocab_size": len(tok)}


@dataclasses.dataclass(frozen=True)
class PretrainParams:
    model: DemoModelSection
    train: TrainConfig


def pretrain(ctx: StageContext, p: PretrainParams) -> dict[str, Any]:
    """Train the tiny CodeGen from random weights on the whole documents (the target is every token
    after the first, and the EOS after the last)."""
    from ilf_jax.model.config import CodeGenConfig
    from ilf_jax.train import train
    from ilf_jax.train.data import Example

    vocab = int(ctx.read("tokenizer_summary")["vocab_size"])
    config = CodeGenConfig(vocab_size=vocab, bos_token_id=0, eos_token_id=0, **dataclasses.asdict(p.model))
    result = train(config, ctx.read("tokenizer"), [Example("", d) for d in ctx.read("corpus")], p.train,
                   ctx.dir / TRAIN_DIR, progress=ctx.services.progress)
    atomic_write_json(ctx.dir / ModelPointer.FILE, ModelPointer(str(result.model_dir), True).to_json())
    return {"steps": result.steps, "first_loss": result.summary.get("first_loss"),
            "final_loss": result.summary.get("final_loss")}


def base_model(cfg: Any) -> tuple[list[Stage], Artifact]:
    """`model.prepare` for the demo: the three stages, and the handle to the model they make."""
    demo = demo_section(cfg.demo)
    c = Stage("demo.corpus", corpus, CorpusParams(demo.seed, demo.corpus, cfg.tasks.factory, dict(cfg.tasks.factory_args)))
    t = Stage("demo.tokenizer", tokenizer, demo.tokenizer, {"corpus": Artifact(c.name, Corpus)})
    p = Stage("demo.pretrain", pretrain, PretrainParams(demo.model, demo.pretrain_config()),
              {"corpus": Artifact(c.name, Corpus), "tokenizer": Artifact(t.name, TokenizerDir),
               "tokenizer_summary": Artifact(t.name, Summary)})
    return [c, t, p], Artifact(p.name, ModelPointer)
