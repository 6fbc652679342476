"""`ilf sample`: output format, resuming an interrupted run, bad input."""

from __future__ import annotations

import json

import pytest

from helpers import TINY_CONFIGS, save_hf, tiny_hf_model, tiny_tokenizer
from ilf_jax.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_model")
    save_hf(tiny_hf_model(0, **TINY_CONFIGS["a"]), d)
    tiny_tokenizer(d)
    return d


def _args(model_dir, prompts, out, *extra):
    return ["sample", "--model", str(model_dir), "--prompts", str(prompts), "-o", str(out), "-n", "3", "--temperature", "0.8",
            "--top-k", "50", "--max-new-tokens", "12", "--seed", "1", "--batch-size", "8", *extra]


def test_sample_cli_writes_and_resumes(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    recs = [{"id": 11, "prompt": "def add(a, b):\n"}, {"id": "x", "prompt": "def f(xs):\n"}, {"id": 13, "prompt": "for i in range(3):\n    print(i)\ndef g():\n"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out.jsonl"
    assert main(_args(model_dir, prompts, out)) == 0
    lines = out.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(r["id"], r["sample"]) for r in rows] == [(i, s) for i in (11, "x", 13) for s in range(3)]
    for r in rows:
        assert set(r) == {"id", "sample", "completion", "finish_reason", "num_tokens"}
        assert r["finish_reason"] in ("eos", "stop", "length") and 1 <= r["num_tokens"] <= 12
    full = out.read_text()
    # Interrupted run: the second prompt has one sample and a partial line.
    out.write_text("".join(line + "\n" for line in lines[:4]) + lines[4][:10])
    assert main(_args(model_dir, prompts, out)) == 0
    assert "1 already done, 2 to sample" in capsys.readouterr().err
    resumed = out.read_text()
    key = lambda line: (json.dumps(json.loads(line)["id"]), json.loads(line)["sample"])  # noqa: E731
    assert sorted(resumed.splitlines(), key=key) == sorted(full.splitlines(), key=key)
    # A finished output is left alone; other settings are refused.
    assert main(_args(model_dir, prompts, out)) == 0
    assert out.read_text() == resumed
    assert main(_args(model_dir, prompts, out, "--top-p", "0.5")) == 2
    assert "different settings (top_p)" in capsys.readouterr().err


def test_sample_cli_bad_input(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 1, "prompt": "def f():\\n"}\n{"id": 2}\n')
    assert main(_args(model_dir, prompts, tmp_path / "o.jsonl")) == 2
    err = capsys.readouterr().err
    assert f"{prompts}: line 2: field 'prompt'" in err and len(err.strip().splitlines()) == 1
    prompts.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    assert main(_args(model_dir, prompts, tmp_path / "o.jsonl")) == 2
    assert "repeats an earlier id" in capsys.readouterr().err
