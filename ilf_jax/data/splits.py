"""The ILF paper's MBPP splits (not MBPP's own): prompt 1-10, Test 11-110, Refine 111-310, Train 311-974."""

from __future__ import annotations

SPLITS: dict[str, range] = {
    "prompt": range(1, 11),
    "test": range(11, 111),
    "refine": range(111, 311),
    "train": range(311, 975),
}


def split_of(task_id: int) -> str:
    """Name of the paper's split holding `task_id`; ValueError outside 1..974."""
    for name, ids in SPLITS.items():
        if task_id in ids:
            return name
    raise ValueError(f"task_id {task_id} is outside MBPP's 1..974")
