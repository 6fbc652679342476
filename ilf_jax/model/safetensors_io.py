"""Lazy, tensor-by-tensor safetensors reading and streaming writing (bf16 included, via ml_dtypes).

We read with `os.pread` instead of mmap so that pages of a converted tensor do not stay resident:
converting a model then needs about one model's worth of host memory, not two.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from ilf_jax.errors import IlfError

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsFile:
    """One `.safetensors` file: its header is parsed and checked up front, tensors read on demand."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise IlfError(f"{self.path}: truncated safetensors file (no header)")
                (n,) = struct.unpack("<Q", raw)
                if n > size - 8:
                    raise IlfError(f"{self.path}: truncated safetensors file (header says {n} bytes)")
                header = json.loads(f.read(n))
        except FileNotFoundError:
            raise IlfError(f"{self.path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise IlfError(f"{self.path}: not a safetensors file (unreadable header)") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self._start = 8 + n
        self._entries = {}
        for name, e in header.items():
            if e.get("dtype") not in DTYPES:
                raise IlfError(f"{self.path}: tensor {name!r} has unsupported dtype {e.get('dtype')!r}")
            begin, end = e["data_offsets"]
            dtype = DTYPES[e["dtype"]]
            if end - begin != dtype.itemsize * int(np.prod(e["shape"], dtype=np.int64)):
                raise IlfError(f"{self.path}: tensor {name!r} byte range disagrees with its shape {e['shape']}")
            if self._start + end > size:
                raise IlfError(
                    f"{self.path}: truncated safetensors file (tensor {name!r} ends at byte "
                    f"{self._start + end}, file has {size})"
                )
            self._entries[name] = (dtype, tuple(e["shape"]), begin, end)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def read(self, name: str) -> np.ndarray:
        """The tensor's data, freshly read into its own buffer."""
        dtype, shape, begin, end = self._entries[name]
        return self._pread(name, begin, end).reshape(shape)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the tensor's leading axis (one contiguous byte range)."""
        dtype, shape, begin, end = self._entries[name]
        row = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        return self._pread(name, begin + start * row, begin + stop * row).reshape((stop - start, *shape[1:]))

    def _pread(self, name: str, begin: int, end: int) -> np.ndarray:
        dtype = self._entries[name][0]
        buf = bytearray(end - begin)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            view, done = memoryview(buf), 0
            while done < len(buf):
                got = os.preadv(fd, [view[done:]], self._start + begin + done)
                if got == 0:
                    raise IlfError(f"{self.path}: truncated while reading tensor {name!r}")
                done += got
        finally:
            os.close(fd)
        return np.frombuffer(buf, dtype=dtype)


def write_safetensors(
    path: str | pathlib.Path,
    tensors: Iterable[tuple[str, tuple[int, ...], np.dtype, np.ndarray | Callable[[], np.ndarray]]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write tensors to `path`; each value is an array or a zero-arg callable producing one, called lazily."""
    entries, offset = {}, 0
    items = list(tensors)
    for name, shape, dtype, _ in items:
        dtype = np.dtype(dtype)
        nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        entries[name] = {"dtype": _NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        entries["__metadata__"] = metadata
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    tmp = pathlib.Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for name, shape, dtype, value in items:
            array = np.ascontiguousarray(value() if callable(value) else value, dtype=np.dtype(dtype))
            if array.shape != tuple(shape):
                raise ValueError(f"{name}: shape {array.shape} != declared {tuple(shape)}")
            f.write(array.tobytes())
    os.replace(tmp, path)
