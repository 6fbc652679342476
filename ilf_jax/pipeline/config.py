"""The pipeline config: defaults, strict merging of the user's YAML, and typed checks (no JAX here)."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any, Iterable, Mapping

from ilf_jax.configfile import apply_overrides, load_config
from ilf_jax.errors import IlfError

SPLIT_NAMES = ("prompt", "test", "refine", "train")
FEEDBACK_SOURCES = ("human", "model", "shuffled", "scripted", "app")
PROGRAM_SOURCES = ("annotated", "sampled")
TASK_SOURCES = ("mbpp", "hf", "factory")
BASELINES = ("zero_shot", "gold", "human", "fewshot_refine")
SWEEP_KEYS = ("learning_rate", "batch_size", "epochs")

_SAMPLING = {"n": 30, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "max_new_tokens": 512, "seed": 0,
             "batch_size": 32, "chunk": 16}

# Every key a config may hold; values are the defaults. `train` sections are TrainConfig fields
# (checked by TrainConfig.from_dict), `sampling` sections may set any key of _SAMPLING.
DEFAULTS: dict[str, Any] = {
    "run_dir": "runs/ilf",  # created or resumed
    "model": {"dir": None,  # base model: HF CodeGen directory or ilf_jax checkpoint (required)
              "tokenizer": None,  # default: the model directory's
              "mesh": None},  # sampling/evaluation mesh "data,fsdp,tensor" (None: default device)
    "tasks": {"source": "mbpp",  # mbpp (file) | hf (hub) | factory ("module:function" -> {split: [Task]})
              "path": None, "hf_name": "mbpp", "factory": None, "factory_args": {},
              "ids": {},  # {split: [task ids]} to use instead of the whole split
              "limit": {}},  # {split: N}: the first N ids of a split
    "executor": {"workers": None, "timeout": 3.0},
    "sampling": dict(_SAMPLING),  # base model; `chunk` = prompts per appended group of records
    "collect": {"splits": ["refine", "train"]},  # where the base model's failures are collected
    "feedback": {
        "source": "human",  # human | model | shuffled | scripted | app (people, in `ilf annotate`, on this run's failures)
        "annotations": None,  # Surge JSONL/CSV: human feedback, and pi_Refine's data
        "allow_test_annotations": False,  # leakage guard: test-split rows only when true
        "programs": None,  # annotated | sampled (default: annotated when there is an annotation file)
        "annotator": None,  # "module:function"(task, program, error, seed) -> feedback + refinement
        "annotator_seed": 0,
        "shuffle_seed": 0,  # the unrelated-feedback derangement
        "model": {"dir": None, "shots": 2, "temperature": 0.0, "max_new_tokens": 128},  # source=model
    },
    "refiner": {"train": {}, "sampling": {}},  # pi_Refine: TrainConfig fields, sampling overrides
    "finetune": {"train": {},  # pi_theta* and the gold/human baselines: TrainConfig fields
                 "baseline_tasks": "selected"},  # selected (ILF's task ids) | all (every train task with feedback)
    "evaluation": {"sampling": {}, "ks": [1, 10]},  # test-split sampling overrides, pass@k
    "baselines": list(BASELINES),
    "rounds": 1,  # ILF rounds; round r+1 starts from round r's pi_theta*
    "sweep": {"learning_rate": [], "batch_size": [], "epochs": [], "methods": ["ilf", "gold", "human"]},
    "report": {"perplexity": True, "perplexity_batch_size": 8},  # Figure 3
}


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`defaults` updated by `given`, refusing keys the defaults do not have (except free-form sections)."""
    out = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        path = f"{where}.{key}" if where else key
        if key not in defaults:
            raise IlfError(f"config: unknown key {path!r} (known: {', '.join(sorted(defaults))})")
        free_form = key in ("train", "factory_args", "ids", "limit") or (key == "sampling" and where)
        if isinstance(defaults[key], dict) and not free_form:
            if not isinstance(value, dict):
                raise IlfError(f"config: {path!r} must be a mapping")
            out[key] = _merge(defaults[key], value, path)
        elif free_form and value is not None and not isinstance(value, dict):
            raise IlfError(f"config: {path!r} must be a mapping")
        else:
            out[key] = value if value is not None or not free_form else {}
    return out


def _check_choice(value: Any, choices: Iterable[str], path: str) -> None:
    if value not in choices:
        raise IlfError(f"config: {path}={value!r} must be one of {', '.join(choices)}")


def _check_sampling(section: Mapping[str, Any], path: str) -> None:
    for key, value in section.items():
        if key not in _SAMPLING:
            raise IlfError(f"config: unknown key '{path}.{key}' (known: {', '.join(_SAMPLING)})")
        want = float if isinstance(_SAMPLING[key], float) else int
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (want is int and not isinstance(value, int)):
            raise IlfError(f"config: {path}.{key}={value!r} must be {'a number' if want is float else 'an integer'}")


