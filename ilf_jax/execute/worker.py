"""Executor worker: a fresh interpreter (started by `Executor` with subprocess) that runs each job in a
forked child with hard limits, enforces the wall-clock timeout, kills and reaps the child's whole
process tree, removes its temporary directory and sends back one verdict.

Protocol on stdin/stdout: 4-byte big-endian length + JSON, one request and one reply per job.
Run as `python -m ilf_jax.execute.worker CONFIG_JSON`.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import secrets
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
from typing import Any

from ilf_jax.execute import sandbox

PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "operator",
           "copy", "datetime", "decimal", "fractions", "statistics", "typing", "array", "cmath", "faulthandler")
_RC_HARNESS = 85
_REPORT_CAP = 1 << 20


def send(fd: int, obj: Any) -> None:
    """Write one length-prefixed JSON message."""
    data = json.dumps(obj).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def recv(fd: int) -> Any:
    """Read one length-prefixed JSON message; None at end of stream."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


def _read_exact(fd: int, n: int) -> bytes | None:
    """Exactly n bytes from fd, or None at end of stream."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _preload() -> None:
    """Import what programs and tests commonly use once, so forked children start warm."""
    for name in PRELOAD:
        importlib.import_module(name)
    try:
        import pytest  # noqa: F401 - the tests' `from pytest import approx`
    except ImportError:
        from ilf_jax.execute import approx_fallback

        sys.modules["pytest"] = approx_fallback


def _descendants(root: int) -> list[int]:
    """Pids of all processes below `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            out.append(pid)
            todo.append(pid)
    return out


def kill_tree(isolated: bool) -> None:
    """Kill and reap every process this worker started (directly or not), whatever they did."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if isolated:  # we are init of our pid namespace: kill(-1) reaches everyone else in it
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                return
        else:  # we are a child subreaper: orphans come back to us
            try:
                if os.waitpid(-1, os.WNOHANG) != (0, 0):
                    continue
            except ChildProcessError:
                return
            for pid in _descendants(os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            if not isolated:
                return


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """Wait for the child up to `timeout` s; kill its group on expiry. Returns (wait status, timed out)."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                kill()
            except ProcessLookupError:
                pass
    return os.waitpid(pid, 0)[1], not ready


def _read_all(fd: int) -> bytes:
    """What is left in a pipe whose writers are all gone (capped)."""
    os.set_blocking(fd, False)
    chunks, size = [], 0
    while size < _REPORT_CAP:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _tail(path: str, n: int = 600) -> str:
    """Last n bytes of a file as text ('' if unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def verdict(status: int, timed_out: bool, data: bytes, nonce: str, cfg: dict[str, Any], stderr: str) -> tuple[str, str]:
    """(verdict, error text) from how the child ended and what reached the result channel."""
    limits = cfg["limits"]
    if timed_out:
        return "timeout", f"Timeout: the program ran longer than {cfg['timeout']:g} s"
    extra = f"\nstderr: {stderr[-400:]}" if stderr else ""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXFSZ:
            return "output_limit", f"OutputLimit: output or files over {limits['output_kb']} KiB"
        if sig == signal.SIGXCPU:
            return "timeout", f"Timeout: the program used more than {limits['cpu_s']} s of CPU"
        return "crash", f"Crash: killed by signal {signal.Signals(sig).name}{extra}"
    rc = os.waitstatus_to_exitcode(status)
    try:
        report = json.loads(data) if data else None
    except ValueError:
        report = "garbled"
    if isinstance(report, dict) and set(report) <= {"kind", "error", "nonce"}:
        kind, error = report.get("kind"), report.get("error")
        if kind == "passed" and rc == sandbox.RC_PASS and report.get("nonce") == nonce and isinstance(error, str):
            return "passed", ""
        if kind in ("failed", "error", "syntax_error", "memory") and rc == sandbox.RC_REPORTED and "nonce" not in report:
            return kind, str(error)
    if report is not None or rc in (sandbox.RC_PASS, sandbox.RC_REPORTED):
        return "error", "Error: the program tampered with the test harness's result channel"
    if rc == _RC_HARNESS:
        return "error", f"Error: the test harness could not run the program{extra}"
    return "error", f"Error: the program exited (status {rc}) before the tests finished{extra}"


def run_job(wire: dict[str, Any], cfg: dict[str, Any], devnull: int) -> dict[str, Any]:
    """Fork a limited child for one job and return its verdict record."""
    isolated, drop = cfg["isolated"], cfg["drop_privileges"]
    jobdir = tempfile.mkdtemp(dir=cfg["root"])
    work = os.path.join(jobdir, "w")
    os.mkdir(work, 0o700)
    if drop:
        os.chown(jobdir, cfg["uid"], cfg["uid"])
        os.chown(work, cfg["uid"], cfg["uid"])
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out_fd = os.open(os.path.join(jobdir, "stdout"), flags, 0o600)
    err_fd = os.open(os.path.join(jobdir, "stderr"), flags, 0o600)
    nonce = secrets.token_hex(16)
    nonce_r, nonce_w = os.pipe()
    os.write(nonce_w, nonce.encode())
    os.close(nonce_w)
    report_r, report_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(devnull, 0)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            keep = sorted({nonce_r, report_w})
            os.closerange(3, keep[0])
            os.closerange(keep[0] + 1, keep[1])
            os.closerange(keep[1] + 1, 1 << 16)
            os.chdir(work)
            os.environ.update(HOME=work, TMPDIR=work, TMP=work, TEMP=work)
            sandbox.set_limits(cfg["limits"], cfg["uid"] if drop else None)
            import faulthandler

            faulthandler.enable()
            sandbox.run_child(wire, nonce_r, report_w, cfg)
        finally:
            os._exit(_RC_HARNESS)
    for fd in (nonce_r, report_w, out_fd, err_fd):
        os.close(fd)
    status, timed_out = _wait(pid, cfg["timeout"])
    duration = time.monotonic() - start
    kill_tree(isolated)
    data = _read_all(report_r)
    os.close(report_r)
    name, error = verdict(status, timed_out, data, nonce, cfg, _tail(os.path.join(jobdir, "stderr")))
    _remove(jobdir)
    return {"verdict": name, "error": error, "duration_s": round(duration, 4)}


def _remove(path: str) -> None:
    """rmtree that also copes with files the program made unreadable or already deleted."""
    def fix(func: Any, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
        except OSError:
            pass
        try:
            (os.rmdir if os.path.isdir(p) and not os.path.islink(p) else os.unlink)(p)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(p, ignore_errors=True)

    shutil.rmtree(path, onerror=fix)


def main() -> None:
    """Serve jobs until stdin closes."""
    cfg = json.loads(sys.argv[1])
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0)  # PR_SET_DUMPABLE 0: children cannot ptrace their worker
    cfg["isolated"] = os.getpid() == 1
    cfg["uid"] = secrets.randbelow(1 << 20) + (1 << 20)  # a uid of its own: no other process shares it
    if not cfg["isolated"]:
        libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: escaped grandchildren come back to us
    if cfg["drop_privileges"] or cfg["isolated"]:
        cfg["limits"]["processes"] = cfg["limits"]["max_processes"]
    else:  # RLIMIT_NPROC counts all of this user's processes on the machine
        cfg["limits"]["processes"] = len(_descendants(1)) + cfg["limits"]["max_processes"]
    _preload()
    send(proto_out, {"ready": True, "isolated": cfg["isolated"]})
    while (wire := recv(proto_in)) is not None:
        sys.stdout.flush()
        send(proto_out, run_job(wire, cfg, devnull))


if __name__ == "__main__":
    main()
