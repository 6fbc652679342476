"""The task record every stage shares: an MBPP-shaped problem (text, reference code, asserts)."""

from __future__ import annotations

import dataclasses
import re

_CALL = re.compile(r"assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\(\s*|set\(\s*)?([A-Za-z_]\w*)\s*\(")


@dataclasses.dataclass(frozen=True)
class Task:
    """One programming problem in MBPP's shape; `code` has LF line breaks unless read with line_endings="crlf"."""

    task_id: int
    text: str
    code: str
    test_list: tuple[str, ...]
    test_setup_code: str = ""
    challenge_test_list: tuple[str, ...] = ()

    @property
    def entry_point(self) -> str:
        """Name of the function the asserts test: the last `def` in `code` that the first assert calls."""
        names = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", self.code, flags=re.M)
        called = set(re.findall(r"([A-Za-z_]\w*)\s*\(", " ".join(self.test_list)))
        for name in reversed(names):
            if name in called:
                return name
        m = _CALL.search(self.test_list[0]) if self.test_list else None
        if m:
            return m.group(1)
        if names:
            return names[-1]
        raise ValueError(f"task {self.task_id}: cannot find the tested function")
