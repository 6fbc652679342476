"""The zygote: forked by a worker before any job arrives, it makes each job's sandbox ahead of time.

Asked over a unix socket (with the job's pipe ends passed as file descriptors), it makes the job's
PID namespace, whose init is an isolation.JobInit (a clone of the zygote that runs no Python), and
forks the program process into it as pid 2; the worker gets a pidfd of the init. The zygote itself
lives in the jobs' read-only root and empty network namespace (isolation.build_template); the program
process enters new mount and IPC namespaces, mounts its private /tmp and /proc, confines itself (own
uid, limits, no capabilities) and waits for the judge's `load`. The zygote reaps it and reports its
wait status and CPU time. The zygote never holds a program, a test or a result, so no job's sandbox
starts with another job's data in its memory. Without namespaces it forks a Python init instead (a
subreaper in the job's directory), which forks the program and reports its exit.
"""

from __future__ import annotations

import faulthandler
import fcntl
import gc
import os
import select
import signal
import socket
import struct
from typing import Any, NamedTuple, NoReturn

from ilf_jax.execute import isolation, program

N_FDS = 6  # request read end, reply write end, stdout, stderr, status write end, lifeline read end
_environment_home = ""  # the home of the environment _set_environment made in this process ("": none yet)
_confinement: isolation.Confinement  # each job's sandbox steps and limits, made once by _serve


def start(cfg: dict[str, Any], close: list[int]) -> tuple[int, socket.socket]:
    """Fork the zygote (it closes the worker's fds in `close`); (its pid, the worker's end of its socket)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            for fd in close:
                os.close(fd)
            _serve(theirs, cfg)
        finally:
            os._exit(0)
    theirs.close()
    return pid, ours


class Request(NamedTuple):
    """A sandbox asked of the zygote: the job's uid, whether in namespaces, and (without them) its directory."""

    uid: int
    namespaces: bool
    dir: str = ""


class Answer(NamedTuple):
    """The zygote's answer: the job's init (its pid and a pidfd), the program's pid (0 without namespaces), why
    the namespaces could not be made ("": they were, or none were asked for), and whether the job runs under
    isolation.refuse_clone_parent's filter."""

    pid: int
    pidfd: int
    program: int
    error: str
    clone_filter: bool


_HEAD = struct.Struct(">I?")  # a request: uid, namespaces; then the directory (as bytes: fixed fields, no JSON
_ANSWER = struct.Struct(">ii?")  # to parse in the zygote); an answer: init pid, program pid, filter; the error


def ask(sock: socket.socket, fds: list[int], request: Request) -> None:
    """Ask the zygote for a sandbox on these pipe ends (the answer comes with `answer`: the zygote works meanwhile)."""
    socket.send_fds(sock, [_HEAD.pack(request.uid, request.namespaces) + request.dir.encode()], fds)


def answer(sock: socket.socket) -> Answer:
    """The zygote's answer to `ask`."""
    msg, got, _flags, _addr = socket.recv_fds(sock, 4096, 1)
    if len(msg) < _ANSWER.size or len(got) != 1:
        for fd in got:
            os.close(fd)
        raise OSError("the zygote is gone")
    pid, program, clone_filter = _ANSWER.unpack_from(msg)
    return Answer(pid, got[0], program, msg[_ANSWER.size:].decode("utf-8", "replace"), clone_filter)


