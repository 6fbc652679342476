"""Two local processes x 4 CPU devices on one global mesh == one process with 8 devices."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilf_jax.parallel import make_mesh, param_shardings
from ilf_jax.parallel.distributed import process_share
from ilf_jax.parallel.forward import sharded_forward
from multihost_case import CONFIG, MESH, case_inputs

HERE = pathlib.Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihost")
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "multihost_worker.py"), port, str(i), str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return dict(np.load(out / "result.npz"))


def test_forward_matches_single_process(two_process_result):
    params, tokens, valid = case_inputs()
    mesh = make_mesh(MESH)
    params = jax.device_put(params, param_shardings(CONFIG, mesh))
    expected = np.asarray(sharded_forward(CONFIG, mesh)(params, jnp.asarray(tokens), jnp.asarray(valid)))
    np.testing.assert_allclose(two_process_result["logits"][valid], expected[valid], atol=1e-5)


def test_process_share_covers_every_item_once():
    for n in range(0, 11):
        for count in (1, 2, 3, 4):
            shares = [list(process_share(n, i, count)) for i in range(count)]
            assert sum(shares, []) == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
