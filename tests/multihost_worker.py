"""One process of a two-process JAX run (4 CPU devices each); run by tests/test_multihost.py.

usage: python multihost_worker.py PORT PROCESS_ID OUT_DIR
Process 0 writes what it computed on the global 8-device mesh to OUT_DIR/result.npz.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ilf_jax.parallel import batch_sharding, make_mesh, param_shardings  # noqa: E402
from ilf_jax.parallel.distributed import global_array, initialize, is_main, process_share  # noqa: E402
from ilf_jax.parallel.forward import sharded_forward  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from multihost_case import CONFIG, MESH, case_inputs  # noqa: E402


def main() -> None:
    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = make_mesh(MESH)
    params, tokens, valid = case_inputs()
    shardings = param_shardings(CONFIG, mesh)
    params = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: np.asarray(x)[i]), params, shardings)
    rows = process_share(tokens.shape[0])
    g_tokens = global_array(tokens[rows.start : rows.stop], batch_sharding(mesh, 2))
    g_valid = global_array(valid[rows.start : rows.stop], batch_sharding(mesh, 2))
    logits = sharded_forward(CONFIG, mesh)(params, g_tokens, g_valid)
    from jax.experimental import multihost_utils

    logits = multihost_utils.process_allgather(logits, tiled=True)
    if is_main():
        np.savez(os.path.join(out, "result.npz"), logits=np.asarray(logits))


if __name__ == "__main__":
    main()
