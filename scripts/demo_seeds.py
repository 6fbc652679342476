"""The demo over several seeds: runs `ilf demo --seed S` for each seed, one after another, and prints
each seed's Table 4, the pass@1 ordering of the methods, and ILF's paired pass@1 difference to each
other method with a 95% bootstrap interval over the test tasks (seeded).

    python scripts/demo_seeds.py [--seeds 0 1 2] [--runs-dir runs/demo-seeds] [key=value ...]

A finished seed is reused (the demo resumes its run directory); overrides go to every `ilf demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import time

from ilf_jax.jsonl import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]


def per_task_pass1(run_dir: pathlib.Path, method: str) -> dict[int, float]:
    """Task id -> fraction of the method's test samples that passed (its pass@1 estimate)."""
    counts: dict[int, list[int]] = {}
    for v in read_jsonl(run_dir / "stages" / f"eval.{method}.execute" / "verdicts.jsonl"):
        c = counts.setdefault(v["task_id"], [0, 0])
        c[0] += bool(v["passed"])
        c[1] += 1
    return {t: c / n for t, (c, n) in counts.items()}


def paired_interval(a: dict[int, float], b: dict[int, float], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over the shared tasks and its 95% percentile bootstrap interval (tasks resampled)."""
    diffs = [a[t] - b[t] for t in sorted(a.keys() & b.keys())]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(draws))
    return sum(diffs) / len(diffs), means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def seed_report(seed: int, run_dir: pathlib.Path) -> str:
    """One seed's table, ordering and ILF's paired differences, from its results.json and verdicts."""
    rows = json.loads((run_dir / "results.json").read_text())["table4"]
    lines = [f"seed {seed} ({run_dir})", f"  {'method':<10} {'pass@1':>7} {'pass@10':>8}"]
    lines += [f"  {r['name']:<10} {100 * r['pass@1']:6.1f}% {100 * r['pass@10']:7.1f}%" for r in rows]
    order = sorted(rows, key=lambda r: -r["pass@1"])
    lines.append("  pass@1 ordering: " + " > ".join(r["name"] for r in order))
    ilf = per_task_pass1(run_dir, "ilf")
    for r in rows:
        if r["name"] != "ilf":
            mean, lo, hi = paired_interval(ilf, per_task_pass1(run_dir, r["name"]))
            lines.append(f"  ilf - {r['name']}: {100 * mean:+.1f} points pass@1 (95% CI {100 * lo:+.1f} .. {100 * hi:+.1f})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/demo-seeds")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    for seed in args.seeds:
        run_dir = pathlib.Path(args.runs_dir).resolve() / f"seed{seed}"
        t0 = time.time()
        cmd = [sys.executable, "-m", "ilf_jax.cli", "demo", "--seed", str(seed), "--run-dir", str(run_dir),
               "--no-progress", *args.overrides]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        print(seed_report(seed, run_dir) + f"\n  ilf demo: {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
