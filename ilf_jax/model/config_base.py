"""What every model family's frozen config shares: the size names the rest of the project reads
under one spelling (`alias`, `fixed`), `replace`, and the dtype check."""

from __future__ import annotations

import dataclasses
from typing import Any, Self

from ilf_jax.errors import IlfError

DTYPES = ("float32", "bfloat16", "float16")


def alias(field: str) -> property:
    """A read-only property answering with `field`: a family's own name for a size every config has."""
    return property(lambda self: getattr(self, field), doc=f"`{field}`, under the name every family's config answers to")


def fixed(value: Any) -> property:
    """A read-only property with the same value for every config of the family (e.g. its model type)."""
    return property(lambda self: value, doc=f"always {value!r} in this family")


class ConfigBase:
    """Mixin of the families' frozen config dataclasses."""

    dtype: str
    param_dtype: str

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` (checked again by the config's `__post_init__`)."""
        return dataclasses.replace(self, **changes)

    def check_dtypes(self) -> None:
        """Refuse a compute or storage dtype other than fp32, bf16 and fp16."""
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise IlfError(f"{name}={getattr(self, name)!r} must be one of {DTYPES}")