def _serve(sock: socket.socket, cfg: dict[str, Any]) -> None:
    isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
    root_error = ""
    if cfg["isolate"]:
        try:
            isolation.build_template(cfg["binds"], cfg["hide"])
        except OSError as e:
            root_error = f"the sandbox root could not be built: {e}"
    if cfg["isolate"] and not root_error:  # every namespaced job has this environment: set it once, here
        _set_environment(isolation.WORK_DIR)  # (measured: ~80 page faults fewer a job than each program setting it)
    isolation.confine_children()
    global _confinement
    _confinement = isolation.Confinement(cfg["limits"], cfg["limits"]["output_kb"] + 1024)
    faulthandler.enable()  # inherited: each program's fatal errors go to its fd 2, its stderr pipe (~0.08 ms a job)
    gc.freeze()
    programs: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status write end) of each namespaced job's program
    inits: dict[int, tuple[int, isolation.JobInit | None]] = {}  # pidfd -> (pid, JobInit or None: a forked init)
    listen = sock.fileno()
    while True:
        ready = select.select([listen, *programs, *inits], [], [])[0]
        for fd in ready:
            if fd in programs:
                _report_exit(*programs.pop(fd))
                os.close(fd)
            elif fd in inits:
                pid, init = inits.pop(fd)
                os.waitpid(pid, 0)  # ended (the pidfd is readable): returns at once
                if init is not None:
                    init.release()
                os.close(fd)
        if listen not in ready:
            continue
        msg, fds, _flags, _addr = socket.recv_fds(sock, 4096, N_FDS)
        if len(msg) < _HEAD.size:
            return
        request = Request(*_HEAD.unpack_from(msg), msg[_HEAD.size:].decode())
        error = root_error if request.namespaces else ""
        made = _namespaced_job(request, fds, cfg, own_pid_ns, sock) if request.namespaces and not error else None
        if isinstance(made, str):
            error, made = made, None
        if made is None:  # no namespaces (or they failed: the init says so, and the worker falls back)
            made = _forked_init(request, fds, cfg, sock, own_pid_ns), None, -1, -1
        init_pid, init, program_pid, program_fd = made
        init_fd = os.pidfd_open(init_pid)  # before any reaping: it names this init, never a reused pid
        inits[init_fd] = (init_pid, init)
        for i, fd in enumerate(fds):
            if not (program_fd >= 0 and i == _STATUS):
                os.close(fd)
        if program_fd >= 0:
            programs[program_fd] = (program_pid, fds[_STATUS])
        reply = _ANSWER.pack(init_pid, program_pid if program_fd >= 0 else 0, isolation.CLONE_FILTER) + error.encode()
        socket.send_fds(sock, [reply], [init_fd])


_STATUS = 4  # the index of the status pipe's write end in a request's fds


def _namespaced_job(request: Request, fds: list[int], cfg: dict[str, Any], own_pid_ns: int,
                    sock: socket.socket) -> tuple[int, isolation.JobInit, int, int] | str:
    """A job's PID namespace (its init: a JobInit) and its program forked into it as pid 2, our child;
    (init pid, init, program pid, program pidfd), or why the namespace could not be made."""
    faulthandler.disable()  # the init copies our signal handlers: it must have none (see JobInit)
    try:
        init = isolation.JobInit()
    except OSError as e:
        return str(e)
    finally:
        faulthandler.enable()
    try:
        init_fd = os.pidfd_open(init.pid)
        try:
            isolation.set_pid_namespace_for_children(init_fd)
        finally:
            os.close(init_fd)
        try:
            pid = _fork(lambda: _namespaced_program(request, fds, cfg), sock, own_pid_ns)
        finally:
            isolation.set_pid_namespace_for_children(own_pid_ns)
        return init.pid, init, pid, os.pidfd_open(pid)
    except OSError as e:
        _end_init(init)
        return str(e)


def _end_init(init: isolation.JobInit) -> None:
    """Kill and reap an init whose job could not be made."""
    os.kill(init.pid, signal.SIGKILL)
    os.waitpid(init.pid, 0)
    init.release()


def _report_exit(pid: int, status_w: int) -> None:
    """A namespaced job's program ended: reap it, tell the worker its CPU time (with what it reaped) and wait status."""
    try:
        _pid, status, usage = os.wait4(pid, 0)
        os.write(status_w, b"C" + struct.pack(">d", usage.ru_utime + usage.ru_stime) + b"S" + struct.pack(">i", status))
    except OSError:
        pass  # the worker has gone from this job (closed its end): nothing to tell
    finally:
        os.close(status_w)


def _namespaced_program(request: Request, fds: list[int], cfg: dict[str, Any]) -> NoReturn:
    """Pid 2 of the job's namespace: its own mount and IPC namespaces, /tmp and /proc, then the program."""
    req_r, rep_w, out_w, err_w, status_w, life_r = fds
    try:
        _confinement.enter_job_root(request.uid)
    except Exception as e:  # noqa: BLE001 - reported to the worker, which falls back
        os.write(status_w, b"F" + f"{type(e).__name__}: {e}"[:500].encode())
        os._exit(1)
    os.write(status_w, b"R")
    os.close(status_w)  # the zygote reports the exit: nothing the program runs can write there
    os.close(life_r)
    _program(req_r, rep_w, out_w, err_w, request, cfg)


