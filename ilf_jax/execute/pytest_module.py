"""The module `pytest` as the judge's tests import it: `approx` without the rest of pytest, until asked.

The paper's tests do `from pytest import approx`. Importing all of pytest cost each worker ~78 ms of
CPU (measured), pytest's own `_pytest.approx` ~6 ms: the judge's `pytest` is a front that takes
`approx` from there and imports the whole of pytest only for any other name. Without pytest
installed it is ilf_jax.execute.approx_fallback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

_APPROX_HOMES = ("_pytest.approx", "_pytest.python_api")  # pytest >= 9, and before
_front: types.ModuleType | None = None  # the front install() made


def install() -> None:
    """Make `pytest` in this process the front (or the fallback when pytest is absent)."""
    if importlib.util.find_spec("pytest") is None:
        from ilf_jax.execute import approx_fallback

        sys.modules["pytest"] = approx_fallback
        return
    global _front
    front = _front = types.ModuleType("pytest", __doc__)

    def __getattr__(name: str) -> Any:  # noqa: N807 - a module's attribute hook (PEP 562)
        if name.startswith("__") and name.endswith("__"):  # the import system's probes (`__path__`...)
            raise AttributeError(name)
        value = _approx() if name == "approx" else getattr(_whole(front), name)
        setattr(front, name, value)
        return value

    front.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["pytest"] = front


def load_all() -> None:
    """Import the whole of pytest now (for a process that must import nothing from disk later)."""
    if _front is not None and sys.modules.get("pytest") is _front:
        _whole(_front)


def _approx() -> Any:
    for home in _APPROX_HOMES:
        try:
            return importlib.import_module(home).approx
        except (ImportError, AttributeError):
            continue
    return _whole(_front).approx  # (not through the front: that would ask _approx again)


def _whole(front: types.ModuleType) -> types.ModuleType:
    """pytest itself, imported in the front's place (which forwards to it from then on)."""
    if sys.modules.get("pytest") is front:
        del sys.modules["pytest"]
    try:
        return importlib.import_module("pytest")
    except BaseException:
        sys.modules.setdefault("pytest", front)
        raise
