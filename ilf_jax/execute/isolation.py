"""Kernel isolation for one job (Linux, through libc): namespaces, a private read-only root, limits, no privileges.

`JobInit` (in the zygote: pid 1 of the job's new PID namespace) and `Confinement.enter_job_root` (in the job's
program process) give the job new PID, mount and IPC namespaces; `build_template` (once, in the zygote) gives
the worker's jobs an empty network namespace, no interface up, which they occupy one at a time
(made once, not per job: a fresh one per job cost ~0.7 ms of kernel-thread CPU a job, measured, and
a job without capabilities can leave nothing in it), and pivots into a fresh root: read-only
binds of the system and Python directories, a few device nodes, a new /proc, and one size-capped
tmpfs for /tmp, /var/tmp and /dev/shm. Nothing else of the host (the caller's files, other jobs,
their temporary files) exists in it. `confine_children` (once, in the zygote) is what every job
inherits: no new privileges, an empty capability bounding set, a seccomp filter (`refuse_clone_parent`: no
process outside the job's tree, no user namespace); `Confinement.confine` is the program process's
last step as root: its own uid, resource limits, no capabilities.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import resource
import signal
import struct
from typing import NoReturn

CLONE_VM, CLONE_FILES, CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x100, 0x400, 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 4, 38, 36
PR_CAPBSET_DROP, PR_GET_SECUREBITS = 24, 27
_SETUID_DROPS_CAPABILITIES = False  # set by confine_children: no securebits keep capabilities across setuid
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/lib32", "/libx32", "/sbin", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
WORK_DIR = "/tmp/work"  # the program's cwd and HOME inside the sandbox
NAMESPACES = ("mount+pid+ipc namespaces, private read-only root, per-job tmpfs; no network "
              "(an empty net namespace per worker, one job in it at a time)")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.clone.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
_MUTEX_LOCK = ctypes.cast(_libc.pthread_mutex_lock, ctypes.c_void_p)  # a JobInit's whole program
# bound once: in a job's process each object a call goes through is a copy-on-write page fault
_prctl, _unshare, _mount, _setns = _libc.prctl, _libc.unshare, _libc.mount, _libc.setns
SIGKILL = int(signal.SIGKILL)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        _fail(what)


def _fail(what: str) -> NoReturn:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def set_pid_namespace_for_children(fd: int) -> None:
    """This process's next children are made in the PID namespace `fd` names (an nsfd or a pidfd)."""
    if _setns(fd, CLONE_NEWPID) != 0:
        _fail("setns pid")


class JobInit:
    """Pid 1 of a new PID namespace that runs no Python: a clone sharing the zygote's memory (no page
    tables copied, none torn down; ~0.05 ms, measured, against ~0.5 ms for a forked interpreter) that
    blocks in pthread_mutex_lock on a robust mutex the zygote holds. The job's processes are forked into
    its namespace; SIGKILL to it (from outside) ends them all. When the zygote dies, however it dies, the
    kernel marks its robust mutexes owner-dead and wakes each init, which returns and exits: no init
    outlives its zygote. Made while the zygote has no signal handler installed (see zygote.py), so
    as the namespace's init it ignores every signal sent from inside; its memory cannot be read or
    written from the job (not dumpable, and the job has no capabilities).

    Its stack and mutex lie in a mapping the zygote's forks do not inherit (MADV_DONTFORK), reused by
    later inits once this one is reaped: a job's program never shares those pages, so neither the
    init's writes nor a fresh zeroed stack cost a page fault a job."""

    _STACK = 64 * 1024
    _free: list[tuple[mmap.mmap, int, int]] = []  # (mapping, mutex address, stack top) of reaped inits

    def __init__(self) -> None:
        if JobInit._free:
            self._slot = JobInit._free.pop()
        else:
            self._slot = _init_slot(self._STACK)
        _, mutex, top = self._slot
        _pthread_check(_libc.pthread_mutex_lock(ctypes.c_void_p(mutex)), "pthread_mutex_lock")
        flags = CLONE_VM | CLONE_FILES | CLONE_NEWPID | signal.SIGCHLD  # the fd table shared: it holds no fd of its own
        pid = _libc.clone(_MUTEX_LOCK, top, flags, mutex)
        if pid < 0:
            err = ctypes.get_errno()
            self.release()
            raise OSError(err, f"clone of a PID namespace init: {os.strerror(err)}")
        self.pid = pid

    def release(self) -> None:
        """Once the init is reaped: unlock its mutex (off this thread's robust list) and keep its slot for the next."""
        if self._slot is not None:
            _libc.pthread_mutex_unlock(ctypes.c_void_p(self._slot[1]))
            JobInit._free.append(self._slot)
            self._slot = None


