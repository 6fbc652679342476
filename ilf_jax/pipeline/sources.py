"""Pluggable inputs: the task source (MBPP file, HF hub, a factory such as the demo family),
the human annotation file (with the leakage guard) and a scripted annotator callable."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

from ilf_jax.data.annotations import Annotation, load_annotations
from ilf_jax.data.fetch import check_cached
from ilf_jax.data.formats import skipped_by_reference
from ilf_jax.data.mbpp import load_mbpp, load_mbpp_hf
from ilf_jax.data.splits import SPLITS
from ilf_jax.data.task import Task
from ilf_jax.errors import IlfError

PIPELINE_SPLITS = ("test", "refine", "train")
TRAINING_SPLITS = ("refine", "train")  # where failures are collected and annotated


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """Every task the source knows, the ids this run uses per split (sorted), and per split the ids
    `tasks.def_match: reference` dropped (the reference's `def` regex fails on their gold code)."""

    tasks: dict[int, Task]
    splits: dict[str, tuple[int, ...]]
    skipped: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def split_of(self, task_id: int) -> str | None:
        """The run split holding `task_id`, or None when the run does not use it."""
        for name, ids in self.splits.items():
            if task_id in ids:
                return name
        return None


@dataclasses.dataclass(frozen=True)
class Annotations:
    """Annotation rows by task id for the run's tasks, plus what the leakage guard left out."""

    rows: dict[int, Annotation]
    excluded_test_ids: tuple[int, ...]
    outside_run: int  # rows for known tasks that this run does not select


def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """The object named by 'package.module:function'."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise IlfError(f"{what}={spec!r}: expected 'package.module:function'")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise IlfError(f"{what}={spec!r}: cannot import: {e}") from None
    if not callable(obj):
        raise IlfError(f"{what}={spec!r}: not callable")
    return obj


def _select(all_ids: Mapping[str, list[int]], tasks_cfg: Any, known: Mapping[int, Task]) -> dict[str, tuple[int, ...]]:
    """Per split: the configured ids (checked) or all of the split's ids, cut to the configured limit."""
    out = {}
    for split in PIPELINE_SPLITS:
        ids = tasks_cfg.ids.get(split)
        if ids is not None:
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise IlfError(f"config: tasks.ids.{split}: task id {unknown[0]} is not in the task source")
            wrong = [i for i in ids if i not in all_ids.get(split, ())]
            if wrong:
                raise IlfError(f"config: tasks.ids.{split}: task id {wrong[0]} belongs to another split")
        else:
            ids = all_ids.get(split, [])
        ids = sorted(set(ids))
        limit = tasks_cfg.limit.get(split)
        out[split] = tuple(ids if limit is None else ids[: int(limit)])
    overlap = set(out["test"]) & (set(out["refine"]) | set(out["train"]))
    if overlap:
        raise IlfError(f"config: task {min(overlap)} is both in the test split and a training split")
    return out


def load_tasks(tasks_cfg: Any) -> TaskSet:
    """Load the configured task source (with its line endings) and select the run's ids per split; with
    `def_match: reference`, tasks whose gold code fails the reference's `def` regex are dropped and listed."""
    source = tasks_cfg.source
    if source in ("mbpp", "hf"):
        if source == "mbpp":
            tasks = load_mbpp(tasks_cfg.path, tasks_cfg.line_endings)
        else:
            tasks = load_mbpp_hf(tasks_cfg.hf_name, line_endings=tasks_cfg.line_endings)
        all_ids = {name: [i for i in ids if i in tasks] for name, ids in SPLITS.items()}
    else:
        factory = import_callable(tasks_cfg.factory, "tasks.factory")
        by_split = factory(**tasks_cfg.factory_args)
        tasks, all_ids = {}, {}
        for split, items in by_split.items():
            all_ids[split] = [t.task_id for t in items]
            for t in items:
                if t.task_id in tasks:
                    raise IlfError(f"tasks.factory: task id {t.task_id} appears twice")
                tasks[t.task_id] = t
    selected = _select(all_ids, tasks_cfg, tasks)
    if tasks_cfg.def_match == "lenient":
        return TaskSet(tasks, selected)
    skipped = {split: tuple(i for i in ids if skipped_by_reference(tasks[i])) for split, ids in selected.items()}
    return TaskSet(tasks, {split: tuple(i for i in ids if i not in skipped[split]) for split, ids in selected.items()},
                   skipped)


def load_run_annotations(path: str, task_set: TaskSet, allow_test: bool) -> Annotations:
    """Annotation rows for the run's refine/train tasks (and test tasks only when `allow_test`).

    Rows naming a task the source does not know are an error; rows in MBPP_Test are counted and
    left out unless `allow_test`.
    """
    check_cached(path)
    loaded = load_annotations(path, include_test=allow_test)
    unknown = [a.task_id for a in loaded.rows if a.task_id not in task_set.tasks]
    unknown += [i for i in loaded.excluded_test_ids if i not in task_set.tasks]
    if unknown:
        raise IlfError(f"{path}: annotation for task_id {unknown[0]}, which the task source does not have")
    wanted = set(task_set.splits["refine"]) | set(task_set.splits["train"])
    if allow_test:
        wanted |= set(task_set.splits["test"])
    rows = {a.task_id: a for a in loaded.rows if a.task_id in wanted}
    return Annotations(rows, tuple(sorted(loaded.excluded_test_ids)), len(loaded.rows) - len(rows))
