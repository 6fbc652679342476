"""Hostile and broken programs: each gets the right verdict, the executor survives, nothing is left behind."""

from __future__ import annotations

import os
import textwrap

import pytest

from ilf_jax.execute import Executor, Job
from ilf_jax.execute.worker import _descendants

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


def _jobs(kill_all: bool) -> list[Job]:
    jobs = [Job(name, textwrap.dedent(src).strip() + "\n", test_list=TESTS) for name, src, _ in CASES]
    jobs.append(Job("patched_approx", PATCHED_APPROX, test="from pytest import approx\n\ndef check(candidate):\n"
                    "\tassert candidate(1) == approx(2.5)\n", entry_point="f"))
    if kill_all:
        jobs.append(Job("kill_everything", "import os, signal\ndef f(x):\n    os.kill(-1, signal.SIGKILL)\n    return 0",
                        test_list=TESTS))
    return jobs


@pytest.fixture(scope="module")
def outcome():
    with Executor(workers=2, timeout=2.0, memory_mb=512) as ex:
        root = ex._root
        # kill(-1) is only harmless where the sandbox cannot reach this process (namespace or dropped uid).
        safe = ex.isolated or os.geteuid() == 0
        jobs = _jobs(kill_all=safe)
        results = {r.id: r for r in ex.run(jobs)}
        after = ex.run([Job("after", RIGHT, test_list=TESTS)])[0]
        isolated = ex.isolated
    return {"results": results, "jobs": jobs, "after": after, "root": root, "isolated": isolated}


def test_suite_size(outcome):
    assert len(outcome["results"]) == len(outcome["jobs"]) >= 30


@pytest.mark.parametrize("name,expected", [(n, e) for n, _, e in CASES])
def test_verdict(outcome, name, expected):
    r = outcome["results"][name]
    assert r.verdict in expected, r
    assert r.passed == (r.verdict == "passed")
    assert len(r.error) <= 2600


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


def test_timeouts_are_prompt(outcome):
    for name in ("busy_loop", "sleep", "fork_bomb", "c_regex_loop"):
        assert 1.9 <= outcome["results"][name].duration_s < 4.0, outcome["results"][name]
    assert outcome["results"]["endless_thread_right"].duration_s < 1.5


def test_executor_survives_and_cleans_up(outcome):
    assert outcome["after"].verdict == "passed"
    assert not os.path.exists(outcome["root"])
    assert _descendants(os.getpid()) == []
