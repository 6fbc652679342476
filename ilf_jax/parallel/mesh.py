"""A device mesh over the axes ('data', 'fsdp', 'tensor'), sized from config (one size may be -1)."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from ilf_jax.errors import IlfError

AXES = ("data", "fsdp", "tensor")


def resolve_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
    """Fill in a single -1 so that the product equals `n_devices`; refuse shapes that don't fit."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(AXES):
        raise IlfError(f"mesh shape {shape} must have {len(AXES)} sizes for axes {AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise IlfError(f"mesh shape {shape}: sizes must be positive, with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n_devices % known:
            raise IlfError(f"mesh shape {shape} does not divide {n_devices} devices")
        shape = tuple(n_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != n_devices:
        raise IlfError(f"mesh shape {shape} needs {math.prod(shape)} devices, {n_devices} available")
    return shape


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes ('data', 'fsdp', 'tensor') over `devices` (all devices by default)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_shape(shape, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, AXES)


def parse_mesh(text: str) -> tuple[int, ...]:
    """Mesh sizes from a CLI string 'data,fsdp,tensor', e.g. '1,-1,1'."""
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise IlfError(f"mesh {text!r}: expected {len(AXES)} comma-separated integers (data,fsdp,tensor)") from None
    if len(sizes) != len(AXES):
        raise IlfError(f"mesh {text!r}: expected {len(AXES)} sizes (data,fsdp,tensor)")
    return sizes
