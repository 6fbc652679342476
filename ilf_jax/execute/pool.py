"""`Executor`: a pool of long-lived sandbox workers, kept alive across calls (a context manager).

Workers are fresh interpreters started with `subprocess` (safe from a process that imported JAX),
inside new PID + network namespaces when the kernel allows it (`unshare`), else plainly. One thread
per worker feeds it jobs; a worker that dies or hangs is replaced and its job retried once.
"""

from __future__ import annotations

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
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from ilf_jax.execute import worker as wire_protocol
from ilf_jax.execute.job import Job, Result

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_START_TIMEOUT_S = 60.0
_GRACE_S = 30.0


@functools.lru_cache(maxsize=None)
def namespace_prefix() -> tuple[str, ...]:
    """The `unshare` command line that gives a worker its own PID and network namespaces, or () if none works."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    prefix = (exe, *user, "--pid", "--net", "--kill-child", "--fork")
    try:
        ok = subprocess.run([*prefix, sys.executable, "-c", "import os; assert os.getpid() == 1"],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else ()


class _Worker:
    """One worker process and its pipes, as seen from the caller."""

    def __init__(self, cfg: dict[str, Any], isolate: bool) -> None:
        prefix = namespace_prefix() if isolate else ()
        cfg = {**cfg, "drop_privileges": os.geteuid() == 0}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": _PACKAGE_ROOT, "PYTHONIOENCODING": "utf-8"}
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "ilf_jax.execute.worker", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=cfg["root"], env=env, start_new_session=True, close_fds=True)
        hello = self._recv(time.monotonic() + _START_TIMEOUT_S)
        if not (isinstance(hello, dict) and hello.get("ready")):
            self.kill()
            raise RuntimeError("an executor worker failed to start")
        self.isolated = bool(hello.get("isolated"))

    def _recv(self, deadline: float) -> Any:
        """One reply, or None when the worker died or missed the deadline."""
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return None
        try:
            return wire_protocol.recv(fd)
        except (OSError, ValueError):
            return None

    def call(self, wire: dict[str, Any], deadline_s: float) -> dict[str, Any] | None:
        """Run one job; None when the worker died or hung (it is then killed)."""
        try:
            wire_protocol.send(self.proc.stdin.fileno(), wire)
        except OSError:
            self.kill()
            return None
        reply = self._recv(time.monotonic() + deadline_s)
        if not isinstance(reply, dict) or "verdict" not in reply:
            self.kill()
            return None
        return reply

    def kill(self) -> None:
        """Kill the worker's whole session (with --kill-child this takes its namespace down too) and reap it."""
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
        """Ask the worker to finish (close its stdin), then make sure it is gone."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class Executor:
    """Sandboxed parallel test runner: `with Executor(workers, timeout) as ex: ex.run(jobs)`."""

    def __init__(self, workers: int | None = None, timeout: float = 3.0, *, memory_mb: int = 1024,
                 output_kb: int = 4096, open_files: int = 64, max_processes: int = 32,
                 error_chars: int = 2000, frames: int = 3, isolate: bool = True) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.timeout = float(timeout)
        self.isolate = isolate
        self._limits = {"memory_mb": memory_mb, "output_kb": output_kb, "open_files": open_files,
                        "max_processes": max_processes, "cpu_s": math.ceil(timeout) + 1}
        self._error = {"error_chars": error_chars, "frames": frames}
        self._root: str | None = None
        self._slots: list[_Worker | None] = []
        self._threads: list[threading.Thread] = []
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.isolated = False

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers (idempotent)."""
        if self._root is not None:
            return
        self._root = tempfile.mkdtemp(prefix="ilf-exec-")
        os.chmod(self._root, 0o711)
        self._cfg = {"root": self._root, "timeout": self.timeout, "limits": self._limits, **self._error}
        try:
            self._slots = [_Worker(self._cfg, self.isolate) for _ in range(self.workers)]
        except BaseException:
            self.close()
            raise
        self.isolated = all(w.isolated for w in self._slots if w)
        self._threads = [threading.Thread(target=self._serve, args=(i,), daemon=True) for i in range(self.workers)]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """Stop the workers and remove every temporary file (idempotent)."""
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        for w in self._slots:
            if w is not None:
                w.stop()
        self._threads, self._slots = [], []
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def _run_one(self, slot: int, job: Job) -> Result:
        """Run a job on this slot's worker; replace a dead worker and retry once."""
        wire = job.to_wire()
        for _attempt in range(2):
            w = self._slots[slot]
            if w is None or w.proc.poll() is not None:
                w = self._slots[slot] = _Worker(self._cfg, self.isolate)
            reply = w.call(wire, self.timeout + _GRACE_S)
            if reply is not None:
                return Result(job.id, reply["verdict"], reply["verdict"] == "passed", reply["error"], reply["duration_s"])
            self._slots[slot] = None
        return Result(job.id, "crash", False, "Crash: the executor worker died twice on this program", 0.0)

    def _serve(self, slot: int) -> None:
        """Thread body: take (index, job, reply queue, cancelled) items until told to stop."""
        while (item := self._jobs.get()) is not None:
            index, job, out, cancelled = item
            if cancelled.is_set():
                out.put((index, None))
                continue
            try:
                result = self._run_one(slot, job)
            except Exception as e:  # noqa: BLE001 - never lose a job: report it
                result = Result(job.id, "crash", False, f"Crash: executor failure: {type(e).__name__}: {e}", 0.0)
            out.put((index, result))

    def imap(self, jobs: Iterable[Job]) -> Iterator[Result]:
        """Results as they complete (any order); every job yields exactly one result."""
        if self._root is None:
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
