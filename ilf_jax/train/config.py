"""`TrainConfig`: the hyperparameters of one fine-tuning run (defaults follow the reference script)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ilf_jax.errors import IlfError

_SCHEDULES = ("linear", "cosine", "constant")
_DTYPES = ("float32", "bfloat16")
_INITS = ("pretrained", "random")
_WEIGHTINGS = ("token", "example")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (`train.lora`): rank, alpha (scale alpha / rank), the projections adapted by
    role (see `ilf_jax.model.lora.ROLES`) and the dtype of the frozen base weights."""

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

    @classmethod
    def from_dict(cls, d: Any) -> LoraConfig:
        if not isinstance(d, Mapping):
            raise IlfError(f"train config: lora={d!r} must be a mapping (rank, alpha, dropout, targets, base_dtype) or null")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise IlfError(f"train config: unknown lora key(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
        d = dict(d)
        if "targets" in d:
            t = d["targets"]
            d["targets"] = (t,) if isinstance(t, str) else tuple(t) if isinstance(t, (list, tuple)) else t
        if isinstance(d.get("alpha"), str):
            try:
                d["alpha"] = float(d["alpha"])
            except ValueError:
                pass
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run.

    `batch_size` is the effective batch in examples per optimizer step; each step runs
    `accum_steps = batch_size / (micro_batch_size * data_parallel)` micro-batches as a `lax.scan`,
    where `data_parallel` is the mesh's data x fsdp size and `micro_batch_size` is per replica.
    `warmup_steps` >= 1 is a step count, a value in [0, 1) a fraction of the total steps.
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
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise IlfError(f"train config: unknown key(s) {', '.join(unknown)} (known: {', '.join(fields)})")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            default = fields[key].default
            if key == "lora":
                value = None if value is None else value if isinstance(value, LoraConfig) else LoraConfig.from_dict(value)
            elif key == "mesh":
                if isinstance(value, str):
                    from ilf_jax.parallel.mesh import parse_mesh

                    value = parse_mesh(value)
                try:
                    value = tuple(int(v) for v in value)
                except (TypeError, ValueError):
                    raise IlfError(f"train config: mesh={value!r} must be 3 integers") from None
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise IlfError(f"train config: {key}={value!r} must be true or false")
            elif isinstance(default, int) and key != "warmup_steps":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise IlfError(f"train config: {key}={value!r} must be an integer")
            elif isinstance(default, (int, float)):
                if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
                    try:
                        value = float(value)
                    except ValueError:
                        pass
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise IlfError(f"train config: {key}={value!r} must be a number")
                value = float(value) if key != "warmup_steps" or not float(value).is_integer() else value
            elif isinstance(default, str) and not isinstance(value, str):
                raise IlfError(f"train config: {key}={value!r} must be a string")
            kwargs[key] = value
        return cls(**kwargs)

    def warmup_for(self, total_steps: int) -> int:
        """Warmup in steps for a run of `total_steps`."""
        if self.warmup_steps < 1:
            return int(round(self.warmup_steps * total_steps))
        return int(self.warmup_steps)
