"""HF model directory (any supported family) <-> our parameter pytree, one tensor at a time.

Import reads `model.safetensors`, sharded safetensors with an index, `pytorch_model.bin` or
sharded `.bin` (torch needed only for `.bin`), transforms each tensor by the family's weight map
and places it straight into its sharding. Export streams our parameters into safetensors (sharded
with an index above `max_shard_bytes`) + config.

Multi-host: every process calls `load_hf_params` with the same global shardings. For tensors whose
transform is a plain copy or a transpose (embeddings, norms, MLP kernels and biases, lm_head), a
process reads only the rows of the HF tensor's leading axis that its devices hold (a bounding
range; the whole tensor when its devices hold every row). Attention projections are reshaped
into explicit heads across their leading axis, so each process reads them whole, one tensor at
a time (at most one layer's attention weights on the host at once).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Sharding

from ilf_jax.errors import IlfError
from ilf_jax.model.family import ModelConfig, ignored_suffixes, weight_map
from ilf_jax.model.safetensors_io import SafetensorsFile, write_safetensors
from ilf_jax.model.weight_map import leading_axis

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
    "chat_template.jinja",
)
DEFAULT_SHARD_BYTES = 4 * 2**30  # export writes model-0000i-of-0000n.safetensors + index above this


class TensorSource:
    """Name -> lazily read numpy array, over the weight files of one HF directory."""

    def __init__(self, directory: str | pathlib.Path):
        self.directory = pathlib.Path(directory)
        if not self.directory.is_dir():
            raise IlfError(f"{self.directory}: model directory not found")
        self._where: dict[str, pathlib.Path] = {}
        self._files: dict[pathlib.Path, Any] = {}
        self.bytes_read = 0  # tensor bytes read so far (tests check that hosts read only their part)
        d = self.directory
        for index_name, single in (
            ("model.safetensors.index.json", "model.safetensors"),
            ("pytorch_model.bin.index.json", "pytorch_model.bin"),
        ):
            if (d / index_name).is_file():
                try:
                    weight_map_ = json.loads((d / index_name).read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError):
                    raise IlfError(f"{d / index_name}: not a valid checkpoint index (no weight_map)") from None
                self._where = {k: d / v for k, v in weight_map_.items()}
                break
            if (d / single).is_file():
                self._where = {k: d / single for k in self._open(d / single).keys()}
                break
        else:
            raise IlfError(f"{d}: no model.safetensors, pytorch_model.bin or index file")
        for path in set(self._where.values()):
            if not path.is_file():
                raise IlfError(f"{path}: weight file named by the index is missing")

    def _open(self, path: pathlib.Path) -> Any:
        if path not in self._files:
            if path.suffix == ".safetensors":
                self._files[path] = SafetensorsFile(path)
            else:
                self._files[path] = _BinFile(path)
        return self._files[path]

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self._where[name]).shape(name))

    def read(self, name: str) -> np.ndarray:
        out = self._open(self._where[name]).read(name)
        self.bytes_read += out.nbytes
        return out

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the tensor's leading axis."""
        out = self._open(self._where[name]).read_rows(name, start, stop)
        self.bytes_read += out.nbytes
        return out

    def file_of(self, name: str) -> pathlib.Path:
        return self._where[name]