def _init_slot(size: int) -> tuple[mmap.mmap, int, int]:
    """A mapping for one init, left out of forks: a robust mutex (initialised) at its start, a stack above it."""
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    area.madvise(mmap.MADV_DONTFORK)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))  # (the mapping stays exported: it is never closed)
    global _ROBUST_SHARED
    if _ROBUST_SHARED is None:
        _ROBUST_SHARED = _robust_shared_attr()
    _pthread_check(_libc.pthread_mutex_init(ctypes.c_void_p(base), _ROBUST_SHARED), "pthread_mutex_init")
    return area, base, (base + size - 64) & ~15


def _robust_shared_attr() -> ctypes.Array:
    attr = ctypes.create_string_buffer(64)
    _pthread_check(_libc.pthread_mutexattr_init(attr), "pthread_mutexattr_init")
    _pthread_check(_libc.pthread_mutexattr_setrobust(attr, 1), "pthread_mutexattr_setrobust")  # PTHREAD_MUTEX_ROBUST
    _pthread_check(_libc.pthread_mutexattr_setpshared(attr, 1), "pthread_mutexattr_setpshared")  # the kernel wakes shared futexes
    return attr


_ROBUST_SHARED: ctypes.Array | None = None  # the mutex attributes, made by the first JobInit


def _pthread_check(rc: int, what: str) -> None:
    if rc != 0:  # pthread functions return the error number
        raise OSError(rc, f"{what}: {os.strerror(rc)}")


def _bind(src: str, dst: str, flags: int = MS_RDONLY | MS_NOSUID | MS_NODEV) -> None:
    mount(src, dst, None, MS_BIND | MS_REC)
    mount(None, dst, None, MS_REMOUNT | MS_BIND | flags)


