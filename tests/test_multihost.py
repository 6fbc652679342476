"""Two local processes x 4 CPU devices on one global mesh == one process with 8 devices: a sharded
forward pass, a sampling call, two train steps (with an Orbax checkpoint saved and restored by both
processes, and an HF export), and HF conversion where each host reads only its part."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multihost_case as case
from ilf_jax.parallel import make_mesh, param_shardings
from ilf_jax.parallel.distributed import process_share
from ilf_jax.parallel.forward import sharded_forward

HERE = pathlib.Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(script: pathlib.Path | None, args: list[str], n: int = 2, timeout: float = 600) -> list[str]:
    """Run `script PORT PROCESS_ID *args` as `n` local processes of one JAX run; their logs. With no
    script: `python -m ilf_jax.cli *args` with 4 CPU devices and the ILF_* variables (as the launch scripts do)."""
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])

    def command(i: int) -> tuple[list[str], dict[str, str]]:
        if script is not None:
            return [sys.executable, str(script), port, str(i), *args], env
        return [sys.executable, "-m", "ilf_jax.cli", *args], {
            **env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
            "ILF_COORDINATOR": f"localhost:{port}", "ILF_NUM_PROCESSES": str(n), "ILF_PROCESS_ID": str(i)}

    procs = [subprocess.Popen(command(i)[0], env=command(i)[1], cwd=HERE.parent, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(n)]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return logs


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> pathlib.Path:
    from helpers import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def two_process_result(tmp_path_factory, tokenizer_dir):
    from ilf_jax.model.convert import copy_tokenizer, export_hf

    out = tmp_path_factory.mktemp("multihost")
    (out / "tok").mkdir()
    copy_tokenizer(tokenizer_dir, out / "tok")
    export_hf(case.case_inputs()[0], case.CONFIG, out / "hf")
    launch(HERE / "multihost_worker.py", [str(out)])
    return out, dict(np.load(out / "result.npz")), json.loads((out / "result.json").read_text())


def test_forward_matches_single_process(two_process_result):
    _, arrays, _ = two_process_result
    params, tokens, valid = case.case_inputs()
    mesh = make_mesh(case.MESH)
    params = jax.device_put(params, param_shardings(case.CONFIG, mesh))
    expected = np.asarray(sharded_forward(case.CONFIG, mesh)(params, jnp.asarray(tokens), jnp.asarray(valid)))
    np.testing.assert_allclose(arrays["logits"][valid], expected[valid], atol=1e-5)


def test_sampling_matches_single_process(two_process_result, tokenizer_dir):
    from ilf_jax.model.store import load_tokenizer
    from ilf_jax.sample import Sampler

    from ilf_jax.sample.static import generate_static

    _, _, result = two_process_result
    sampler = Sampler(case.case_inputs()[0], case.CONFIG, load_tokenizer(tokenizer_dir), make_mesh(case.MESH))
    outs = sampler.sample(case.PROMPTS, case.sampling_config(), postprocess=case.postprocess)
    assert result["samples"] == case.completions(outs)
    assert len(result["samples"]) == len(case.PROMPTS) * 2 and any(r["tokens"] > 1 for r in result["samples"])
    # The engine's rows, on two processes, are the static sampler's (one process, one device).
    one = Sampler(case.case_inputs()[0], case.CONFIG, load_tokenizer(tokenizer_dir))
    rows = generate_static(one, one.encode(case.PROMPTS, case.sampling_config()), case.sampling_config())
    assert [(r["tokens"], r["finish"], r["text"]) for r in result["samples"]] == [
        (len(r.tokens), r.finish_reason, one.decode_text(r.tokens, case.postprocess)) for r in rows]


def test_train_steps_and_checkpoints_match_single_process(two_process_result, tokenizer_dir, tmp_path):
    from ilf_jax.model.convert import TensorSource
    from ilf_jax.model.store import load_model, load_tokenizer

    out, _, result = two_process_result
    ref = case.run_train(case.case_inputs()[0], load_tokenizer(tokenizer_dir), tmp_path / "train")
    assert result["train_steps"] == ref.steps == 2
    # Gradients are summed across processes in another order: equal up to float rounding.
    np.testing.assert_allclose(result["losses"], case.losses(tmp_path / "train"), rtol=1e-5)
    mesh = make_mesh(case.MESH)  # the two-process Orbax model restores onto a one-process mesh
    (_, got), (_, want) = load_model(out / "train" / "model", mesh), load_model(tmp_path / "train" / "model", mesh)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    hf_got, hf_want = TensorSource(out / "train" / "hf"), TensorSource(tmp_path / "train" / "hf")
    assert hf_got.keys() == hf_want.keys()
    for name in hf_want.keys():
        np.testing.assert_allclose(hf_got.read(name), hf_want.read(name), rtol=1e-4, atol=1e-6)


def test_hf_conversion_reads_only_each_hosts_rows(two_process_result):
    out, _, result = two_process_result
    assert result["converted_equal"]
    total = (out / "hf" / "model.safetensors").stat().st_size
    assert all(0 < r < total for r in result["bytes_read"]), (result["bytes_read"], total)


def test_process_share_covers_every_item_once():
    for n in range(0, 11):
        for count in (1, 2, 3, 4):
            shares = [list(process_share(n, i, count)) for i in range(count)]
            assert sum(shares, []) == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


# -- a tiny pipeline run: two processes write the same artifacts as one ---------------------------
PIPELINE = ["baselines=[]", "report.perplexity=false", "tasks.ids.test=[11,12]", "tasks.ids.refine=[114,124]",
            "tasks.ids.train=[311]", "model.mesh=-1,1,1", "executor.workers=1",
            *[f"{s}.train.{k}" for s in ("refiner", "finetune") for k in ("mesh=[-1,1,1]", "batch_size=8")]]


@pytest.mark.parametrize("family", ["codegen", "llama"])
def test_pipeline_two_processes_write_the_same_artifacts(tmp_path, shared_data, family):
    """Sampling (SPMD, each host tokenizes its share), execution (each host runs its share of the
    programs, verdicts merged), one train step (Orbax checkpoints from both processes) and sampling
    from the trained model: records, stage summaries and results.json equal the one-process run's
    (for a tiny CodeGen and a tiny grouped-query Llama)."""
    from helpers import tiny_pipeline_model
    from ilf_jax import cli
    from test_pipeline import TINY, _artifacts, _overrides

    model = tiny_pipeline_model(tmp_path / "model", family)
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["run", str(TINY), *PIPELINE]
    assert cli.main([*args, *_overrides(shared_data, model, one), "--no-progress"]) == 0
    launch(None, [*args, *_overrides(shared_data, model, two), "--no-progress"])
    got, want = _artifacts(two), _artifacts(one)
    assert got == want
    assert "r1.execute_base/verdicts.jsonl" in got and "r1.train_refine/train/metrics.jsonl" in got
    assert json.loads((two / "stages" / "r1.train_refine" / "stage.json").read_text())["summary"]["trained"]
    assert json.loads((two / "results.json").read_text()) == json.loads((one / "results.json").read_text())
    assert not list(two.rglob("*.tmp"))  # no stray temporary files
