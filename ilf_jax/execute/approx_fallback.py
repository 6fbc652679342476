"""A minimal stand-in for `pytest.approx`, installed as module `pytest` in the sandbox only when pytest is absent.

The paper's test blocks do `from pytest import approx`; pytest is a test dependency, not a runtime
one. This covers what MBPP tests compare (numbers, and lists/tuples/dicts of numbers) with pytest's
default tolerances (rel 1e-6, abs 1e-12).
"""

from __future__ import annotations

import math
from typing import Any


class approx:  # noqa: N801 - the name the tests import
    """Equality within pytest's default tolerance, element-wise for sequences and dicts."""

    def __init__(self, expected: Any, rel: float = 1e-6, abs: float = 1e-12) -> None:  # noqa: A002
        self.expected, self.rel, self.abs = expected, rel, abs

    def _close(self, actual: Any, expected: Any) -> bool:
        if isinstance(expected, dict):
            return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
                self._close(actual[k], v) for k, v in expected.items())
        if isinstance(expected, (list, tuple)):
            return isinstance(actual, (list, tuple)) and len(actual) == len(expected) and all(
                self._close(a, e) for a, e in zip(actual, expected))
        if isinstance(expected, (int, float)) and not isinstance(expected, bool) and isinstance(actual, (int, float)):
            if math.isinf(expected) or math.isinf(actual):
                return actual == expected
            return abs(actual - expected) <= max(self.rel * abs(expected), self.abs)
        return actual == expected

    def __eq__(self, actual: Any) -> bool:
        return self._close(actual, self.expected)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"approx({self.expected!r})"