def _forked_init(request: Request, fds: list[int], cfg: dict[str, Any], sock: socket.socket,
                 own_pid_ns: int) -> int:
    """Without namespaces: fork the job's init (a subreaper in the job's directory, which forks the program
    and reports its exit) and return its pid. Asked for namespaces, it only reports that there are none."""
    return _fork(lambda: _init(request, fds, cfg), sock, own_pid_ns)


def _fork(body: Any, sock: socket.socket, own_pid_ns: int) -> int:
    """Fork a child that drops the zygote's own fds and runs `body` (which never returns); the child's pid."""
    pid = os.fork()
    if pid == 0:
        try:
            sock.close()
            os.close(own_pid_ns)
            body()
        finally:
            os._exit(70)
    return pid


def _init(request: Request, fds: list[int], cfg: dict[str, Any]) -> NoReturn:
    """A job's init without namespaces: fork the program, report its wait status, reap until told to go."""
    req_r, rep_w, out_w, err_w, status_w, life_r = fds
    try:
        try:
            isolation.prctl(isolation.PR_SET_PDEATHSIG, signal.SIGKILL)  # with the zygote, so with the worker
            if request.namespaces:
                raise OSError(0, "no namespaces for this sandbox")
            isolation.prctl(isolation.PR_SET_CHILD_SUBREAPER, 1)
            os.chdir(request.dir)
        except Exception as e:  # noqa: BLE001 - reported to the worker, which falls back
            os.write(status_w, b"F" + f"{type(e).__name__}: {e}"[:500].encode())
            os._exit(1)
        pid = os.fork()
        if pid == 0:
            os.close(status_w)
            os.close(life_r)
            _program(req_r, rep_w, out_w, err_w, request, cfg)
        for fd in (req_r, rep_w, out_w, err_w):
            os.close(fd)
        os.write(status_w, b"R")
        _watch(pid, status_w, life_r)
    finally:
        os._exit(0)


def process_ticks(pid: int | str) -> int:
    """CPU clock ticks of one process and what it reaped (utime + stime + cutime + cstime); 0 once it is gone."""
    try:
        return sum(int(x) for x in read_proc(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[11:15])
    except (OSError, ValueError, IndexError):
        return 0


def read_proc(path: str) -> bytes:
    """A /proc file's text (one read: they are small), through the os calls alone (no file object to make)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _watch(pid: int, status_w: int, life_r: int) -> None:
    """Report the program's wait status; reap orphans; end with the lifeline (the worker reads the CPU time)."""
    pidfd = os.pidfd_open(pid)
    watched = [pidfd, life_r]
    while True:
        ready = select.select(watched, [], [])[0]
        if life_r in ready:
            return
        while True:
            try:
                child, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not child:
                break
            if child == pid:
                os.write(status_w, b"S" + struct.pack(">i", status))
                watched.remove(pidfd)


def _set_environment(home: str) -> None:
    """The program's whole environment: its home (also its temporary directory), PATH, locale, hash seed."""
    global _environment_home
    _environment_home = home
    os.environ.clear()
    os.environ.update(HOME=home, TMPDIR=home, TMP=home, TEMP=home, PATH="/usr/bin:/bin", LANG="C.UTF-8",
                      PYTHONHASHSEED="0")


def _program(req_r: int, rep_w: int, out_w: int, err_w: int, request: Request, cfg: dict[str, Any]) -> NoReturn:
    """The program process: standard streams, the two channel fds at 3 and 4, confinement, then serve."""
    try:
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (out_w, err_w, req_r, rep_w)]
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        for fd, target in zip(high, (1, 2, 3, 4)):
            os.dup2(fd, target)
        os.closerange(5, 1 << 16)
        home = isolation.WORK_DIR if request.namespaces else request.dir
        os.chdir(home)
        if _environment_home != home:  # (the zygote set it for namespaced jobs)
            _set_environment(home)
        _confinement.confine(request.uid if cfg["own_uid"] else None, request.namespaces)
        program.serve(3, 4, cfg["error_chars"])
    finally:
        os._exit(70)
