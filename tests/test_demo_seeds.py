"""scripts/demo_seeds.py: each seed's table, ordering and ILF's paired differences, read from a run directory."""

import importlib.util
import json
import pathlib

from ilf_jax.jsonl import write_jsonl

_SPEC = importlib.util.spec_from_file_location("demo_seeds", pathlib.Path(__file__).parents[1] / "scripts" / "demo_seeds.py")
demo_seeds = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(demo_seeds)


def _fake_run(tmp_path, passed):
    """A run directory with results.json and verdicts: passed[method][task] = passing samples of 4."""
    rows = []
    for method, per_task in passed.items():
        write_jsonl(tmp_path / "stages" / f"eval.{method}.execute" / "verdicts.jsonl",
                    [{"task_id": t, "sample": s, "passed": s < c} for t, c in enumerate(per_task) for s in range(4)])
        rows.append({"name": method, "pass@1": sum(per_task) / (4 * len(per_task)), "pass@10": 1.0})
    (tmp_path / "results.json").write_text(json.dumps({"table4": rows}))
    return tmp_path


def test_paired_interval_brackets_the_mean_and_is_seeded():
    a, b = {t: t % 3 / 2 for t in range(30)}, {t: 0.25 for t in range(31)}
    mean, lo, hi = demo_seeds.paired_interval(a, b)
    assert abs(mean - (sum(a.values()) / 30 - 0.25)) < 1e-9 and lo < mean < hi
    assert demo_seeds.paired_interval(a, b) == (mean, lo, hi)
    assert demo_seeds.paired_interval(a, a) == (0.0, 0.0, 0.0)


def test_seed_report_orders_methods_and_states_differences(tmp_path):
    run = _fake_run(tmp_path, {"zero_shot": [0, 1, 0, 2], "ilf": [4, 3, 4, 2], "gold": [0, 0, 1, 0]})
    text = demo_seeds.seed_report(3, run)
    assert "pass@1 ordering: ilf > zero_shot > gold" in text
    assert "ilf          81.2%" in text and "zero_shot    18.8%" in text
    assert "ilf - zero_shot: +62.5 points" in text and "ilf - gold: +75.0 points" in text
