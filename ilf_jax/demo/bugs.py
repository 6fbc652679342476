"""The systematic mistakes the demo's base model is taught: plausible one-spot rewrites of correct code."""

from __future__ import annotations

import dataclasses
import random
import re


@dataclasses.dataclass(frozen=True)
class Bug:
    """A named rewrite that turns a correct reference body into a wrong but plausible one."""

    name: str
    pattern: str
    replacement: str

    def applies(self, code: str) -> bool:
        """Whether the rewrite changes `code`."""
        return re.search(self.pattern, code) is not None

    def apply(self, code: str) -> str:
        """The rewritten code."""
        return re.sub(self.pattern, self.replacement, code)


BUGS: tuple[Bug, ...] = (
    Bug("non_strict_greater", r"if x > (\d+)", r"if x >= \1"),  # "greater than K" read as >=
    Bug("non_strict_less", r"if x < (\d+)", r"if x <= \1"),  # "less than K" read as <=
    Bug("exclusive_range", r"range\(1, n \+ 1\)", "range(1, n)"),  # "from 1 to n" stops at n - 1
    Bug("missing_square", r"x \*\* 2 for", "x for"),  # forgets to square before reducing
    Bug("starts_for_ends", r"\.endswith\(", ".startswith("),  # "end with" checked at the start
)


def applicable_bugs(code: str) -> tuple[Bug, ...]:
    """The bugs whose pattern occurs in `code`."""
    return tuple(b for b in BUGS if b.applies(code))


def buggy_code(code: str, rng: random.Random | None = None, rate: float = 1.0) -> str:
    """`code` (a corpus-idiom program) with each applicable bug applied with probability `rate`."""
    for bug in applicable_bugs(code):
        if rate >= 1.0 or (rng is not None and rng.random() < rate):
            code = bug.apply(code)
    return code
