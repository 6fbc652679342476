"""Conversion benchmark: HF safetensors -> sharded JAX params, wall time and peak host RSS.

Writes a random CodeGen checkpoint of at least 1 GB itself, converts it in a fresh process
(so the interpreter's baseline is measured before any weights are touched) and prints peak RSS
above that baseline as a ratio of the checkpoint size. Target: < 1.3x.

    python scripts/bench_convert.py [--layers 20 --width 1024] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import os, sys, time, resource, json
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
import jax
from ilf_jax.model.store import read_config
from ilf_jax.model.convert import load_hf_params
from ilf_jax.parallel import make_mesh, param_shardings
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
path = sys.argv[1]
config = read_config(path)
mesh = make_mesh((1, -1, 1))
shardings = param_shardings(config, mesh)
jax.block_until_ready(jax.device_put(0.0))
base = rss()
t0 = time.perf_counter()
params = load_hf_params(path, config, shardings)
jax.block_until_ready(params)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"base": base, "peak": peak, "wall": wall}))
"""


def write_checkpoint(directory: pathlib.Path, layers: int, width: int) -> int:
    """A random fp32 CodeGen checkpoint written tensor by tensor; returns its size in bytes."""
    import numpy as np

    from ilf_jax.model.config import CodeGenConfig
    from ilf_jax.model.safetensors_io import write_safetensors
    from ilf_jax.model.weight_map import weight_map

    config = CodeGenConfig(n_layer=layers, n_embd=width, n_head=16, rotary_dim=32)
    rng = np.random.default_rng(0)
    tensors = [
        (e.hf_name, e.hf_shape, np.float32, lambda e=e: rng.standard_normal(e.hf_shape, dtype=np.float32) * 0.02)
        for e in weight_map(config)
    ]
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config.to_hf_dict()))
    return (directory / "model.safetensors").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        ckpt = pathlib.Path(tmp) / "hf"
        size = write_checkpoint(ckpt, args.layers, args.width)
        os.sync()
        out = subprocess.run([sys.executable, "-c", CHILD, str(ckpt)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    above = r["peak"] - r["base"]
    print(f"checkpoint: {size / 2**30:.2f} GiB ({args.layers} layers, width {args.width}, fp32 safetensors)")
    print(f"convert wall time: {r['wall']:.1f} s ({size / 2**20 / r['wall']:.0f} MiB/s)")
    print(f"peak RSS above interpreter baseline: {above / 2**30:.2f} GiB = {above / size:.2f} x checkpoint size (target < 1.3)")


if __name__ == "__main__":
    main()
