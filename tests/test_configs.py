"""Every YAML under configs/ loads and validates with the loader of the command that reads it, and the
one config reader refuses unknown keys and ill-typed values naming the file and the key path."""

from __future__ import annotations

import pathlib

import pytest

from ilf_jax.errors import IlfError

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.y*ml"))


def _load(path: pathlib.Path):
    """The settings a command would run with, read by that command's loader."""
    folder = path.relative_to(REPO / "configs").parts[0]
    if folder == "models":
        from ilf_jax.model.family import config_from_file

        return config_from_file(path)
    if folder == "train":
        from ilf_jax.train.cli import load_run_config

        return load_run_config(path, [])
    if folder in ("paper", "pipeline"):
        from ilf_jax.pipeline import config

        return config.load(path)
    if path.name == "demo.yaml":
        from ilf_jax.demo.cli import demo_config
        from ilf_jax.pipeline import config

        demo, raw = demo_config(path)
        return demo, config.load(path)
    raise AssertionError(f"{path}: no loader knows this config (add it to tests/test_configs.py)")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_loads_and_validates(path):
    assert _load(path) is not None


def test_unknown_keys_and_bad_values_name_the_file_and_key_path(tmp_path):
    from ilf_jax.pipeline import config
    from ilf_jax.train.cli import load_run_config

    assert len(CONFIGS) >= 12
    tiny = (REPO / "configs" / "pipeline" / "tiny.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny.replace("  timeout: 3.0", "  timeout: 3.0\n  timeuot: 2"))
    with pytest.raises(IlfError, match=rf"^{bad}: unknown key 'executor.timeuot' \(known: workers, timeout, test_style\)$"):
        config.load(bad)
    bad.write_text(tiny.replace("learning_rate: 1.0e-3", "learning_rate: 1.0e-3\n    lerning_rate: 1"))
    with pytest.raises(IlfError, match=rf"^{bad}: unknown key 'refiner.train.lerning_rate'"):
        config.load(bad)
    bad.write_text(tiny.replace("  n: 2\n", "  n: two\n"))
    with pytest.raises(IlfError, match=rf"^{bad}: sampling.n='two' must be an integer$"):
        config.load(bad)
    with pytest.raises(IlfError, match=r"^config: evaluation.sampling.temperature='hot' must be a number$"):
        config.load(REPO / "configs" / "pipeline" / "tiny.yaml", ["evaluation.sampling.temperature=hot"])
    with pytest.raises(IlfError, match=r"^config: tasks.ids key='dev' must be one of prompt, test, refine, train$"):
        config.load(REPO / "configs" / "pipeline" / "tiny.yaml", ["tasks.ids.dev=[1]"])
    got = config.load(REPO / "configs" / "pipeline" / "tiny.yaml", ["refiner.sampling.n=3", "sweep.epochs=[1, 2]"])
    assert got.sampling_with(got.refiner.sampling).n == 3 and got.sampling_with(got.refiner.sampling).temperature == 0.8
    assert got.sweep.epochs == (1, 2) and got.refiner.train.batch_size == 2
    train = tmp_path / "train.yaml"
    train.write_text((REPO / "configs" / "train" / "tiny.yaml").read_text() + "epoch: 3\n")
    with pytest.raises(IlfError, match=rf"^{train}: unknown key 'epoch'"):
        load_run_config(train, [])
