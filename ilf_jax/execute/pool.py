"""`Executor`: a pool of long-lived supervising workers, kept alive across calls (a context manager).

Public API (also what the annotation app's "Run tests" uses):

    from ilf_jax.execute import Executor, Job
    with Executor(workers=2, timeout=3.0) as ex:       # timeout: CPU seconds per job (the paper's 3 s)
        results = ex.run([Job("a", "def f(x):\n    return x + 1\n", test_list=("assert f(1) == 2",))])
    results[0].verdict, results[0].error, results[0].isolation

`run(jobs)` returns results in input order, `imap(jobs)` as they complete. Each `Result` carries the
verdict (one of VERDICTS), the error text for feedback, wall and CPU seconds and the isolation that
was in force. Workers are fresh interpreters started with `subprocess` (safe from a process that
imported JAX); each runs its jobs' tests in a judge process and the program in its own sandbox (see
ilf_jax/execute/worker.py). A worker that dies or hangs is replaced and its job retried once; a job
that still gets no answer is `harness_error`. Nothing runs program code in this process.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ilf_jax.execute import isolation, wire
from ilf_jax.execute.job import Job, Result

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_START_TIMEOUT_S = 60.0
_GRACE_S = 30.0
_WINDOW = 2


@functools.lru_cache(maxsize=None)
def worker_prefix() -> tuple[str, ...]:
    """How to start a worker: plainly when root, else inside a user namespace where it is root (if allowed)."""
    if os.geteuid() == 0:
        return ()
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    prefix = (exe, "--user", "--map-root-user")
    try:
        ok = subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else ()


class _Worker:
    """One worker process and its pipes, as seen from the caller."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        prefix = worker_prefix() if cfg["isolate"] else ()
        cfg = {**cfg, "in_user_namespace": bool(prefix)}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": _PACKAGE_ROOT, "PYTHONIOENCODING": "utf-8",
               **({"TMPDIR": os.environ["TMPDIR"]} if "TMPDIR" in os.environ else {})}
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "ilf_jax.execute.worker", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd="/", env=env, start_new_session=True, close_fds=True)
        self.isolation = ""

    def handshake(self) -> _Worker:
        """Wait for the worker's first message (it is ready, and which isolation it has); raise if it failed."""
        hello = self._recv(time.monotonic() + _START_TIMEOUT_S)
        if not (isinstance(hello, dict) and hello.get("ready")):
            self.kill()
            why = hello.get("error") if isinstance(hello, dict) else "no answer"
            raise RuntimeError(f"an executor worker failed to start: {why}")
        self.isolation = str(hello.get("isolation"))
        return self

    def _recv(self, deadline: float) -> Any:
        """One reply, or None when the worker died or missed the deadline."""
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return None
        try:
            return wire.recv(fd)
        except (OSError, ValueError, wire.Malformed, wire.TooBig):
            return None

    def kill(self) -> None:
        """Kill the worker (its jobs' sandboxes die with their lifelines) and reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def stop(self) -> None:
        """Ask the worker to finish (close its stdin: it cleans up and exits), then make sure it is gone."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class Executor:
    """Sandboxed parallel test runner: `with Executor(workers, timeout) as ex: ex.run(jobs)`.

    `timeout` is CPU seconds per job; `wall_timeout` (default max(30 s, 10 x timeout)) stops a job
    that sleeps or waits, and is generous so that a loaded machine does not change verdicts; `hide` lists host paths (the CLI's input and output) masked inside sandboxes
    even where a bound system directory would contain them. Each of the `workers` keeps `lanes` jobs
    in flight, one worker process each. With `pin`, each worker process and everything it forks (its
    zygote, each job's init and program) runs on one CPU, the workers taking the allowed CPUs in
    turn: a job's judge and program then take turns on one core without waking each other across
    cores (and, presumably, the pages a fork shares stay in one core's caches); measured on 2 cores,
    the 1364 MBPP/ILF programs take 3.6 s instead of 4.4 s unpinned with 2 lanes
    (scripts/bench_exec.py prints both). The queue of jobs is shared, so a long job on one core does
    not hold up the others. Verdicts do not depend on either (CPU-time limits)."""

    def __init__(self, workers: int | None = None, timeout: float = 3.0, *, wall_timeout: float | None = None,
                 memory_mb: int = 1024, output_kb: int = 4096, open_files: int = 64, max_processes: int = 32,
                 error_chars: int = 2000, frames: int = 3, reply_mb: int = 64, judge_memory_mb: int = 4096,
                 isolate: bool = True, hide: Sequence[str | os.PathLike] = (), lanes: int = 1,
                 pin: bool = True) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        wall = max(30.0, 10 * float(timeout)) if wall_timeout is None else float(wall_timeout)
        if wall < timeout:
            raise ValueError(f"wall_timeout ({wall}) must be at least timeout ({timeout})")
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.lanes = max(1, lanes)
        self.timeout, self.wall_timeout = float(timeout), wall
        limits = {"memory_mb": memory_mb, "output_kb": output_kb, "open_files": open_files,
                  "max_processes": max_processes, "cpu_s": math.ceil(timeout) + 1}
        self._cfg = {"timeout": self.timeout, "wall_timeout": wall, "limits": limits, "error_chars": error_chars,
                     "frames": frames, "reply_bytes": reply_mb << 20, "judge_memory_mb": judge_memory_mb,
                     "isolate": isolate, "hide": [os.path.abspath(p) for p in hide],
                     "binds": [d for d in isolation.SYSTEM_DIRS if os.path.lexists(d)]
                     + isolation.python_dirs(sys.path, [sys.base_prefix, sys.prefix, sys.exec_prefix])}
        self._cpus = sorted(os.sched_getaffinity(0)) if pin and hasattr(os, "sched_getaffinity") else []
        self.pinned = bool(self._cpus)
        self._slots: list[_Worker | None] = []
        self._threads: list[threading.Thread] = []
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._started = False
        self.isolation = ""

    @property
    def isolated(self) -> bool:
        """Whether jobs run in their own namespaces (see `isolation` for the whole description)."""
        return self.isolation.startswith(isolation.NAMESPACES)

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers (idempotent)."""
        if self._started:
            return
        self._started = True
        try:
            for slot in range(self.workers * self.lanes):  # they start side by side (measured: ~130 ms of CPU each)
                self._slots.append(_Worker(self._slot_config(slot)))
            for w in self._slots:
                w.handshake()
        except BaseException:
            self.close()
            raise
        self.isolation = self._slots[0].isolation if self._slots else ""
        self._threads = [threading.Thread(target=self._serve, args=(i,), daemon=True) for i in range(len(self._slots))]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """Stop the workers; they end their sandboxes and remove their files (idempotent)."""
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        live = [w for w in self._slots if w is not None]
        for w in live:  # all told at once: they clean up side by side
            try:
                w.proc.stdin.close()
            except OSError:
                pass
        for w in live:
            w.stop()
        self._threads, self._slots = [], []
        self._started = False

    def _result(self, job: Job, reply: dict[str, Any]) -> Result:
        return Result(job.id, str(reply["verdict"]), reply["verdict"] == "passed", str(reply["error"]),
                      float(reply["duration_s"]), float(reply.get("cpu_s", 0.0)), str(reply.get("isolation")))

    def _slot_config(self, slot: int) -> dict[str, Any]:
        """The worker config of one slot: the shared one, and the CPU the slot's worker is pinned to (or None)."""
        return {**self._cfg, "cpu": self._cpus[slot % len(self._cpus)] if self._cpus else None}

    def _worker(self, slot: int) -> _Worker:
        """This slot's worker, started anew if it is gone."""
        w = self._slots[slot]
        if w is None or w.proc.poll() is not None:
            w = self._slots[slot] = _Worker(self._slot_config(slot)).handshake()
        return w

    def _serve(self, slot: int) -> None:
        """Thread body: take (index, job, reply queue, cancelled) items until told to stop.

        Up to _WINDOW jobs are handed to the worker ahead, so that it starts the next one as soon as
        it answered one. When the worker dies or hangs, the jobs it held run again one at a time on a
        new worker; a job that was with a dying worker twice is `harness_error`.
        """
        sent: collections.deque = collections.deque()  # [item, attempts], oldest first (answers come in order)
        redo: collections.deque = collections.deque()
        stop = False
        while True:
            while len(sent) < (1 if redo else _WINDOW) and (redo or not stop):
                if redo:
                    entry = redo.popleft()
                else:
                    try:
                        item = self._jobs.get(block=not sent)
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    if item[3].is_set():  # an abandoned imap
                        item[2].put((item[0], None))
                        continue
                    entry = [item, 0]
                sent.append(entry)
                try:
                    wire.send(self._worker(slot).proc.stdin.fileno(), entry[0][1].to_wire())
                except Exception:  # noqa: BLE001 - a dead worker: seen when its answer does not come
                    pass
            if not sent:
                if stop:
                    return
                continue
            w = self._slots[slot]
            reply = w._recv(time.monotonic() + self.wall_timeout + _GRACE_S) if w is not None else None
            if isinstance(reply, dict) and "verdict" in reply:
                (index, job, out, _), _ = sent.popleft()
                try:
                    result = self._result(job, reply)
                except Exception as e:  # noqa: BLE001 - never lose a job: report it
                    result = Result(job.id, "harness_error", False, f"HarnessError: {type(e).__name__}: {e}", 0.0,
                                    0.0, self.isolation)
                out.put((index, result))
                continue
            if w is not None:
                w.kill()
            self._slots[slot] = None
            while sent:
                entry = sent.popleft()
                entry[1] += 1
                if entry[1] < 2:
                    redo.append(entry)
                else:
                    (index, job, out, _), _ = entry
                    out.put((index, Result(job.id, "harness_error", False,
                                           "HarnessError: the executor worker died twice on this program", 0.0, 0.0,
                                           self.isolation)))

    def imap(self, jobs: Iterable[Job]) -> Iterator[Result]:
        """Results as they complete (any order); every job yields exactly one result."""
        if not self._started:
            raise RuntimeError("Executor is not started: use `with Executor(...) as ex:`")
        with self._lock:
            out: queue.Queue = queue.Queue()
            cancelled = threading.Event()
            pending = 0
            for index, job in enumerate(jobs):
                self._jobs.put((index, job, out, cancelled))
                pending += 1
            try:
                while pending:
                    yield out.get()[1]
                    pending -= 1
            finally:  # an abandoned iteration: skip queued jobs, wait for those in flight
                cancelled.set()
                while pending:
                    out.get()
                    pending -= 1

    def run(self, jobs: Iterable[Job]) -> list[Result]:
        """Results in input order."""
        jobs = list(jobs)
        results: list[Result | None] = [None] * len(jobs)
        with self._lock:
            out: queue.Queue = queue.Queue()
            never = threading.Event()
            for index, job in enumerate(jobs):
                self._jobs.put((index, job, out, never))
            for _ in jobs:
                index, result = out.get()
                results[index] = result
        return results  # type: ignore[return-value]
