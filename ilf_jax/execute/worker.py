"""Executor worker: a fresh interpreter that never runs program code; it supervises one job at a time.

For each job it takes a sandbox the zygote prepared ahead of time, forks a judge (which runs the
tests and talks to the program process), and watches the job: the job's CPU time (the primary
timeout), a wall-clock backstop, the bytes written to stdout/stderr, the program's exit. It then
kills everything the job started and answers with one verdict record. Whatever goes wrong on this
side becomes `harness_error` for that job only. When its caller goes away (stdin closes) it ends
the job in flight, its zygote and its spare sandbox, and exits.

Protocol on stdin/stdout: ilf_jax.execute.wire messages, one request and one reply per job.
Run as `python -m ilf_jax.execute.worker CONFIG_JSON`.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import select
import signal
import struct
import sys
import time
from typing import Any

from ilf_jax.execute import isolation, pytest_module, wire, zygote
from ilf_jax.execute.judge import Stopped, judge

PRELOAD = ("math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string", "operator",
           "copy", "datetime", "decimal", "fractions", "statistics", "typing", "array", "cmath", "faulthandler",
           "random", "json", "linecache", "traceback", "ilf_jax.execute.program")
_STDERR_TAIL = 600
POLL_S, MAX_POLL_S = 0.02, 0.25  # how often a running job's CPU time is read: every 250 ms, more often near the limit
_CLK = os.sysconf("SC_CLK_TCK")
_UID_BASE = 1 << 20


class CallerGone(Exception):  # noqa: N818
    """stdin closed: the executor that started us is gone."""


def _preload() -> None:
    """Import what programs commonly use once, so forked sandboxes start warm."""
    for name in PRELOAD:
        importlib.import_module(name)


def _import_now() -> None:
    """Import what this process would otherwise import after jobs ran: without namespaces a job can write
    the caller's files, so nothing is imported from disk once a job has run."""
    pytest_module.load_all()
    for name in ("shutil", "subprocess", "tempfile"):
        if name not in sys.modules:
            importlib.import_module(name)


def descendants(root: int) -> list[int]:
    """Pids of all processes below `root`, from a scan of /proc (used only without a PID namespace)."""
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


