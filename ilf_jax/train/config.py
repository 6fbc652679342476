"""`TrainConfig`: the hyperparameters of one fine-tuning run (defaults follow the reference script)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from ilf_jax.errors import IlfError

_SCHEDULES = ("linear", "cosine", "constant")
_DTYPES = ("float32", "bfloat16")
_INITS = ("pretrained", "random")
_WEIGHTINGS = ("token", "example")
REMAINDERS = ("short_step", "carry")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (`train.lora`): rank, alpha (scale alpha / rank), the projections adapted by
    role (see `ilf_jax.model.lora.ROLES`) and the dtype of the frozen base weights."""

    CONFIG_NOUN: ClassVar[str] = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "k", "v", "out")
    base_dtype: str = "float32"

    def __post_init__(self) -> None:
        from ilf_jax.model.lora import ROLES

        def fail(msg: str) -> None:
            raise IlfError(f"train config: lora.{msg}")

        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            fail(f"rank={self.rank!r} must be a positive integer")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            fail(f"alpha={self.alpha!r} must be a positive number")
        if self.dropout != 0:
            fail(f"dropout={self.dropout!r}: only 0 is supported (adapters are applied as merged weights "
                 "W + (alpha/r) a b, which have no per-token adapter input to drop)")
        if not self.targets or any(t not in ROLES for t in self.targets) or len(set(self.targets)) != len(self.targets):
            fail(f"targets={list(self.targets)!r} must be distinct names among {', '.join(ROLES)}")
        if self.base_dtype not in _DTYPES:
            fail(f"base_dtype={self.base_dtype!r} must be one of {_DTYPES}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run.

    `batch_size` is the effective batch in examples per optimizer step; each step runs
    `accum_steps = batch_size / (micro_batch_size * data_parallel)` micro-batches as a `lax.scan`,
    where `data_parallel` is the mesh's data x fsdp size and `micro_batch_size` is per replica.
    `warmup_steps` >= 1 is a step count, a value in [0, 1) a fraction of the total steps.
    `remainder`: what an epoch does with its last N % batch_size examples: "short_step" (ours) makes them
    one more step of ceil(N / batch_size) per epoch, normalised to full strength; "carry" (the
    transformers 4.12.5 Trainer with gradient accumulation) makes floor(N / batch_size) updates per
    epoch (at least 1), adds the leftovers' gradients to the next epoch's first update (the last
    epoch's are never applied), and divides every update by the nominal batch, so an update of m
    examples has m / batch_size of a full step's strength.
    """

    learning_rate: float = 5e-6
    batch_size: int = 32
    micro_batch_size: int = 1
    epochs: int = 2
    warmup_steps: float = 0
    schedule: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_length: int = 1024  # prompt + target tokens (paper: max_seq_length 1024)
    max_target_length: int = 512  # target tokens incl. EOS (paper: answer length 512)
    seed: int = 0
    remat: bool = False
    dtype: str = "float32"  # compute dtype; master weights and optimizer state stay float32
    save_every: int = 0  # steps between checkpoints (0: only the final one)
    keep: int = 2  # checkpoints kept
    mesh: tuple[int, int, int] = (1, -1, 1)  # (data, fsdp, tensor); one size may be -1
    log_every: int = 1
    group_by_length: bool = True  # batch examples of similar length together (less padding)
    length_multiple: int = 64  # padded lengths are multiples of this (bounded number of compiles)
    init: str = "pretrained"  # "random": start from random weights (training from scratch)
    export_hf: bool = True  # also write the final model as an HF directory (out_dir/hf)
    packing: bool = False  # first-fit each step's examples into rows of max_length (segment ids)
    loss_weighting: str = "token"  # "token": every target token alike; "example": every example alike
    remainder: str = "short_step"  # "short_step" | "carry" (the HF Trainer's updates; see above)
    lora: LoraConfig | None = None  # LoRA adapters on a frozen base instead of full fine-tuning

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise IlfError(f"train config: {msg}")

        if self.schedule not in _SCHEDULES:
            fail(f"schedule={self.schedule!r} must be one of {_SCHEDULES}")
        if self.dtype not in _DTYPES:
            fail(f"dtype={self.dtype!r} must be one of {_DTYPES}")
        if self.loss_weighting not in _WEIGHTINGS:
            fail(f"loss_weighting={self.loss_weighting!r} must be one of {_WEIGHTINGS}")
        if self.remainder not in REMAINDERS:
            fail(f"remainder={self.remainder!r} must be one of {REMAINDERS}")
        if self.lora is not None and not isinstance(self.lora, LoraConfig):
            fail(f"lora={self.lora!r} must be a LoraConfig")
        if self.lora is not None and self.init == "random":
            fail("lora needs a pretrained base (init: pretrained)")
        if self.init not in _INITS:
            fail(f"init={self.init!r} must be one of {_INITS}")
        for name in ("batch_size", "micro_batch_size", "epochs", "max_length", "max_target_length", "keep", "log_every", "length_multiple"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.batch_size % self.micro_batch_size:
            fail(f"batch_size={self.batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}")
        if self.max_target_length >= self.max_length:
            fail(f"max_target_length={self.max_target_length} must be below max_length={self.max_length}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            fail("learning_rate must be positive, weight_decay and max_grad_norm non-negative")
        if self.warmup_steps < 0:
            fail(f"warmup_steps={self.warmup_steps} must be non-negative")
        if self.save_every < 0:
            fail(f"save_every={self.save_every} must be non-negative")
        if len(self.mesh) != 3:
            fail(f"mesh={self.mesh!r} must have 3 sizes (data, fsdp, tensor)")

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mesh"] = list(self.mesh)
        if self.lora is None:  # absent rather than null, so that `lora.rank=8` overrides make a section
            del d["lora"]
        else:
            d["lora"]["targets"] = list(self.lora.targets)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys and ill-typed values are refused with an IlfError."""
        from ilf_jax.configfile import from_mapping

        return from_mapping(cls, d, "train config")

    def warmup_for(self, total_steps: int) -> int:
        """Warmup in steps for a run of `total_steps`."""
        if self.warmup_steps < 1:
            return int(round(self.warmup_steps * total_steps))
        return int(self.warmup_steps)
