"""Hostile and broken programs: each gets the right verdict, the executor survives, nothing is left behind.

Every class of attack from issue 11 has cases here: objects and builtin subclasses whose `__eq__` is
always true (also against `approx`), reading or forging the harness's channel, tracers / audit hooks /
signal handlers / threads that outlive the call, patching `approx`, `math.isclose` and builtins,
hunting for the tests' expected values, files / IPC objects / processes left behind, reaching the
CLI's files, the host or other jobs, deep results and trees, odd signals, and the limits.
"""

from __future__ import annotations

import glob
import os
import tempfile
import textwrap

import pytest

from ilf_jax.execute import Executor, Job
from ilf_jax.execute.worker import descendants

D = textwrap.dedent
WRONG = "def f(x):\n    return 0\n"  # the tests want f(1) == 2: a pass would be forged
RIGHT = "def f(x):\n    return x + 1\n"
TESTS = ("assert f(1) == 2", "assert f(2) == 3")
CHECK = "def check(candidate):\n\tassert candidate(1) == 2\n"

# (name, program, expected verdicts) — the program text is dedented.
CASES = [
    ("busy_loop", "while True: pass", {"timeout"}),
    ("c_regex_loop", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')", {"timeout"}),
    ("signals_ignored_loop", D("""
        import signal
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True: pass"""), {"timeout"}),
    ("c_pause_signals_ignored", D("""
        import ctypes, signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ctypes.CDLL(None).pause()"""), {"timeout"}),
    ("sleep", "import time\ntime.sleep(100)", {"timeout"}),
    ("stop_self", "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", {"timeout"}),
    ("memory_list", "x = [0] * (10 ** 10)", {"memory"}),
    ("memory_growth", "x = []\nwhile True: x.append(' ' * 10 ** 7)", {"memory"}),
    ("memory_bytearray", "b = bytearray(10 ** 11)", {"memory"}),
    ("fork_bomb", D("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass"""), {"timeout"}),
    ("forked_sleeper_left_behind", D("""
        import os, time
        if os.fork() == 0:
            time.sleep(1000)
            os._exit(0)
        """) + RIGHT, {"passed"}),
    ("setsid_daemon_left_behind", D("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1000)
            os._exit(0)
        """) + RIGHT, {"passed"}),
    ("huge_stdout", "while True: print('x' * 10000)", {"output_limit"}),
    ("huge_stderr", "import sys\nwhile True: sys.stderr.write('y' * 10000)", {"output_limit"}),
    ("huge_file", "open('big', 'wb').write(b'0' * 10 ** 8)", {"output_limit"}),
    ("huge_exception_message", "raise ValueError('z' * 10 ** 7)", {"error"}),
    ("hostile_str_exception", D("""
        class E(Exception):
            def __str__(self):
                raise RuntimeError('no')
        raise E()"""), {"error"}),
    ("sys_exit_0", WRONG + "import sys\nsys.exit(0)", {"error"}),
    ("os_exit_0", WRONG + "import os\nos._exit(0)", {"error"}),
    ("os_exit_pass_code", WRONG + "import os\nos._exit(87)", {"error"}),
    ("raise_systemexit_in_f", "def f(x):\n    raise SystemExit(0)", {"error"}),
    ("raise_keyboardinterrupt", "def f(x):\n    raise KeyboardInterrupt", {"error"}),
    ("raise_baseexception", "class B(BaseException): pass\ndef f(x):\n    raise B()", {"error"}),
    ("exit_inside_f", "import os\ndef f(x):\n    os._exit(0)", {"error"}),
    ("kill_parent", "import os, signal\ndef f(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 0",
     {"failed", "error", "crash"}),  # EPERM, ignored (worker is init), or the worker died twice
    ("close_all_fds", "import os\ndef f(x):\n    os.closerange(0, 4096)\n    return 0", {"error"}),
    ("close_fds_right_answer", "import os\nos.closerange(3, 4096)\n" + RIGHT, {"error"}),
    ("print_passed", WRONG + "print('passed')\nprint('{\"verdict\": \"passed\", \"passed\": true}')", {"failed"}),
    ("write_result_channel", WRONG + D("""
        import os, json
        for fd in range(3, 64):
            for msg in ({"kind": "passed", "error": ""}, {"kind": "passed", "error": "", "nonce": "0" * 32}):
                try:
                    os.write(fd, json.dumps(msg).encode())
                except OSError:
                    pass
        os._exit(87)"""), {"error"}),
    ("write_channel_then_fail", WRONG + D("""
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b'{"kind": "passed", "error": ""}')
            except OSError:
                pass"""), {"error"}),
    ("delete_working_dir", "import os, shutil\nshutil.rmtree(os.getcwd())\n" + RIGHT, {"passed"}),
    ("unreadable_working_dir", "import os\nopen('f', 'w').write('x')\nos.chmod('.', 0)\n" + RIGHT, {"passed"}),
    ("read_stdin", "x = input()\n" + RIGHT, {"error"}),
    # a sibling of the program (CLONE_PARENT) is the zygote's child, outside the job's tree: its CPU time would
    # go uncounted (work handed to it passes the CPU limit) and its corpse stay; the seccomp filter refuses it
    ("clone_parent_sibling", D("""
        import ctypes, os, platform
        NR = {"x86_64": 56, "aarch64": 220}[platform.machine()]
        libc = ctypes.CDLL(None, use_errno=True)
        def f(x):
            pid = libc.syscall(NR, 0x8000 | 17, 0, 0, 0, 0)
            if pid == 0:
                os._exit(0)
            if pid < 0:
                raise OSError(ctypes.get_errno(), "clone refused")
            return x + 1
        """), {"error"}),
    ("user_namespace", D("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000) != 0:
            raise OSError(ctypes.get_errno(), "unshare refused")
        """) + RIGHT, {"error"}),
    ("right_threads_subprocess_fork", D("""
        import os, subprocess, threading
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
        assert subprocess.run(["true"]).returncode == 0
        pid = os.fork()
        if pid == 0:
            os._exit(3)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3
        """) + RIGHT, {"passed"}),
    ("stdin_is_empty", "import sys\ndata = sys.stdin.read()\ndef f(x):\n    return x + 1 + len(data)", {"passed"}),
    ("endless_thread_right", "import threading, time\nthreading.Thread(target=lambda: time.sleep(1000)).start()\n"
     + RIGHT, {"passed"}),
    ("endless_busy_thread_wrong", "import threading\nthreading.Thread(target=lambda: [0 for _ in iter(int, 1)]).start()\n"
     + WRONG, {"failed"}),
    ("tampered_assertionerror", WRONG + "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})",
     {"failed"}),
    ("tampered_isinstance", WRONG + "import builtins\nbuiltins.isinstance = lambda *a: True", {"failed"}),
    ("cleared_builtins", WRONG + "import builtins\nbuiltins.__dict__.clear()", {"failed"}),
    ("replaced_module_builtins", WRONG + "__builtins__ = {}", {"failed"}),
    # a right program that breaks builtins the program process's own loop uses, at load and in every call
    ("right_breaks_builtins", D("""
        import builtins
        builtins.type = builtins.len = builtins.isinstance = lambda *a: 0
        def f(x):
            builtins.type = builtins.list = builtins.id = lambda *a: None
            del builtins.len
            return x + 1
        """), {"passed"}),
    ("right_clears_builtins", D("""
        import builtins
        def f(x, _clear=builtins.__dict__.clear):
            _clear()
            return x + 1
        """), {"passed"}),
    ("patched_os_exit", WRONG + "import os\nos._exit = lambda code: None\nos.write = lambda *a: 0", {"failed"}),
    ("segfault_ctypes", "import ctypes\nctypes.string_at(0)", {"crash"}),
    ("abort", "import os\nos.abort()", {"crash"}),
    ("kill_self", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", {"crash"}),
    ("network", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n" + RIGHT, {"error"}),
    ("too_many_files", "import os\nfs = [open(os.devnull) for _ in range(100000)]", {"error"}),
    ("infinite_recursion", "def f(x):\n    return f(x)", {"error"}),
    ("syntax_error", "def f(x)\n    return x", {"syntax_error"}),
    ("null_byte", "def f(x):\n    return 2\x00", {"syntax_error"}),
    ("unclosed_string", 'def f(x):\n    """never closed\n', {"syntax_error"}),
    # the verdict is decided by code the program never ran: no forged equality, channel or hook helps
    ("always_equal_object", "class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
     "def f(x):\n    return A()", {"failed"}),
    ("int_subclass_always_equal", "class I(int):\n    def __eq__(self, o):\n        return True\n"
     "    __hash__ = int.__hash__\ndef f(x):\n    return I(0)", {"failed"}),
    ("str_subclass_always_equal", "class S(str):\n    def __eq__(self, o):\n        return True\n"
     "    __hash__ = str.__hash__\ndef f(x):\n    return S('')", {"failed"}),
    ("forged_reply_frames", WRONG + D("""
        import json, os, struct
        def frame(m):
            d = json.dumps(m).encode()
            return b'\\xa5' + struct.pack('>I', len(d)) + d
        os.write(4, frame(['loaded', []]) + frame(['ok', [2]]) * 8)"""), {"error", "failed"}),
    ("read_inherited_fds", D("""
        import os
        def f(x):
            seen = []
            for fd in range(64):
                try:
                    os.set_blocking(fd, False)
                    seen.append(os.read(fd, 65536))
                except OSError:
                    pass
            return repr(seen)"""), {"failed"}),
    ("tracer_audit_hook_signal_thread", WRONG + D("""
        import signal, sys, threading
        sys.settrace(lambda *a: None)
        sys.addaudithook(lambda *a: None)
        signal.signal(signal.SIGALRM, lambda *a: None)
        signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
        box = [0]
        def spin():
            while True:
                box[0] += 1
        threading.Thread(target=spin, daemon=True).start()"""), {"failed"}),
    ("patched_isclose_builtins_pytest", WRONG + D("""
        import builtins, math
        math.isclose = lambda *a, **k: True
        builtins.AssertionError = type('Never', (Exception,), {})
        builtins.abs = lambda x: 0
        try:
            import pytest
            pytest.approx = lambda *a, **k: 0
        except ImportError:
            pass"""), {"failed"}),
    ("hunt_expected_values", D("""
        import gc, linecache, sys
        def f(x):
            found = [k for k in linecache.cache if 'test' in str(k)]
            frame = sys._getframe()
            while frame is not None:
                found += [k for k, v in frame.f_globals.items() if isinstance(v, str) and 'assert' in v]
                frame = frame.f_back
            found += [o for o in gc.get_objects() if isinstance(o, str) and '== 3' in o]
            return found"""), {"failed"}),
    ("deep_result", "def f(x):\n    r = []\n    for _ in range(100000):\n        r = [r]\n    return r", {"failed"}),
    ("huge_result", "def f(x):\n    return 'x' * (80 << 20)", {"output_limit"}),
    ("unknown_signal", "import os\nos.kill(os.getpid(), 40)", {"crash"}),
    ("setuid_root", "import os\nos.setuid(0)", {"error"}),
    ("write_readonly_root", "open('/usr/ilf_hostile', 'w')", {"error"}),
    ("deep_dir_tree_fifo_symlink", D("""
        import os
        os.mkfifo('fifo')
        os.symlink('/etc/shadow', 'stderr')
        for _ in range(3000):
            os.mkdir('d')
            os.chdir('d')
        """) + RIGHT, {"passed"}),
]
MARK = f"ilf_hostile_{os.getpid()}"
# side effects that must not reach the host: files in the shared temporary dirs, IPC objects
LEAVE_FILES = D(f"""
    for d in ('/tmp', '/var/tmp', '/dev/shm'):
        open(d + '/{MARK}', 'w').write('left behind')
    """)
LEAVE_IPC = D("""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for key in range(1, 4):
        assert libc.shmget(0x11F0000 + key, 4096, 0o1666) >= 0
        assert libc.msgget(0x11F0000 + key, 0o1666) >= 0
        assert libc.semget(0x11F0000 + key, 1, 0o1666) >= 0
    """)
# what a job sees of the host where namespaces are in force: only itself (init + program), no other job
ISOLATED_CASES = [
    ("leave_files", LEAVE_FILES + RIGHT, {"passed"}),
    ("leave_ipc", LEAVE_IPC + RIGHT, {"passed"}),
    ("kill_init", "import os, signal\ntry:\n    os.kill(1, signal.SIGKILL)\nexcept PermissionError:\n    pass\n"
     + RIGHT, {"passed"}),
    ("sees_only_itself", "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
     "assert len(pids) <= 2, pids\n" + RIGHT, {"passed"}),
    ("finds_no_other_job", "import os\nassert not os.listdir('/tmp/work') and not os.path.exists('/tmp/" + MARK
     + "')\n" + RIGHT, {"passed"}),
    ("reads_no_source_tree", f"import os\nassert not os.path.exists({__file__!r})\n" + RIGHT, {"passed"}),
    ("no_network_interfaces", "import socket\nassert [n for _, n in socket.if_nameindex()] in ([], ['lo'])\n" + RIGHT,
     {"passed"}),
]
PATCHED_APPROX = """
import pytest
class Always:
    def __eq__(self, other):
        return True
pytest.approx = lambda *a, **k: Always()
def f(x):
    return -1.0
"""


FLOAT_ALWAYS_EQUAL = """
class F(float):
    def __eq__(self, other):
        return True
    __hash__ = float.__hash__
    def __sub__(self, other):
        return 0.0
    __rsub__ = __sub__
def f(x):
    return F(-1.0)
"""


def _jobs(kill_all: bool, isolated: bool) -> list[Job]:
    cases = CASES + (ISOLATED_CASES if isolated else [])
    jobs = [Job(name, textwrap.dedent(src).strip() + "\n", test_list=TESTS) for name, src, _ in cases]
    approx_test = "from pytest import approx\n\ndef check(candidate):\n\tassert candidate(1) == approx(2.5)\n"
    jobs.append(Job("patched_approx", PATCHED_APPROX, test=approx_test, entry_point="f"))
    jobs.append(Job("float_subclass_vs_approx", FLOAT_ALWAYS_EQUAL, test=approx_test, entry_point="f"))
    jobs.append(Job("patched_isclose", WRONG + "import math\nmath.isclose = lambda *a, **k: True\n",
                    test_list=("assert math.isclose(f(1), 2.0)",)))
    jobs.append(Job("tests_pass_a_function", RIGHT, test_list=("assert f(lambda y: y) == 2",)))
    if kill_all:
        jobs.append(Job("kill_everything", "import os, signal\ndef f(x):\n    os.kill(-1, signal.SIGKILL)\n    return 0",
                        test_list=TESTS))
    return jobs


def _ipc_objects() -> list[str]:
    return sorted(line for kind in ("shm", "msg", "sem") for line in open(f"/proc/sysvipc/{kind}").read().splitlines()[1:])


def _sandbox_processes() -> list[int]:
    """Processes running as a job's own uid (>= 2**20) anywhere on the host."""
    out = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.stat(f"/proc/{name}").st_uid >= 1 << 20:
                out.append(int(name))
        except OSError:
            continue
    return out


@pytest.fixture(scope="module")
def outcome():
    ipc_before, tmp_before = _ipc_objects(), set(glob.glob(os.path.join(tempfile.gettempdir(), "ilf-exec-*")))
    # Processes this test process already had (e.g. multiprocessing's resource tracker from earlier tests).
    procs_before = set(descendants(os.getpid()))
    with Executor(workers=2, timeout=2.0, wall_timeout=8.0, memory_mb=512) as ex:
        # kill(-1) is only harmless where the sandbox cannot reach this process (namespace or dropped uid).
        safe = ex.isolated or os.geteuid() == 0
        jobs = _jobs(kill_all=safe, isolated=ex.isolated)
        results = {r.id: r for r in ex.run(jobs)}
        after = ex.run([Job("after", RIGHT, test_list=TESTS)])[0]
        isolated = ex.isolated
    return {"results": results, "jobs": jobs, "after": after, "isolated": isolated, "ipc_before": ipc_before,
            "procs_before": procs_before, "ipc_after": _ipc_objects(),
            "tmp_left": set(glob.glob(os.path.join(tempfile.gettempdir(), "ilf-exec-*"))) - tmp_before}


def test_suite_size(outcome):
    assert len(outcome["results"]) == len(outcome["jobs"]) >= 60 if outcome["isolated"] else 50


@pytest.mark.parametrize("name,expected", [(n, e) for n, _, e in CASES])
def test_verdict(outcome, name, expected):
    r = outcome["results"][name]
    assert r.verdict in expected, r
    assert r.passed == (r.verdict == "passed")
    assert len(r.error) <= 2600


@pytest.mark.parametrize("name,expected", [(n, e) for n, _, e in ISOLATED_CASES])
def test_isolated_verdict(outcome, name, expected):
    if not outcome["isolated"]:
        pytest.skip("namespaces are not available on this kernel: the fallback is recorded, not this isolation")
    assert outcome["results"][name].verdict in expected, outcome["results"][name]


def test_no_side_effect_reaches_the_host(outcome):
    assert not [p for d in ("/tmp", "/var/tmp", "/dev/shm") for p in glob.glob(f"{d}/{MARK}")]
    assert not os.path.exists("/usr/ilf_hostile")
    if outcome["isolated"]:
        assert outcome["ipc_after"] == outcome["ipc_before"]
    assert _sandbox_processes() == []
    assert outcome["tmp_left"] == set()


def test_forged_equality_and_channel_fail_with_clear_text(outcome):
    res = outcome["results"]
    assert "f returned a A, not a plain value" in res["always_equal_object"].error
    assert "returned a I, not a plain value" in res["int_subclass_always_equal"].error
    assert "returned a F, not a plain value" in res["float_subclass_vs_approx"].error
    assert res["float_subclass_vs_approx"].verdict == "failed"
    assert res["patched_isclose"].verdict == "failed"
    assert res["tests_pass_a_function"].verdict == "harness_error" and "function" in res["tests_pass_a_function"].error
    leaked = res["read_inherited_fds"].error + res["hunt_expected_values"].error
    assert "== 3" not in leaked.replace("f(2) == 3", "") and "assert" not in leaked.split("expected:")[-1]
    assert "signal 40" in res["unknown_signal"].error
    assert "nested deeper" in res["deep_result"].error


def test_patched_approx_is_restored(outcome):
    r = outcome["results"]["patched_approx"]
    assert r.verdict == "failed", r
    assert "expected" in r.error and "actual:   -1.0" in r.error


def test_kill_everything(outcome):
    r = outcome["results"].get("kill_everything")
    if r is None:
        pytest.skip("kill(-1) would reach this process without isolation")
    assert r.verdict in {"crash", "failed", "error"} and not r.passed


def test_error_text_is_useful(outcome):
    res = outcome["results"]
    assert "Timeout" in res["busy_loop"].error
    assert res["huge_exception_message"].error.startswith("while running the program")
    assert "ValueError: zzz" in res["huge_exception_message"].error
    assert "SystemExit: 0" in res["sys_exit_0"].error
    assert "SIGSEGV" in res["segfault_ctypes"].error
    assert "f(1) == 2" in res["print_passed"].error and "actual:   0" in res["print_passed"].error
    assert "RecursionError" in res["infinite_recursion"].error
    assert "clone refused" in res["clone_parent_sibling"].error and "seccomp" in res["clone_parent_sibling"].isolation
    assert "unshare refused" in res["user_namespace"].error


def test_timeouts_are_prompt(outcome):
    for name in ("busy_loop", "c_regex_loop", "signals_ignored_loop"):  # CPU time: the primary limit
        r = outcome["results"][name]
        assert 2.0 < r.cpu_s < 2.6 and "longer than 2 s" in r.error and r.duration_s < 8.0, r
    for name in ("sleep", "stop_self", "c_pause_signals_ignored"):  # no CPU used: the wall-clock backstop
        r = outcome["results"][name]
        assert 7.9 <= r.duration_s < 9.5 and r.cpu_s < 0.5 and "8 s of wall-clock time" in r.error, r
    assert outcome["results"]["endless_thread_right"].duration_s < 1.5


def test_executor_survives_and_cleans_up(outcome):
    assert outcome["after"].verdict == "passed"
    assert set(descendants(os.getpid())) <= outcome["procs_before"]
