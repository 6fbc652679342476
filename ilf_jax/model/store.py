"""Model directories on disk: HF directories of any supported family, our own (config + tokenizer
+ Orbax params), and LoRA adapter directories (config + tokenizer + `lora.json` naming the base +
Orbax adapters).

`load_model` takes any of them (adapters are merged into their base on the devices at load), so
every command that needs a model accepts all three. Restoring uses an
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
from ilf_jax.model.family import ModelConfig, abstract_params, config_from_file, param_specs
from ilf_jax.model.lora import Lora
from ilf_jax.parallel.sharding import DEFAULT_RULES, Rules, param_shardings, tree_shardings

PARAMS_DIR = "params"
ADAPTERS_DIR = "adapters"
LORA_META = "lora.json"  # {"base": base model dir, "rank", "alpha", "targets", "base_dtype"}
ILF_META = "ilf_jax.json"  # our numerics (dtype, param_dtype) next to the HF config.json


def is_adapter_dir(directory: str | pathlib.Path) -> bool:
    """True for a directory written by `save_adapters` (LoRA adapters plus a reference to the base)."""
    return (pathlib.Path(directory) / LORA_META).is_file()


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
    if is_adapter_dir(directory):
        config, base, lora, adapters = load_adapters(directory, mesh, rules, **overrides)
        return config, jax.jit(lambda b, a: lora.merge(b, a, config.param_dtype))(base, adapters)
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
    return _write_dir(directory, config, PARAMS_DIR, params, tokenizer_dir, {})


def _write_dir(directory: str | pathlib.Path, config: ModelConfig, tree_dir: str, tree: Any,
               tokenizer_dir: str | pathlib.Path | None, extra: dict[str, Any]) -> pathlib.Path:
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (directory / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
        meta = {"dtype": config.dtype, "param_dtype": config.param_dtype}
        (directory / ILF_META).write_text(json.dumps(meta) + "\n")
        for name, record in extra.items():
            (directory / name).write_text(json.dumps(record, indent=2) + "\n")
        if tokenizer_dir is not None:
            copy_tokenizer(tokenizer_dir, directory)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(directory / tree_dir, tree, force=True)
        ckpt.wait_until_finished()
    return directory


def lora_of(config: ModelConfig, targets: Any, rank: int, alpha: float) -> Lora:
    """The `Lora` of a model config: its projection sites named by `targets` (roles)."""
    return Lora.for_model(param_specs(config), abstract_params(config), tuple(targets), rank, alpha)


def save_adapters(
    directory: str | pathlib.Path, config: ModelConfig, meta: dict[str, Any], adapters: Any,
    tokenizer_dir: str | pathlib.Path | None = None,
) -> pathlib.Path:
    """Write an adapter directory: config.json, `lora.json` (`meta`: base dir, rank, alpha,
    targets, base_dtype), tokenizer files and the Orbax adapters (every process calls it)."""
    return _write_dir(directory, config, ADAPTERS_DIR, adapters, tokenizer_dir, {LORA_META: meta})


def load_adapters(
    directory: str | pathlib.Path, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES, **overrides: Any
) -> tuple[ModelConfig, Any, Lora, Any]:
    """(config, base params, Lora, adapters) of an adapter directory; the base is loaded in the
    dtype it was trained with unless `param_dtype` is overridden."""
    directory = pathlib.Path(directory)
    try:
        meta = json.loads((directory / LORA_META).read_text())
        base_dir = pathlib.Path(meta["base"])
        lora_args = (meta["targets"], int(meta["rank"]), float(meta["alpha"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise IlfError(f"{directory / LORA_META}: not a valid adapter record ({e})") from None
    if not base_dir.is_absolute():
        base_dir = directory / base_dir
    overrides = {"param_dtype": meta.get("base_dtype", "float32"), **overrides}
    config, base = load_model(base_dir, mesh, rules, **overrides)
    lora = lora_of(config, *lora_args)
    target = lora.abstract()
    if mesh is not None:
        target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              target, tree_shardings(lora.specs(), target, mesh, rules))
    with ocp.StandardCheckpointer() as ckpt:
        try:
            adapters = ckpt.restore((directory / ADAPTERS_DIR).absolute(), target)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise IlfError(f"{directory}: cannot restore adapters: {str(e).splitlines()[0]}") from None
    return config, base, lora, adapters


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