def _mkfile(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


def build_template(binds: list[str], hide: list[str]) -> None:
    """Move this process (the zygote) into its own mount namespace and pivot it into the jobs' root:
    `binds` read-only, `hide` masked, device nodes, empty /tmp and /proc to mount on per job,
    /var/tmp and /dev/shm pointing at /tmp, in a network namespace of its own (no interface up)
    that the jobs inherit. The host's other mounts are detached from it."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare mount+net")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    new = "/tmp"  # only the staging mount point, in this mount namespace; it becomes the root
    mount("ilf-root", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for src in binds:
        dst = new + src
        if os.path.islink(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
            _bind(src, dst)
    for path in hide:
        dst = new + path
        if os.path.lexists(dst) and not os.path.islink(dst):
            if os.path.isdir(dst):
                mount("ilf-hidden", dst, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0")
            else:
                _bind("/dev/null", dst)
    os.makedirs(new + "/dev", exist_ok=True)
    for dev in DEVICES:
        _mkfile(f"{new}/dev/{dev}")
        mount(f"/dev/{dev}", f"{new}/dev/{dev}", None, MS_BIND)
        mount(None, f"{new}/dev/{dev}", None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("shm", "/tmp")):
        os.symlink(target, f"{new}/dev/{name}")
    os.makedirs(new + "/var", exist_ok=True)
    os.symlink("/tmp", new + "/var/tmp")
    os.mkdir(new + "/tmp")
    os.mkdir(new + "/proc")
    mount(None, new, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(new)
    _pivot_root()


def _pivot_root() -> None:
    """pivot_root(".", "."), then detach the old root stacked under the new one."""
    nr = _SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(0, f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(nr, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


def confine_children() -> None:
    """Once, in the zygote: what every process forked from it (each job's init and program) inherits,
    and what none of them can undo: no new privileges through execve, an empty capability bounding set,
    refuse_clone_parent's seccomp filter, and SIGXFSZ at its default action (CPython ignores it; a write
    past the job's file-size limit must kill, which becomes output_limit). Each program process used to
    set these itself: that cost it ~0.2 ms of page faults a job (the ctypes and signal-module calls,
    measured)."""
    for cap in range(64):  # the zygote has CAP_SETPCAP (as root); it never execs, so it loses nothing
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    global _SETUID_DROPS_CAPABILITIES, CLONE_FILTER
    _SETUID_DROPS_CAPABILITIES = _libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0) == 0
    CLONE_FILTER = refuse_clone_parent()


CLONE_PARENT, CLONE_NEWUSER, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 0x8000, 0x10000000, 22, 2
# (AUDIT_ARCH, clone, clone3, unshare) of the architectures the filter knows; args[0]'s low word is at offset 16
_SECCOMP_ARCH = {"x86_64": (0xC000003E, 56, 435, 272), "aarch64": (0xC00000B7, 220, 435, 97)}
CLONE_FILTER = False  # whether this process (the zygote, and so each job) runs under refuse_clone_parent's filter


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def clone_filter_program(arch: str) -> bytes | None:
    """The seccomp BPF program of refuse_clone_parent for `arch` (None: not one it knows)."""
    if arch not in _SECCOMP_ARCH:
        return None
    audit, nr_clone, nr_clone3, nr_unshare = _SECCOMP_ARCH[arch]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ALLOW, RET_ERRNO | errno
    code = [(ld, 0, 0, 4),                                # 0: the calling convention's architecture
            (jeq, 0, 11, audit),                          # 1: another one (a 32-bit call): ENOSYS
            (ld, 0, 0, 0),                                # 2: the syscall number
            (jge, 9, 0, 0x40000000),                      # 3: x32 calls: ENOSYS
            (jeq, 8, 0, nr_clone3),                       # 4: clone3 (flags in memory a filter cannot read): ENOSYS
            (jeq, 1, 0, nr_clone),                        # 5: clone: its flags at 7
            (jeq, 2, 4, nr_unshare),                      # 6: unshare: its flags at 9; anything else: allowed
            (ld, 0, 0, 16),                               # 7: clone's flags (low word)
            (jset, 3, 2, CLONE_PARENT | CLONE_NEWUSER),   # 8: a sibling or a user namespace: EPERM
            (ld, 0, 0, 16),                               # 9: unshare's flags
            (jset, 1, 0, CLONE_NEWUSER),                  # 10: a user namespace: EPERM
            (ret, 0, 0, allow),                           # 11
            (ret, 0, 0, eperm),                           # 12
            (ret, 0, 0, enosys)]                          # 13
    return b"".join(struct.pack("=HBBI", *insn) for insn in code)


def refuse_clone_parent() -> bool:
    """Put this process and all it forks from now on under a seccomp filter that refuses clone with
    CLONE_PARENT (EPERM) and clone3 (ENOSYS: glibc then uses clone). A process made the sibling of its
    parent is a child of the zygote, outside the job's tree: its CPU time would go uncounted (a program
    could hand its work to one and pass past the CPU limit) and its corpse would stay with the zygote.
    It also refuses new user namespaces (clone, unshare): a job has no use for the capabilities one gives,
    only the kernel's surface to gain. Needs no-new-privileges; False (nothing installed) where the kernel
    or the architecture has none."""
    program = clone_filter_program(platform.machine())
    if program is None:
        return False
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    return _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0


class Confinement:
    """A job's program process's own sandbox steps and limits, worked out once in the zygote.

    Each job's process only makes the calls: every object it touches lies on a page it shares with
    the zygote, so each is a copy-on-write page fault (the generic wrappers, their string formatting
    and limit arithmetic cost a job ~100 faults, measured)."""

    def __init__(self, limits: dict[str, int], tmpfs_kb: int) -> None:
        mb = 1024 * 1024
        self.tmpfs = f"size={max(tmpfs_kb, 64)}k,mode=1777".encode()
        self.work_dir = WORK_DIR.encode()
        self.before_uid = ((resource.RLIMIT_CORE, (0, 0)), (resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2),
                           (resource.RLIMIT_FSIZE, (limits["output_kb"] * 1024,) * 2),
                           (resource.RLIMIT_NOFILE, (limits["open_files"],) * 2),
                           (resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1)),
                           (resource.RLIMIT_MSGQUEUE, (1 << 16,) * 2))
        self.processes = (limits["processes"],) * 2

    def enter_job_root(self, uid: int) -> None:
        """In a job's program process (pid 2 of its PID namespace, in the zygote's root and network namespace):
        death with the zygote, new mount and IPC namespaces, a private size-capped tmpfs on /tmp (WORK_DIR in
        it belongs to `uid`), a fresh /proc."""
        if _prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0:  # (confine sets it again where it matters)
            _fail("prctl")
        if _unshare(CLONE_NEWNS | CLONE_NEWIPC) != 0:
            _fail("unshare")
        if _mount(b"ilf-tmp", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, self.tmpfs) != 0:
            _fail("mount /tmp")
        os.mkdir(self.work_dir, 0o700)
        os.chown(self.work_dir, uid, uid)
        if _mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
            _fail("mount /proc")

    def confine(self, uid: int | None, pid_namespace: bool) -> None:
        """Own process group, rlimits, an unprivileged uid of its own (when root), no capabilities, death with the
        parent (the program process's last step as root; confine_children was done in the zygote)."""
        os.setpgid(0, 0)  # its own process group: kill(0, ...) reaches only the job (setsid also made a scheduler autogroup)
        setrlimit = resource.setrlimit
        for which, value in self.before_uid:
            setrlimit(which, value)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)  # from root to a uid that is not: the kernel clears every capability (no securebits)
        setrlimit(resource.RLIMIT_NPROC, self.processes)
        if uid is None or not _SETUID_DROPS_CAPABILITIES:
            drop_capabilities()
        if not pid_namespace and _prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0:  # in one, the init's death kills us
            _fail("prctl")  # (and setuid cleared this)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """No effective, permitted or inheritable capabilities left (a no-op for an unprivileged uid)."""
    _check(_libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), (_CapData * 2)()), "capset")


def python_dirs(sys_path: list[str], prefixes: list[str]) -> list[str]:
    """The directories on sys.path the program's imports need: the standard library and installed
    packages (under one of `prefixes`, or a site-/dist-packages dir), never a source tree or cwd."""
    roots = [os.path.realpath(p).rstrip("/") + "/" for p in prefixes]
    out = []
    for p in sys_path:
        if not p or not os.path.isdir(p):
            continue
        real = os.path.realpath(p)
        installed = "site-packages" in real.split("/") or "dist-packages" in real.split("/")
        if (installed or any((real + "/").startswith(r) for r in roots)) and real not in out:
            out.append(real)
    return out


def describe_isolation(namespaces: bool, uid: bool, reason: str = "", clone_filter: bool = False) -> str:
    """The isolation in force, as recorded in each result."""
    parts = [NAMESPACES if namespaces else f"no namespaces ({reason})" if reason else "no namespaces"]
    parts.append("own uid" if uid else "caller's uid, no capabilities")
    parts.append("rlimits (memory, processes, file size, CPU) + CPU-time timeout")
    if clone_filter:
        parts.append("seccomp: no clone(CLONE_PARENT), no clone3, no user namespaces")
    return "; ".join(parts)

