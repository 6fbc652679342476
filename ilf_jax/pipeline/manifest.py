"""The run manifest: config, software versions, input fingerprints and stage completion, in `manifest.json`."""

from __future__ import annotations

import hashlib
import importlib.metadata
import pathlib
import platform
import time
from typing import Any, Mapping

from ilf_jax.jsonl import atomic_write_json, read_json

MANIFEST = "manifest.json"
_HEAD_BYTES = 1 << 20


def versions() -> dict[str, str]:
    """Versions of Python and the packages that decide the results."""
    out = {"python": platform.python_version()}
    for pkg in ("ilf_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "tokenizers", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _file_digest(path: pathlib.Path, h: Any) -> None:
    """Feed a file into `h`: all of it when small, else its size, first and last MiB (cheap for 14 GB weights)."""
    size = path.stat().st_size
    h.update(f"{size}\0".encode())
    with path.open("rb") as f:
        if size <= 4 * _HEAD_BYTES:
            h.update(f.read())
        else:
            h.update(f.read(_HEAD_BYTES))
            f.seek(size - _HEAD_BYTES)
            h.update(f.read())


def fingerprint(path: str | pathlib.Path) -> str:
    """sha256 over a file or a directory tree (relative names and contents; see `_file_digest`)."""
    path = pathlib.Path(path)
    h = hashlib.sha256()
    if path.is_file():
        _file_digest(path, h)
        return h.hexdigest()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode() + b"\0")
        _file_digest(p, h)
    return h.hexdigest()


def write_manifest(run_dir: pathlib.Path, config: Mapping[str, Any], inputs: Mapping[str, Any],
                   stages: Mapping[str, Any]) -> None:
    """Rewrite the manifest atomically, keeping its creation time."""
    path = run_dir / MANIFEST
    created = read_json(path).get("created") if path.is_file() else None
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(path, {"created": created or now, "updated": now, "config": config, "versions": versions(),
                             "inputs": inputs, "stages": stages})


def read_manifest(run_dir: pathlib.Path) -> dict[str, Any] | None:
    path = run_dir / MANIFEST
    return read_json(path) if path.is_file() else None