class _BinFile:
    """A PyTorch `.bin` checkpoint, memory-mapped by torch so tensors are read as they are used."""

    def __init__(self, path: pathlib.Path):
        try:
            import torch
        except ImportError:
            raise IlfError(f"{path}: reading .bin checkpoints needs torch (pip install 'ilf_jax[torch]')") from None
        try:
            self._state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # torch raises many types for corrupt files
            raise IlfError(f"{path}: cannot read PyTorch checkpoint: {str(e).splitlines()[0]}") from None
        self.path = path

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.array(self._convert(self._state[name][start:stop]))

    def read(self, name: str) -> np.ndarray:
        return self._convert(self._state[name])

    @staticmethod
    def _convert(t: Any) -> np.ndarray:
        import torch

        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(jnp.bfloat16)
        return t.numpy()


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _place(array: np.ndarray, sharding: Sharding | None) -> jax.Array:
    if sharding is None:
        return jax.device_put(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _rows_needed(sharding: Sharding, shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    """The bounding range along `axis` of the slices this process's devices hold."""
    spans = [idx[axis].indices(shape[axis])[:2] for idx in sharding.addressable_devices_indices_map(shape).values()]
    return min(a for a, _ in spans), max(b for _, b in spans)


def _place_rows(source: TensorSource, entry: Any, dtype: Any, sharding: Sharding, axis: int) -> jax.Array:
    """Read only the rows of the HF tensor this process's devices need, and place them."""
    shape = entry.hf_shape if axis == 0 else tuple(reversed(entry.hf_shape))
    lo, hi = _rows_needed(sharding, shape, axis)
    part = np.ascontiguousarray(entry.to_jax(source.read_rows(entry.hf_name, lo, hi)).astype(dtype))

    def piece(index: tuple[slice, ...]) -> np.ndarray:
        index = list(index)
        start, stop, _ = index[axis].indices(shape[axis])
        index[axis] = slice(start - lo, stop - lo)
        return part[tuple(index)]

    return jax.make_array_from_callback(shape, sharding, piece)


def load_hf_params(
    directory: str | pathlib.Path,
    config: ModelConfig,
    shardings: Any | None = None,
    progress: Callable[[str], None] | None = None,
    source: TensorSource | None = None,
) -> Any:
    """Read an HF checkpoint of `config`'s family into our pytree, each leaf placed into its sharding as read.

    With shardings and several processes, each process reads only the rows it needs where the
    transform allows (see the module docstring). `source` may be passed to inspect `bytes_read`.
    """
    source = TensorSource(directory) if source is None else source
    sliced = shardings is not None and jax.process_count() > 1
    entries = weight_map(config)
    expected = {e.hf_name for e in entries}
    unknown = [k for k in source.keys() if k not in expected and not k.endswith(ignored_suffixes(config))]
    if unknown:
        raise IlfError(f"{source.file_of(unknown[0])}: unexpected tensor {unknown[0]!r} for a {config.model_type} model ({len(unknown)} in all)")
    dtype = jnp.dtype(config.param_dtype)
    params: dict = {}
    for entry in entries:
        if entry.hf_name not in source.keys():
            raise IlfError(f"{directory}: checkpoint has no tensor {entry.hf_name!r}")
        shape = source.shape(entry.hf_name)
        if shape != entry.hf_shape:
            raise IlfError(
                f"{source.file_of(entry.hf_name)}: tensor {entry.hf_name!r} has shape {list(shape)}, "
                f"config.json implies {list(entry.hf_shape)}"
            )
        sharding = None if shardings is None else _get(shardings, entry.path)
        axis = leading_axis(entry) if sliced else None
        if axis is not None:
            _set(params, entry.path, _place_rows(source, entry, dtype, sharding, axis))
        else:
            array = entry.to_jax(source.read(entry.hf_name)).astype(dtype)
            _set(params, entry.path, _place(np.ascontiguousarray(array), sharding))
            del array
        if progress:
            progress(entry.hf_name)
    return params


def export_hf(
    params: Any,
    config: ModelConfig,
    out_dir: str | pathlib.Path,
    tokenizer_dir: str | pathlib.Path | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> pathlib.Path:
    """Write `config.json` + safetensors (+ tokenizer files) that transformers loads: one
    `model.safetensors`, or shards of at most `max_shard_bytes` (a tensor never splits) with
    `model.safetensors.index.json`.

    Multi-process: every process calls it (fetching a leaf that spans processes is collective),
    one tensor at a time; only process 0 writes."""
    from ilf_jax.parallel.distributed import fetch as fetch_host

    out_dir = pathlib.Path(out_dir)
    dtype = np.dtype(jnp.dtype(config.param_dtype))
    entries = weight_map(config)
    if jax.process_index() != 0:
        for entry in entries:  # take part in the collectives, in the writer's order
            fetch_host(_get(params, entry.path))
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = _shard(entries, dtype.itemsize, max_shard_bytes)
    names = ["model.safetensors"] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        tensors = []
        for entry in shard:
            leaf = _get(params, entry.path)
            fetch = lambda leaf=leaf, entry=entry: entry.to_hf(fetch_host(leaf))  # noqa: E731
            tensors.append((entry.hf_name, entry.hf_shape, dtype, fetch))
        write_safetensors(out_dir / name, tensors, metadata={"format": "pt"})
    if len(shards) > 1:
        total = sum(int(np.prod(e.hf_shape)) * dtype.itemsize for e in entries)
        index = {"metadata": {"total_size": total}, "weight_map": {e.hf_name: n for n, shard in zip(names, shards) for e in shard}}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out_dir)
    return out_dir


def _shard(entries: list, itemsize: int, max_bytes: int) -> list[list]:
    """Consecutive groups of entries of at most `max_bytes` each (a larger tensor gets its own)."""
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = int(np.prod(entry.hf_shape)) * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def copy_tokenizer(src: str | pathlib.Path, dst: str | pathlib.Path) -> None:
    """Copy whatever tokenizer files `src` holds (AutoTokenizer loads them from `dst`)."""
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    if src.resolve() == dst.resolve():
        return
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
