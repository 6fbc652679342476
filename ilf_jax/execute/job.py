"""What goes into the executor (`Job`) and what comes out (`Result`), plus their JSON forms."""

from __future__ import annotations

import dataclasses
from typing import Any

VERDICTS = ("passed", "failed", "error", "syntax_error", "timeout", "memory", "output_limit", "crash",
            "harness_error")


@dataclasses.dataclass(frozen=True)
class Job:
    """One program and its tests: either a `def check(candidate)` block + entry point, or assert lines."""

    id: str
    program: str
    test: str | None = None
    entry_point: str | None = None
    test_list: tuple[str, ...] = ()
    test_setup_code: str = ""

    def __post_init__(self) -> None:
        if self.test is not None and not self.entry_point:
            raise ValueError(f"job {self.id!r}: a `test` block needs an `entry_point`")
        if self.test is None and not self.test_list:
            raise ValueError(f"job {self.id!r}: needs `test` + `entry_point` or a non-empty `test_list`")

    def test_source(self) -> str:
        """The test code run after the program (the reference appends `check(entry_point)`)."""
        if self.test is not None:
            return f"{self.test}\ncheck({self.entry_point})\n"
        return "\n".join([self.test_setup_code, *self.test_list]) + "\n"

    def to_wire(self) -> dict[str, Any]:
        """The fields a worker needs, as JSON-ready values."""
        return {"program": self.program, "test": self.test_source(), "entry_point": self.entry_point or ""}


@dataclasses.dataclass(frozen=True)
class Result:
    """The verdict for one job: `passed` is true only for verdict 'passed'; `error` is the text for feedback.

    `duration_s` is wall-clock seconds, `cpu_s` the CPU seconds of the job's processes (what the
    timeout limits), `isolation` the sandboxing that was in force.
    """

    id: str
    verdict: str
    passed: bool
    error: str
    duration_s: float
    cpu_s: float = 0.0
    isolation: str = ""

    def to_json(self) -> dict[str, Any]:
        """The CLI's output record."""
        return dataclasses.asdict(self)