def resolve(raw: Mapping[str, Any], base_dir: pathlib.Path | None = None) -> dict[str, Any]:
    """The full config: defaults merged with `raw`, choices checked, relative paths made absolute."""
    cfg = _merge(DEFAULTS, raw, "")
    fb, tasks = cfg["feedback"], cfg["tasks"]
    _check_choice(tasks["source"], TASK_SOURCES, "tasks.source")
    _check_choice(fb["source"], FEEDBACK_SOURCES, "feedback.source")
    if fb["programs"] is None:
        fb["programs"] = "annotated" if fb["annotations"] else "sampled"
    _check_choice(fb["programs"], PROGRAM_SOURCES, "feedback.programs")
    _check_choice(cfg["finetune"]["baseline_tasks"], ("selected", "all"), "finetune.baseline_tasks")
    for name in cfg["baselines"]:
        _check_choice(name, BASELINES, "baselines[]")
    for name in cfg["sweep"]["methods"]:
        _check_choice(name, ("ilf", "gold", "human"), "sweep.methods[]")
    for split in cfg["collect"]["splits"]:
        _check_choice(split, SPLIT_NAMES, "collect.splits[]")
    for section in ("ids", "limit"):
        for split in tasks[section]:
            _check_choice(split, SPLIT_NAMES, f"tasks.{section} key")
    _check_sampling(cfg["sampling"], "sampling")
    _check_sampling(cfg["refiner"]["sampling"], "refiner.sampling")
    _check_sampling(cfg["evaluation"]["sampling"], "evaluation.sampling")
    if not isinstance(cfg["rounds"], int) or isinstance(cfg["rounds"], bool) or cfg["rounds"] < 1:
        raise IlfError(f"config: rounds={cfg['rounds']!r} must be a positive integer")
    if fb["source"] == "human" and not fb["annotations"]:
        raise IlfError("config: feedback.source=human needs feedback.annotations (an annotation file)")
    if fb["source"] == "human" and fb["programs"] != "annotated":
        raise IlfError("config: human feedback is about the annotated programs: set feedback.programs=annotated")
    if fb["programs"] == "annotated" and not fb["annotations"]:
        raise IlfError("config: feedback.programs=annotated needs feedback.annotations")
    if fb["source"] == "app" and (fb["annotations"] or fb["programs"] != "sampled"):
        raise IlfError("config: feedback.source=app annotates this run's own failures: drop feedback.annotations "
                       "and feedback.programs")
    if not fb["annotations"] and not fb["annotator"] and fb["source"] != "app":
        raise IlfError("config: pi_Refine needs refinements: set feedback.annotations or feedback.annotator")
    if fb["source"] == "scripted" and not fb["annotator"]:
        raise IlfError("config: feedback.source=scripted needs feedback.annotator ('module:function')")
    if tasks["source"] == "mbpp" and not tasks["path"]:
        raise IlfError("config: tasks.source=mbpp needs tasks.path (mbpp.jsonl or sanitized-mbpp.json)")
    if tasks["source"] == "factory" and not tasks["factory"]:
        raise IlfError("config: tasks.source=factory needs tasks.factory ('module:function')")
    if not cfg["model"]["dir"]:
        raise IlfError("config: model.dir (the base model directory) is required")
    for key in SWEEP_KEYS:
        if not isinstance(cfg["sweep"][key], list):
            raise IlfError(f"config: sweep.{key} must be a list")
    if base_dir is not None:
        _absolutize(cfg, base_dir)
    return cfg


def _absolutize(cfg: dict[str, Any], base_dir: pathlib.Path) -> None:
    """Make path values relative to the current directory absolute (in place)."""
    def fix(section: dict[str, Any], key: str) -> None:
        if section.get(key):
            section[key] = str((base_dir / str(section[key])).absolute())

    fix(cfg, "run_dir")
    fix(cfg["model"], "dir")
    fix(cfg["model"], "tokenizer")
    fix(cfg["tasks"], "path")
    fix(cfg["feedback"], "annotations")
    fix(cfg["feedback"]["model"], "dir")


def load(path: str | pathlib.Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a pipeline YAML, apply `key=value` overrides, merge defaults, check, absolutize paths."""
    raw = json.loads(json.dumps(load_config(path), default=str))  # no shared nodes from YAML anchors
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise IlfError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(DEFAULTS))})")
    merged = apply_overrides({**{k: copy.deepcopy(v) for k, v in DEFAULTS.items()}, **raw}, overrides)
    return resolve(merged, pathlib.Path.cwd())


def sampling_section(cfg: Mapping[str, Any], *overlays: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level sampling settings with per-use overlays applied."""
    out = dict(cfg["sampling"])
    for overlay in overlays:
        out.update(overlay)
    return out
