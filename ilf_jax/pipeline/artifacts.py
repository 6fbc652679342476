"""What stages hand each other: typed records (one dataclass per output file, with to/from JSON) and
`Artifact` handles naming the stage that produced a file and the record type it holds.

A stage's inputs are handles; the engine derives its dependencies from them and reads them for it,
so a file name is defined once (`FILE` on its record type) and a record's fields once (its dataclass).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import typing
from typing import Any, ClassVar, Mapping

from ilf_jax.jsonl import read_json, read_jsonl, write_jsonl

STAGES = "stages"
STATE = "stage.json"
TRAIN_DIR = "train"  # a training stage's trainer output folder (checkpoints, metrics.jsonl, model)


_GLOB_FREE = str.maketrans("[]", "()")


def stage_dir(run_dir: pathlib.Path, name: str) -> pathlib.Path:
    """The folder of stage `name` in a run directory; a sweep point's `[lr=..]` is written `(lr=..)`, since
    orbax globs inside checkpoint paths and brackets would make it miss a saved model's parts."""
    return run_dir / STAGES / name.translate(_GLOB_FREE)


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """{field: accepted JSON types} of a record dataclass (`X | None` accepts None)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if name.isupper():
            continue
        args = typing.get_args(hint)
        out[name] = tuple(type(None) if a is type(None) else a for a in args) if args else (hint,)
    return out


def check_record(rec: Mapping[str, Any], cls: type, where: str) -> None:
    """Raise ValueError unless `rec` has exactly the fields of record type `cls`, each of its type."""
    fields = field_types(cls)
    if set(rec) != set(fields):
        raise ValueError(f"{where}: fields {sorted(rec)} != {sorted(fields)}")
    for key, want in fields.items():
        value = rec[key]
        if not isinstance(value, want) or (int in want and bool not in want and isinstance(value, bool)):
            raise ValueError(f"{where}: field {key!r}={value!r} is not {want[0] if len(want) == 1 else want}")


class Record:
    """A JSONL output record: `FILE` is the stage file holding a list of them (sorted as written)."""

    FILE: ClassVar[str]
    KIND: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, rec: Mapping[str, Any], where: str = "record") -> Any:
        check_record(rec, cls, where)
        return cls(**rec)

    @classmethod
    def load(cls, path: pathlib.Path) -> list[Any]:
        return [cls.from_json(r, f"{path}: record {i}") for i, r in enumerate(read_jsonl(path), 1)]

    @classmethod
    def save(cls, path: pathlib.Path, records: list[Any]) -> None:
        write_jsonl(path, [r.to_json() for r in records])


def _record(name: str, file: str, kind: str, doc: str, **fields: Any) -> type[Record]:
    """A frozen Record dataclass `name` stored in `file`, with `fields` ({name: type}) in order."""
    return dataclasses.make_dataclass(name, list(fields.items()), bases=(Record,), frozen=True,
                                      namespace={"FILE": file, "KIND": kind, "__doc__": doc, "__module__": __name__})


Sample = _record("Sample", "samples.jsonl", "sample", "One completion of a prompt (cut by the stop rule).",
                 task_id=int, sample=int, completion=str, finish_reason=str, num_tokens=int, prompt_truncated=bool)
Verdict = _record("Verdict", "verdicts.jsonl", "verdict", "A sample's test verdict and error text.",
                  task_id=int, sample=int, verdict=str, passed=bool, error=str)
Failure = _record("Failure", "failures.jsonl", "failure", "A task with no passing sample: its first failing program and error.",
                  task_id=int, split=str, sample=int, program=str, error=str, samples=int)
RefineTriple = _record(
    "RefineTriple", "refine_data.jsonl", "refine_data",
    "pi_Refine's data: (old program, feedback, refinement), with the paper's filter's verdict.",
    task_id=int, old_program=str, error=str, feedback=str, refinement=str, source=str, refinement_passed=bool,
    distance=int, kept=bool)
Feedback = _record("Feedback", "feedback.jsonl", "feedback",
                   "Feedback on a train task's failing program (refinement: the annotator's, when there is one).",
                   task_id=int, old_program=str, error=str, feedback=str, refinement=str | None, source=str)
Selected = _record("Selected", "selected.jsonl", "selected", "The passing refinement chosen for a task (by finetune.selection).",
                   task_id=int, sample=int, completion=str)
Perplexity = _record("Perplexity", "perplexity.jsonl", "perplexity", "An example's NLL and perplexity under the base model.",
                     source=str, task_id=int, nll=float, perplexity=float)

RECORDS: tuple[type[Record], ...] = (Sample, Verdict, Failure, RefineTriple, Feedback, Selected, Perplexity)


@dataclasses.dataclass(frozen=True)
class ModelPointer:
    """A training stage's output: the model it made (its base model when it had nothing to train on)."""

    FILE: ClassVar[str] = "model.json"
    model_dir: str
    trained: bool

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: pathlib.Path) -> ModelPointer:
        return cls(**read_json(path))


class AnnotationFile:
    """`feedback.source: app`: the annotate stage's snapshot of the app's Surge-format export (its path)."""

    FILE: ClassVar[str] = "annotations.jsonl"

    @classmethod
    def load(cls, path: pathlib.Path) -> pathlib.Path:
        return path


class Summary:
    """Any stage's JSON summary (from its `stage.json`); {} while the stage is not done."""

    FILE: ClassVar[str] = STATE

    @classmethod
    def load(cls, path: pathlib.Path) -> dict[str, Any]:
        return read_json(path).get("summary", {}) if path.is_file() else {}


class TrainLog:
    """A training stage's loss curve [(step, loss)], or None when it trained nothing."""

    FILE: ClassVar[str] = f"{TRAIN_DIR}/metrics.jsonl"

    @classmethod
    def load(cls, path: pathlib.Path) -> list[tuple[int, float]] | None:
        if not path.is_file():
            return None
        return [(r["step"], r["loss"]) for r in read_jsonl(path) if "loss" in r]


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A handle to the output of stage `stage` of kind `kind` (a Record type, ModelPointer, AnnotationFile,
    Summary, TrainLog)."""

    stage: str
    kind: type

    def path(self, run_dir: pathlib.Path) -> pathlib.Path:
        return stage_dir(run_dir, self.stage) / self.kind.FILE

    def read(self, run_dir: pathlib.Path) -> Any:
        return self.kind.load(self.path(run_dir))
