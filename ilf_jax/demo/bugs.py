"""The systematic mistakes the demo's base model is taught: plausible one-spot rewrites of correct code."""

from __future__ import annotations

import dataclasses
import random
import re


@dataclasses.dataclass(frozen=True)
class Bug:
    """A named rewrite that turns a correct body (in any idiom) into a wrong but plausible one."""

    name: str
    pattern: str
    replacement: str

    def applies(self, code: str) -> bool:
        """Whether the rewrite changes `code`."""
        return re.search(self.pattern, code) is not None

    def apply(self, code: str) -> str:
        """The rewritten code."""
        return re.sub(self.pattern, self.replacement, code)


# The patterns name no loop variable, so a bug reads the same in every idiom (comprehension, loop, filter/map).
BUGS: tuple[Bug, ...] = (
    Bug("non_strict_greater", r"\b([a-z]\w*) > (\d+)", r"\1 >= \2"),  # "greater than K" read as >=
    Bug("non_strict_less", r"\b([a-z]\w*) < (\d+)", r"\1 <= \2"),  # "less than K" read as <=
    Bug("exclusive_range", r"(range\(1, n|< n) \+ 1\b", r"\1"),  # "from 1 to n" stops at n - 1
    Bug("missing_square", r"\b([a-z]\w*) \*\* 2\b", r"\1"),  # forgets to square before reducing
    Bug("starts_for_ends", r"\.endswith\(", ".startswith("),  # "end with" checked at the start
)


def applicable_bugs(code: str) -> tuple[Bug, ...]:
    """The bugs whose pattern occurs in `code`."""
    return tuple(b for b in BUGS if b.applies(code))


def buggy_code(code: str, rng: random.Random | None = None, rate: float = 1.0) -> str:
    """`code` with each applicable bug applied with probability `rate`."""
    for bug in applicable_bugs(code):
        if rate >= 1.0 or (rng is not None and rng.random() < rate):
            code = bug.apply(code)
    return code
