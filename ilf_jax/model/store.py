"""Model directories on disk: HF directories of any supported family and our own (config + tokenizer + Orbax params).

`load_model` takes either, so every command that needs a model accepts both. Restoring uses an
abstract target that carries shardings, so params saved on one mesh restore onto another.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from ilf_jax.errors import IlfError
from ilf_jax.model.convert import copy_tokenizer, load_hf_params
from ilf_jax.model.family import ModelConfig, abstract_params, config_from_file
from ilf_jax.parallel.sharding import DEFAULT_RULES, Rules, param_shardings

PARAMS_DIR = "params"
ILF_META = "ilf_jax.json"  # our numerics (dtype, param_dtype) next to the HF config.json


def is_native(directory: str | pathlib.Path) -> bool:
    """True for a directory written by `save_model` (as opposed to an HF directory)."""
    return (pathlib.Path(directory) / PARAMS_DIR).is_dir()


def read_config(directory: str | pathlib.Path, **overrides: Any) -> ModelConfig:
    """The model config of either kind of directory, with our saved numerics and `overrides` applied."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise IlfError(f"{directory}: model directory not found")
    config = config_from_file(directory / "config.json")
    meta = directory / ILF_META
    if meta.is_file():
        config = config.replace(**json.loads(meta.read_text()))
    return config.replace(**overrides) if overrides else config


def _abstract_target(config: ModelConfig, mesh: Mesh | None, rules: Rules) -> Any:
    shapes = abstract_params(config)
    if mesh is None:
        return shapes
    shardings = param_shardings(config, mesh, rules)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def restore_params(path: str | pathlib.Path, config: ModelConfig, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES) -> Any:
    """Restore an Orbax params tree at `path` onto `mesh` (or the default device)."""
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise IlfError(f"{path}: parameter checkpoint not found")
    with ocp.StandardCheckpointer() as ckpt:
        try:
            return ckpt.restore(path, _abstract_target(config, mesh, rules))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise IlfError(f"{path}: cannot restore parameters: {str(e).splitlines()[0]}") from None


def load_model(
    directory: str | pathlib.Path, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES, **overrides: Any
) -> tuple[ModelConfig, Any]:
    """(config, params) from an HF directory (converted on the fly) or one of ours, any family."""
    directory = pathlib.Path(directory)
    config = read_config(directory, **overrides)
    if is_native(directory):
        return config, restore_params(directory / PARAMS_DIR, config, mesh, rules)
    shardings = None if mesh is None else param_shardings(config, mesh, rules)
    return config, load_hf_params(directory, config, shardings)


def save_model(
    directory: str | pathlib.Path, config: ModelConfig, params: Any, tokenizer_dir: str | pathlib.Path | None = None
) -> pathlib.Path:
    """Write config.json (HF format), our numerics, tokenizer files and Orbax params to `directory`.

    Multi-process: every process calls it (Orbax writes each process's shards); only process 0
    writes the small files."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (directory / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
        meta = {"dtype": config.dtype, "param_dtype": config.param_dtype}
        (directory / ILF_META).write_text(json.dumps(meta) + "\n")
        if tokenizer_dir is not None:
            copy_tokenizer(tokenizer_dir, directory)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory / PARAMS_DIR, params, force=True)
        ckpt.wait_until_finished()
    return directory


def load_tokenizer(directory: str | pathlib.Path) -> Any:
    """The tokenizer `transformers.AutoTokenizer` loads from `directory` (no hub access), checked
    against the directory's `config.json`: their EOS ids must agree."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as e:
        raise IlfError(f"{directory}: no loadable tokenizer: {str(e).splitlines()[0]}") from None
    check_tokenizer_eos(tokenizer, pathlib.Path(directory) / "config.json")
    return tokenizer


def check_tokenizer_eos(tokenizer: Any, config_json: pathlib.Path) -> None:
    """Refuse a tokenizer whose EOS is not (one of) the model config's `eos_token_id`."""
    if not config_json.is_file() or getattr(tokenizer, "eos_token_id", None) is None:
        return
    try:
        eos = json.loads(config_json.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError):
        return  # reading the config reports its own error
    allowed = eos if isinstance(eos, list) else [eos]
    if eos is not None and tokenizer.eos_token_id not in allowed:
        raise IlfError(
            f"{config_json.parent / 'tokenizer_config.json'}: eos_token {tokenizer.eos_token!r} has id "
            f"{tokenizer.eos_token_id}, but {config_json} has eos_token_id {eos}"
        )