def tree_cpu(root: int, below_only: bool = False) -> float:
    """CPU seconds of `root` and every process below it, each with what it reaped, from /proc's
    per-thread lists of children (exact, and cheap for a job's few processes). `below_only`: not
    root's own, and root has one thread (its list of children is all that is read of it)."""
    ticks, todo = 0, []
    if below_only:
        try:
            todo.extend(_children(root, root))
        except (OSError, ValueError):
            return 0.0
    else:
        todo.append(root)
    while todo:
        pid = todo.pop()
        ticks += zygote.process_ticks(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                todo.extend(_children(pid, tid))
        except (OSError, ValueError):
            continue
    return ticks / _CLK


def _children(pid: int, tid: int | str) -> list[int]:
    """Pids of the children of one thread of a process, from /proc."""
    return [int(child) for child in zygote.read_proc(f"/proc/{pid}/task/{tid}/children").split()]


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class Sandbox:
    """One prepared job sandbox as the worker sees it: its init and the worker's/judge's pipe ends."""

    def __init__(self, worker: Worker) -> None:
        self.uid = _UID_BASE + int.from_bytes(os.urandom(4), "big") % (1 << 30)  # unguessable, like secrets'
        self.dir = None
        if not worker.namespaces:
            self.dir = os.path.join(worker.tmp_root(), str(self.uid))
            os.mkdir(self.dir, 0o700)
            if worker.own_uid:
                os.chown(self.dir, self.uid, self.uid)
        req_r, self.req_w = os.pipe()
        self.rep_r, rep_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.status_r, status_w = os.pipe()
        life_r, self.life_w = os.pipe()
        theirs = [req_r, rep_w, out_w, err_w, status_w, life_r]
        self.pidfd, self.pid, self.program_pid, self.setup_error, self.sock = -1, 0, 0, "", worker.zygote_sock
        try:
            zygote.ask(worker.zygote_sock, theirs, zygote.Request(self.uid, worker.namespaces, self.dir or ""))
        finally:
            for fd in theirs:
                os.close(fd)
        self.asked, self.clone_filter = True, False
        self.status_buf = b""
        self.ready: bool | None = None
        self.program_cpu: float | None = None  # the program's CPU seconds, from the zygote once it has reaped it
        self.status: int | None = None
        self.namespaces, self.own_uid = worker.namespaces, worker.own_uid

    def answered(self) -> None:
        """Take the zygote's answer to our request (once)."""
        if self.asked:
            self.asked = False
            self.pid, self.pidfd, self.program_pid, self.setup_error, self.clone_filter = zygote.answer(self.sock)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Read the sandbox's first word: ready, or the reason the sandbox could not be built."""
        self.answered()
        deadline = time.monotonic() + timeout
        while self.ready is None and time.monotonic() < deadline:
            if not select.select([self.status_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            if not self.read_status():
                break
        if self.ready is None:
            self.ready, self.setup_error = False, self.setup_error or "the sandbox did not start"

    def read_status(self) -> bool:
        """Take what the sandbox's side wrote (R ready, F why not, C the program's CPU seconds, S its wait
        status; with namespaces the program writes R or F and the zygote the rest); False at end of stream."""
        chunk = os.read(self.status_r, 4096)
        if not chunk:
            return False
        buf = self.status_buf + chunk
        while buf:
            tag = buf[:1]
            if tag == b"R":
                self.ready, buf = True, buf[1:]
            elif tag == b"F":
                self.ready, buf = False, b""
                self.setup_error = self.setup_error or buf[1:].decode("utf-8", "replace")  # the zygote's reason first
            elif tag == b"C" and len(buf) >= 9:
                self.program_cpu, buf = struct.unpack(">d", buf[1:9])[0], buf[9:]
            elif tag == b"S" and len(buf) >= 5:
                self.status, buf = struct.unpack(">i", buf[1:5])[0], buf[5:]
            elif tag in (b"C", b"S"):
                break
            else:
                raise RuntimeError(f"unexpected status byte {tag!r} from a sandbox")
        self.status_buf = buf
        return True

    def drain_status(self) -> None:
        """Read whatever the sandbox's side has written so far, without waiting."""
        while select.select([self.status_r], [], [], 0)[0] and self.read_status():
            pass

    def job_cpu(self) -> float:
        """CPU seconds of the job's processes so far: the program (the zygote's figure once it reaped it) and
        what is below the init (without namespaces, all of the job; with them, the orphans it inherited)."""
        if not self.pid:
            return 0.0
        if not self.program_pid:
            return tree_cpu(self.pid)
        cpu = tree_cpu(self.pid, below_only=True)  # a JobInit runs nothing, in one thread
        return cpu + (self.program_cpu if self.program_cpu is not None else tree_cpu(self.program_pid))

    def end_processes(self) -> None:
        """SIGKILL every process of the job (the init last; it is pid 1 of the job's namespace when there is one)."""
        if self.pidfd < 0:
            return
        if not self.namespaces:
            for _ in range(20):
                pids = descendants(self.pid)
                for pid in pids:
                    _sigkill(pid)
                if self.own_uid:
                    _kill_uid(self.uid)
                if not pids:
                    break
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill(self, wait: bool = True) -> int:
        """Kill every process of the job, close the worker's pipe ends, remove its directory. With `wait`,
        return once the init has exited (-1); else return its pidfd, to be waited on later."""
        try:
            self.answered()
        except OSError:
            pass
        left = -1
        if self.pidfd >= 0:
            self.end_processes()
            if wait:
                wait_exited(self.pidfd)
                os.close(self.pidfd)
            else:
                left = self.pidfd
            self.pidfd = -1
        for fd in (self.req_w, self.rep_r, self.out_r, self.err_r, self.status_r, self.life_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.req_w = self.rep_r = self.out_r = self.err_r = self.status_r = self.life_w = -1
        if self.dir is not None:
            remove_tree(self.dir)
            self.dir = None
        return left


def wait_exited(pidfd: int, timeout: float = 10.0) -> None:
    """Wait (at most `timeout`) until the process behind `pidfd` has exited. Meanwhile reap whatever ended
    among our children: a job's init exits only once every process of its namespace is reaped, and when
    the zygote died its programs were re-parented to us (the subreaper)."""
    deadline = time.monotonic() + timeout
    while not select.select([pidfd], [], [], min(0.05, max(0.0, deadline - time.monotonic())))[0]:
        reap_children()
        if time.monotonic() >= deadline:
            return


def reap_children() -> None:
    """Reap every child of ours that has ended, without waiting."""
    while True:
        try:
            if not os.waitpid(-1, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return


def _sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill_uid(uid: int) -> None:
    """SIGKILL every process running as `uid` (a job's own uid: nothing else has it)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    os.kill(int(name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue


def remove_tree(path: str) -> None:
    """Remove a job directory without following its links, however deep or odd; never raises."""
    import shutil  # (here and in tmp_root: only without namespaces, imported by then; the zygote forks without them)
    import subprocess

    try:
        shutil.rmtree(path)
    except Exception:  # noqa: BLE001 - a deep tree (RecursionError), modes the job set...
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


class Worker:
    """The worker's state: config, zygote, the spare sandbox, the isolation in force."""

    def __init__(self, cfg: dict[str, Any], proto_in: int, proto_out: int) -> None:
        self.cfg, self.proto_in, self.proto_out = cfg, proto_in, proto_out
        self.own_uid = os.geteuid() == 0 and not cfg.get("in_user_namespace", False)
        cfg["own_uid"] = self.own_uid
        cfg["limits"]["processes"] = cfg["limits"]["max_processes"] if self.own_uid else (
            len(os.listdir("/proc")) + cfg["limits"]["max_processes"])
        self.namespaces = bool(cfg["isolate"])
        self.fallback_reason = "" if self.namespaces else "isolation turned off"
        self.clone_filter = False  # (the zygote says, with each sandbox)
        self._tmp: str | None = None
        self.zygote_pid, self.zygote_sock = zygote.start(cfg, [proto_in, proto_out])
        self.spare: Sandbox | None = None
        self.dying: list[Sandbox] = []
        self.exiting: list[int] = []  # pidfds of killed inits not yet seen exiting

    def tmp_root(self) -> str:
        if self._tmp is None:
            import tempfile

            self._tmp = tempfile.mkdtemp(prefix="ilf-exec-")
            os.chmod(self._tmp, 0o711)
        return self._tmp

    @property
    def isolation(self) -> str:
        return isolation.describe_isolation(self.namespaces, self.own_uid, self.fallback_reason, self.clone_filter)

    def take_sandbox(self) -> Sandbox:
        """The spare sandbox (made now if there is none), ready; falls back to no namespaces if they fail."""
        for _ in range(2):
            box, self.spare = self.spare or Sandbox(self), None
            box.wait_ready()
            if box.ready:
                self.clone_filter = box.clone_filter
                return box
            box.kill()
            if not self.namespaces:
                raise RuntimeError(f"the sandbox could not be built: {box.setup_error}")
            self.namespaces, self.fallback_reason = False, box.setup_error or "unknown"
            _import_now()
        raise RuntimeError("the sandbox could not be built")


    def bury(self, wait: bool = False) -> None:
        """Release the ended jobs' pipes and directories. Their processes are dead (SIGKILL) but may still
        be exiting: that is waited for here only without namespaces (a directory is removed) or with `wait`."""
        while self.dying:
            left = self.dying.pop().kill(wait=wait or not self.namespaces)
            if left >= 0:
                self.exiting.append(left)
        for fd in list(self.exiting):
            if wait or select.select([fd], [], [], 0)[0]:
                wait_exited(fd)
                os.close(fd)
                self.exiting.remove(fd)

    def close(self) -> None:
        self.bury(wait=True)
        if self.spare is not None:
            self.spare.kill()
            self.spare = None
        self.zygote_sock.close()
        try:
            os.kill(self.zygote_pid, signal.SIGKILL)
            os.waitpid(self.zygote_pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        if self._tmp is not None:
            remove_tree(self._tmp)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """One job, start to verdict; a failure on this side is `harness_error` for this job."""
        self.bury()  # (normally done already, right after the previous verdict was sent)
        start = time.monotonic()
        try:
            return self._run(job, start)
        except CallerGone:
            raise
        except Exception as e:  # noqa: BLE001 - the harness never dies on one job
            return {"verdict": "harness_error", "error": f"HarnessError: {type(e).__name__}: {e}"[:500],
                    "duration_s": round(time.monotonic() - start, 4), "cpu_s": 0.0, "isolation": self.isolation}
        finally:
            if not self.namespaces:  # a job's orphans may end up as our children (a subreaper)
                reap_children()

    def _run(self, job: dict[str, Any], start: float, prefetch: bool = True) -> dict[str, Any]:
        box = self.take_sandbox()
        try:
            watch = Supervisor(self, box, start)
            if self.spare is None:
                try:
                    self.spare = Sandbox(self)  # the next job's sandbox is made while this one runs
                except OSError:
                    self.spare = None
            if self.namespaces:  # the jobs share the worker's network namespace: one job's processes in it at a time
                self.bury(wait=True)
            outcome = judge(job, watch, self.cfg, prefetch)
            if outcome["kind"] == "rerun" and not watch.stopped:
                box.kill()
                return self._run(job, start, prefetch=False)
            if outcome["kind"] == "gone" and not watch.stopped:
                watch.wait_status()
            watch.finish()
            if watch.stopped == "caller":
                raise CallerGone()
            verdict, error = self._verdict(outcome, watch)
        finally:
            duration = time.monotonic() - start
            box.end_processes()  # dead now; reaped and closed by `bury` once the verdict is on its way
            self.dying.append(box)
        return {"verdict": verdict, "error": error, "duration_s": round(duration, 4), "cpu_s": round(watch.cpu, 3),
                "isolation": self.isolation}

    def _verdict(self, outcome: dict[str, str], watch: Supervisor) -> tuple[str, str]:
        cfg = self.cfg
        over_output = f"OutputLimit: output or files over {cfg['limits']['output_kb']} KiB"
        if watch.stopped == "cpu" or watch.cpu > cfg["timeout"]:
            return "timeout", f"Timeout: the program ran longer than {cfg['timeout']:g} s"
        if watch.stopped == "wall":
            return "timeout", f"Timeout: the program ran longer than {cfg['wall_timeout']:g} s of wall-clock time"
        if watch.stopped == "output":
            return "output_limit", over_output
        kind, error = str(outcome.get("kind")), str(outcome.get("error", ""))
        if kind not in ("gone", "stopped"):
            return kind, error
        status = watch.box.status
        stderr = watch.stderr.decode("utf-8", "replace").strip()
        extra = f"\nstderr: {stderr[-400:]}" if stderr else ""
        if status is None:
            return "harness_error", "HarnessError: the program's channel closed and its exit status is unknown"
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXFSZ:
                return "output_limit", over_output
            if sig == signal.SIGXCPU:
                return "timeout", f"Timeout: the program ran longer than {cfg['timeout']:g} s"
            return "crash", f"Crash: killed by {_signal_name(sig)}{extra}"
        code = os.waitstatus_to_exitcode(status)
        return "error", f"Error: the program exited (status {code}) before the tests finished{extra}"


class Supervisor:
    """The judge's transport to a job's program, and the job's watchdog.

    While the judge waits to send or receive, it drains the program's stdout/stderr (counting the
    bytes), reads the job's CPU time (only once a job has run 250 ms: most never do), notices the
    program's exit and the caller going away, and ends the job (raising `Stopped` into the judge) at
    the CPU, wall-clock or output limit.
    """

    def __init__(self, worker: Worker, box: Sandbox, start: float) -> None:
        self.worker, self.box, self.cfg = worker, box, worker.cfg
        self.deadline = start + self.cfg["wall_timeout"]
        self.out_cap = self.cfg["limits"]["output_kb"] * 1024
        self.cpu = 0.0
        self.cpu_check = time.monotonic() + min(MAX_POLL_S, self.cfg["timeout"] / 4)
        self.out_bytes, self.stderr = 0, b""
        self.stopped = ""
        self.buf = b""
        for fd in (box.req_w, box.rep_r):
            os.set_blocking(fd, False)
        self.watched = [box.out_r, box.err_r, box.status_r]

    def _stop(self, reason: str) -> None:
        self.stopped = self.stopped or reason
        raise Stopped(reason)

    def _round(self, read: list[int], write: list[int]) -> tuple[list[int], list[int]]:
        """One poll round; handles everything but the channel; raises Stopped at a limit."""
        if self.stopped:
            raise Stopped(self.stopped)
        box = self.box
        poller = select.poll()
        for fd in self.watched + read:
            poller.register(fd, select.POLLIN)
        for fd in write:
            poller.register(fd, select.POLLOUT)
        poller.register(self.worker.proto_in, 0)  # hang-up only: the next job may already be waiting there
        timeout_ms = max(0, int((min(self.deadline, self.cpu_check) - time.monotonic()) * 1000) + 1)
        events = dict(poller.poll(timeout_ms))
        if events.get(self.worker.proto_in, 0) & (select.POLLHUP | select.POLLERR):
            self._stop("caller")
        r = [fd for fd, ev in events.items() if ev & (select.POLLIN | select.POLLHUP | select.POLLERR)]
        w = [fd for fd in write if events.get(fd, 0) & (select.POLLOUT | select.POLLERR | select.POLLHUP)]
        for fd in (box.out_r, box.err_r):
            if fd in r and fd in self.watched:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self.watched.remove(fd)
                self.out_bytes += len(chunk)
                if fd == box.err_r:
                    self.stderr = (self.stderr + chunk)[-_STDERR_TAIL:]
        if box.status_r in r and box.status_r in self.watched:
            if not box.read_status():
                self.watched.remove(box.status_r)
            if box.status is not None:
                box.end_processes()  # the program ended: nothing of the job may outlive it
        now = time.monotonic()
        if now >= self.cpu_check:
            self.cpu = max(self.cpu, box.job_cpu())
            self.cpu_check = now + min(MAX_POLL_S, max(POLL_S, (self.cfg["timeout"] - self.cpu) / 4))
        ready_read, ready_write = [fd for fd in read if fd in r], w
        if ready_read or ready_write:  # the channel first: what the program answered before it went over
            return ready_read, ready_write  # a limit still counts (a prefetched call may run ahead)
        if self.out_bytes > self.out_cap:
            self._stop("output")
        if self.cpu > self.cfg["timeout"]:
            self._stop("cpu")
        if time.monotonic() >= self.deadline:
            self._stop("wall")
        return ready_read, ready_write

    def send(self, obj: Any) -> None:
        data = wire.frame(obj)
        while data:
            if self.box.req_w in self._round([], [self.box.req_w])[1]:
                try:
                    data = data[os.write(self.box.req_w, data):]
                except BlockingIOError:
                    continue

    def recv(self, cap: int) -> Any:
        while True:
            msg, self.buf = wire.unframe(self.buf, cap)
            if msg is not wire.INCOMPLETE:
                return msg
            if self.box.rep_r in self._round([self.box.rep_r], [])[0]:
                try:
                    chunk = os.read(self.box.rep_r, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    return None
                self.buf += chunk

    def wait_status(self) -> None:
        """After the channel closed: wait (within the limits) for the program's exit status."""
        try:
            while self.box.status is None and self.box.status_r in self.watched:
                self._round([], [])
        except Stopped:
            pass

    def finish(self) -> None:
        """The job's CPU time as it ends and what is left of stderr (a fault's report), without waiting."""
        self.box.drain_status()
        self.cpu = max(self.cpu, self.box.job_cpu())
        for _ in range(16):
            if self.box.err_r not in self.watched or not select.select([self.box.err_r], [], [], 0)[0]:
                break
            chunk = os.read(self.box.err_r, 1 << 16)
            if not chunk:
                break
            self.stderr = (self.stderr + chunk)[-_STDERR_TAIL:]


def _pin(cpu: int | None) -> None:
    """Run on this CPU only (None: anywhere); the zygote and every job forked after this inherit it.
    A CPU that went away leaves the worker unpinned: pinning is for speed, nothing depends on it."""
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def main() -> None:
    """Serve jobs until stdin closes."""
    cfg = json.loads(sys.argv[1])
    _pin(cfg.get("cpu"))
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    isolation.prctl(isolation.PR_SET_DUMPABLE, 0)  # the zygote, each job init (same memory) and program inherit it
    isolation.prctl(isolation.PR_SET_CHILD_SUBREAPER, 1)  # what the zygote leaves (its inits, programs) comes to us
    _preload()
    worker = Worker(cfg, proto_in, proto_out)  # forks the zygote: before any job data, before pytest
    judge_bytes = cfg["judge_memory_mb"] << 20
    resource.setrlimit(resource.RLIMIT_AS, (judge_bytes, judge_bytes))  # the judge runs here: bounded
    try:
        pytest_module.install()  # what only the judge needs
        if not worker.namespaces:
            _import_now()
        worker.spare = worker.take_sandbox()  # find out which isolation this kernel gives us
    except Exception as e:  # noqa: BLE001
        wire.send(proto_out, {"ready": False, "error": f"{type(e).__name__}: {e}"})
        worker.close()
        return
    wire.send(proto_out, {"ready": True, "isolation": worker.isolation})
    try:
        while (job := wire.recv(proto_in)) is not None:
            wire.send(proto_out, worker.run(job))
            worker.bury()
    except (CallerGone, OSError):
        pass
    finally:
        worker.close()
    os._exit(0)  # nothing left to flush: skip the interpreter's teardown (~10 ms a worker)


if __name__ == "__main__":
    main()
