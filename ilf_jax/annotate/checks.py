"""What the app says about a refinement: its verdict from the sandboxed executor and the paper's
filter (passes, and Levenshtein distance against half the longer program)."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from typing import Any, Sequence

from ilf_jax.annotate.items import Item
from ilf_jax.data.annotations import edit_limit, keep_annotation, levenshtein
from ilf_jax.execute import Executor, Job, Result


@dataclasses.dataclass(frozen=True)
class FilterReport:
    """The filter for one refinement text; `passed` is None until that exact text has been run."""

    distance: int
    limit: float
    small_edit: bool
    passed: bool | None
    kept: bool

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def filter_report(item: Item, refinement: str, passed: bool | None) -> FilterReport:
    """The paper's filter on a refinement of the item's failing program."""
    distance = levenshtein(refinement, item.program)
    kept = bool(passed) and keep_annotation(refinement, item.program, True, distance)
    return FilterReport(distance, edit_limit(refinement, item.program),
                        distance < edit_limit(refinement, item.program), passed, kept)


def refinement_job(item: Item, refinement: str) -> Job:
    """The refinement under the item's test block, the way the pipeline tests programs."""
    return Job(id=str(item.task_id), program=refinement, test=item.test, entry_point=item.entry_point)


def with_errors(items: Sequence[Item], workers: int, timeout: float) -> list[Item]:
    """The items, those without an `error` given the executor's text for their failing program."""
    todo = [i for i, it in enumerate(items) if not it.error]
    out = list(items)
    if todo:
        with Executor(workers, timeout) as ex:
            results = ex.run([refinement_job(items[i], items[i].program) for i in todo])
        for i, r in zip(todo, results):
            out[i] = dataclasses.replace(items[i], error=r.error or f"(the program's verdict: {r.verdict})")
    return out


class Checker:
    """Runs refinements through one long-lived sandboxed Executor and remembers each text's result."""

    def __init__(self, executor: Executor, cache_size: int = 4096) -> None:
        self.executor = executor
        self._cache: dict[str, Result] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @staticmethod
    def _key(item: Item, refinement: str) -> str:
        return hashlib.sha256(f"{item.task_id}\0{item.test}\0{refinement}".encode()).hexdigest()

    def cached(self, item: Item, refinement: str) -> Result | None:
        with self._lock:
            return self._cache.get(self._key(item, refinement))

    def run(self, item: Item, refinement: str) -> Result:
        """The executor's result for this refinement (run once per distinct text)."""
        hit = self.cached(item, refinement)
        if hit is not None:
            return hit
        result = self.executor.run([refinement_job(item, refinement)])[0]
        with self._lock:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[self._key(item, refinement)] = result
        return result
