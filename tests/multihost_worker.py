"""One process of a two-process JAX run (4 CPU devices each); run by tests/test_multihost.py.

usage: python multihost_worker.py PORT PROCESS_ID OUT_DIR
OUT_DIR holds `tok/` (a tokenizer) and `hf/` (an HF export of the case params), written by the test.
Process 0 writes what it computed on the global 8-device mesh to OUT_DIR/result.npz and
OUT_DIR/result.json; training writes OUT_DIR/train/ (both processes, Orbax checkpoints).
"""

import json
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ilf_jax.parallel import batch_sharding, make_mesh, param_shardings  # noqa: E402
from ilf_jax.parallel.distributed import allgather_objects, fetch, global_array, initialize, process_share  # noqa: E402
from ilf_jax.processes import is_writer as is_main  # noqa: E402
from ilf_jax.parallel.forward import sharded_forward  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import multihost_case as case  # noqa: E402


def main() -> None:
    port, pid, out = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
    initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = make_mesh(case.MESH)
    params, tokens, valid = case.case_inputs()
    shardings = param_shardings(case.CONFIG, mesh)
    g_params = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: np.asarray(x)[i]), params, shardings)

    # 1. Forward pass: each process contributes its rows of the batch.
    rows = process_share(tokens.shape[0])
    g_tokens = global_array(tokens[rows.start : rows.stop], batch_sharding(mesh, 2))
    g_valid = global_array(valid[rows.start : rows.stop], batch_sharding(mesh, 2))
    logits = fetch(sharded_forward(case.CONFIG, mesh)(g_params, g_tokens, g_valid))

    # 2. Sampling: an SPMD call with the same prompts on every process.
    from ilf_jax.model.store import load_tokenizer
    from ilf_jax.sample import Sampler

    tok = load_tokenizer(out / "tok")
    outs = Sampler(g_params, case.CONFIG, tok, mesh).sample(case.PROMPTS, case.sampling_config(), postprocess=case.postprocess)

    # 3. Two train steps (stop after one, resume from the multi-process checkpoint).
    result = case.run_train(params, tok, out / "train")

    # 4. HF conversion onto another mesh: each host reads only the rows its devices hold.
    from ilf_jax.model.convert import TensorSource, load_hf_params

    source = TensorSource(out / "hf")
    converted = load_hf_params(out / "hf", case.CONFIG, param_shardings(case.CONFIG, make_mesh(case.CONVERT_MESH)), source=source)
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fetch(converted)), jax.tree.leaves(params)))
    read = allgather_objects(source.bytes_read)

    if is_main():
        np.savez(out / "result.npz", logits=np.asarray(logits))
        (out / "result.json").write_text(json.dumps({
            "samples": case.completions(outs), "train_steps": result.steps, "losses": case.losses(out / "train"),
            "converted_equal": same, "bytes_read": read,
        }))


if __name__ == "__main__":
    main()
