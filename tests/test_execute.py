"""Executor API, determinism, worker replacement, the `ilf exec` CLI (real data: test_execute_real.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ilf_jax.execute import VERDICTS, Executor, Job
from ilf_jax.execute.worker import descendants

RIGHT = "def f(x):\n    return x + 1\n"


@pytest.fixture(scope="module")
def executor():
    with Executor(workers=2, timeout=3.0) as ex:  # CPU seconds: load on the shared cores does not matter
        yield ex


def test_failed_assert_names_call_expected_actual(executor):
    r = executor.run([Job("x", "def add_one(x):\n    return x\n",
                          test="def check(candidate):\n\tassert candidate(1) == 2, 'msg'\n", entry_point="add_one")])[0]
    assert r.verdict == "failed" and not r.passed
    assert "add_one(1) == 2\n  expected: 2\n  actual:   1" in r.error


def test_imap_streams_every_job_once(executor):
    jobs = [Job(str(i), RIGHT if i % 2 else "def f(x):\n    return x\n", test_list=("assert f(1) == 2",))
            for i in range(20)]
    got = list(executor.imap(jobs))
    assert sorted(int(r.id) for r in got) == list(range(20))
    assert {r.id for r in got if r.passed} == {str(i) for i in range(1, 20, 2)}


def test_deterministic_across_runs_and_worker_counts():
    prog = "import random\ndef f(x):\n    return (hash('abc'), hash(frozenset({'a', 'b', 'c'})), random.random())\n"
    jobs = [Job(str(i), prog, test_list=("assert f(1) == None",)) for i in range(6)]
    errors = set()
    for workers in (1, 3):
        with Executor(workers=workers, timeout=5) as ex:
            errors |= {r.error for r in ex.run(jobs)}
    assert len(errors) == 1 and "actual:" in errors.pop()


def _new_processes(before: set[int]) -> set[int]:
    """Descendants of this process that are not (below) one that existed before: what an executor left."""
    now = set(descendants(os.getpid())) - before
    return now - {d for p in before for d in descendants(p)}  # the module executor makes its next sandboxes


def test_dead_worker_is_replaced_and_nothing_is_left():
    before = set(descendants(os.getpid()))  # the module's executor
    with Executor(workers=1, timeout=5) as ex:
        ex._slots[0].proc.kill()  # the worker dies between jobs: the job still gets its verdict
        assert ex.run([Job("a", RIGHT, test_list=("assert f(1) == 2",))])[0].verdict == "passed"
    assert _new_processes(before) == set()


def test_result_records_times_and_isolation(executor):
    r = executor.run([Job("busy", "x = sum(range(3 * 10 ** 7))\n" + RIGHT, test_list=("assert f(1) == 2",))])[0]
    assert r.verdict == "passed" and 0.2 < r.cpu_s <= r.duration_s + 0.05
    assert r.isolation == executor.isolation and "rlimits" in r.isolation
    assert set(r.to_json()) == {"id", "verdict", "passed", "error", "duration_s", "cpu_s", "isolation"}
    assert "harness_error" in VERDICTS


BURN = ("import os\ndef burn():\n    x = 0\n    for i in range(2 * 10 ** 6):\n        x += i\n"  # ~0.1 s of CPU
        "r, w = os.pipe()\n")


@pytest.mark.parametrize("isolate", [True, False])
def test_cpu_time_counts_every_process_of_the_job(isolate):
    # each job (idle machine: ~0.1 s) ends before the supervisor's first look at its CPU time (0.25 s): only the
    # final figure counts the child's
    done = "    burn()\n    os.write(w, b'x')\n    os._exit(0)\n"
    waited = BURN + "pid = os.fork()\nif pid == 0:\n" + done + "os.waitpid(pid, 0)\n"
    zombie = BURN + "if os.fork() == 0:\n" + done + "os.read(r, 1)\n"  # exited, never reaped by the program
    orphan = BURN + ("if os.fork() == 0:\n    if os.fork() == 0:\n        burn()\n        os.write(w, b'x')\n"
                     "        os._exit(0)\n    os._exit(0)\nos.read(r, 1)\n")  # its parent gone: the init (or nobody) has it
    alone = BURN + "burn()\n"
    with Executor(workers=1, timeout=3.0, isolate=isolate) as ex:
        results = ex.run([Job(name, prog + RIGHT, test_list=("assert f(1) == 2",))
                          for name, prog in (("alone", alone), ("waited", waited), ("zombie", zombie),
                                             ("orphan", orphan))])
    assert [r.verdict for r in results] == ["passed"] * 4, results
    one = results[0].cpu_s
    assert one > 0.03, results[0]
    for r in results[1:]:  # the burning child's CPU counts whether reaped by the program, a zombie or an orphan
        assert r.cpu_s > 0.7 * one, (r, one)  # (a job slower than 0.25 s, on a loaded machine, is looked at
        # while it runs too: the check then holds either way)


def test_in_place_mutation_and_program_objects(executor):
    prog = ("def sort_in_place(xs):\n    xs.sort()\n\nclass Box:\n    def __init__(self, v):\n        self.v = v\n"
            "    def get(self):\n        return self.v\n\ndef unbox(b):\n    return b.v\n\ndef gen(n):\n"
            "    return (i for i in range(n))\n")
    tests = ("xs = [3, 1, 2]", "sort_in_place(xs)", "assert xs == [1, 2, 3]", "b = Box(4)", "b.v = 5",
             "assert unbox(b) == 5 and b.get() == 5 and b.v == 5")
    ok, bad = executor.run([Job("ok", prog, test_list=tests), Job("bad", prog, test_list=("assert list(gen(2)) == [0, 1]",))])
    assert ok.verdict == "passed", ok
    shadow = "def max(*a):\n    return 0\ndef f(x):\n    return x\n"  # the prefetch plan is wrong: run again without
    assert executor.run([Job("shadow", shadow, test_list=("assert max(1, 2) == 0", "assert f(3) == 3"))])[0].passed
    assert bad.verdict == "failed" and "gen returned a generator, not a plain value" in bad.error


def test_fallback_without_namespaces_is_recorded_and_still_judges():
    before = set(descendants(os.getpid()))
    with Executor(workers=1, timeout=2.0, isolate=False) as ex:
        ok, bad, gone = ex.run([Job("ok", RIGHT, test_list=("assert f(1) == 2",)),
                                Job("bad", "class A:\n    def __eq__(self, o):\n        return True\ndef f(x):\n"
                                    "    return A()\n", test_list=("assert f(1) == 2",)),
                                Job("gone", "import os, time\nif os.fork() == 0:\n    time.sleep(100)\nos._exit(3)\n",
                                    test_list=("assert f(1) == 2",))])
    assert not ex.isolated and ex.isolation.startswith("no namespaces (isolation turned off)")
    assert (ok.verdict, bad.verdict, gone.verdict) == ("passed", "failed", "error"), (ok, bad, gone)
    assert ok.isolation == ex.isolation and "status 3" in gone.error
    assert _new_processes(before) == set()  # the forked sleeper went with its job


def test_job_needs_tests():
    with pytest.raises(ValueError):
        Job("x", "pass")
    with pytest.raises(ValueError):
        Job("x", "pass", test="def check(c): pass")


def _ilf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ilf_jax.cli", "exec", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_writes_results_and_resumes(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    recs = [{"id": "a", "program": RIGHT, "test_list": ["assert f(1) == 2"]},
            {"id": "b", "program": "def f(x):\n    return x\n", "test": "def check(candidate):\n\tassert candidate(1) == 2",
             "entry_point": "f"},
            {"id": "c", "program": "import sys\nsys.exit(0)\n", "test_list": ["assert f(1) == 2"],
             "test_setup_code": "import math"}]
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out.write_text(json.dumps({"id": "a", "verdict": "passed", "passed": True, "error": "", "duration_s": 0.0}) + "\n")
    out.chmod(0o644)
    proc = _ilf(str(inp), "-o", str(out), "--timeout", "2", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows][0] == "a" and sorted(r["id"] for r in rows) == ["a", "b", "c"]
    by_id = {r["id"]: r for r in rows}
    assert (by_id["b"]["verdict"], by_id["c"]["verdict"]) == ("failed", "error")
    assert set(by_id["b"]) == {"id", "verdict", "passed", "error", "duration_s", "cpu_s", "isolation"}
    assert out.stat().st_mode & 0o777 == 0o600
    assert _ilf(str(inp), "-o", str(out)).returncode == 0
    assert len(out.read_text().splitlines()) == 3  # nothing rerun


def test_cli_input_and_output_are_out_of_the_sandboxes_reach(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    probe = f"import os\nseen = [p for p in ({str(inp)!r}, {str(out)!r}, {str(tmp_path)!r}) if os.path.exists(p)]\n"
    inp.write_text(json.dumps({"id": "p", "program": probe + RIGHT.replace("x + 1", "x + 1 + len(seen)"),
                               "test_list": ["assert f(1) == 2"]}) + "\n")
    assert _ilf(str(inp), "-o", str(out)).returncode == 0
    row = json.loads(out.read_text())
    if not row["isolation"].startswith("mount+pid"):
        pytest.skip("no namespaces on this kernel: " + row["isolation"])
    assert row["verdict"] == "passed", row


def test_cli_bad_input_is_one_line_error(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "program": "x"}) + "\n")
    proc = _ilf(str(inp), "-o", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "line 1" in proc.stderr and "test" in proc.stderr


def _ours(marker: str) -> list[int]:
    """Processes of an `ilf exec` run (workers, zygotes, sandboxes: all carry its config, with `marker`)."""
    out = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and marker.encode() in open(f"/proc/{name}/cmdline", "rb").read():
                out.append(int(name))
        except OSError:
            continue
    return out


def _ipc() -> list[str]:
    return sorted(ln for k in ("shm", "msg", "sem") for ln in open(f"/proc/sysvipc/{k}").read().splitlines()[1:])


def test_sigkill_of_ilf_exec_mid_batch_leaves_nothing_and_resumes(tmp_path):
    import signal
    import time

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    slow = "import ctypes, time\nlibc = ctypes.CDLL(None)\nlibc.shmget(0, 4096, 0o1600)\ntime.sleep(0.4)\n" + RIGHT
    inp.write_text("".join(json.dumps({"id": str(i), "program": slow, "test_list": ["assert f(1) == 2"]}) + "\n"
                           for i in range(30)))
    ipc, mounts = _ipc(), open("/proc/self/mountinfo").read()
    temp = tmp_path / "tmp"  # the run's own TMPDIR: anything it leaves there is visible
    temp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "ilf_jax.cli", "exec", str(inp), "-o", str(out), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(temp)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.05)
    assert _ours(str(inp)), "the batch was not running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(out.read_text().splitlines())
    assert 3 <= done < 30
    deadline = time.monotonic() + 30
    while _ours(str(inp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ours(str(inp)) == []
    assert _ipc() == ipc and open("/proc/self/mountinfo").read() == mounts
    assert list(temp.iterdir()) == []
    assert _ilf(str(inp), "-o", str(out), "--workers", "2").returncode == 0  # resumes: every id answered once
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(int(r["id"]) for r in rows) == list(range(30)) and all(r["verdict"] == "passed" for r in rows)


def test_jobs_sharing_a_network_namespace_never_meet():
    # A worker's jobs share its empty network namespace, one at a time: an abstract unix socket that a
    # job left bound there (held by a child it forked) is gone before the next job's program runs.
    hold = ("import os, socket, time\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "s.bind('\\0ilf-meet')\ns.listen(1)\nif os.fork() == 0:\n    time.sleep(60)\n"
            "def f():\n    return 1\n")
    probe = ("import socket\ndef f():\n    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n    try:\n"
             "        c.connect('\\0ilf-meet')\n    except OSError:\n        return 'alone'\n    return 'met'\n")
    with Executor(workers=1, timeout=3.0, lanes=1) as ex:
        if not ex.isolated:
            pytest.skip("no namespaces on this kernel: " + ex.isolation)
        got = ex.run([Job("hold", hold, test_list=("assert f() == 1",)),
                      Job("probe", probe, test_list=("assert f() == 'alone'",)),
                      Job("probe_sees_a_live_socket", hold.replace("def f():\n    return 1\n", probe),
                          test_list=("assert f() == 'met'",))])
    assert [r.verdict for r in got] == ["passed", "passed", "passed"], got


def _ppid(pid: int) -> int:
    try:
        return int(open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def test_sigkill_of_a_zygote_ends_every_job_init_and_program(tmp_path):
    # Each job's init (pid 1 of its namespace) is a clone blocked on a robust mutex its zygote holds: however
    # the zygote dies, the kernel wakes every init, and each namespace ends with everything in it.
    import signal
    import threading
    import time

    marker = str(tmp_path / "marker")  # carried in the config, so in every process the worker starts
    sleeper = "import time\ntime.sleep(3)\n" + RIGHT
    with Executor(workers=1, timeout=3.0, hide=(marker,)) as ex:
        if not ex.isolated:
            pytest.skip("no namespaces on this kernel: " + ex.isolation)
        worker = ex._slots[0].proc.pid
        got: list = []
        runner = threading.Thread(target=lambda: got.extend(ex.run([Job("s", sleeper, test_list=("assert f(1) == 2",))])))
        runner.start()
        deadline = time.monotonic() + 30
        while len(_ours(marker)) < 5 and time.monotonic() < deadline:  # worker, zygote, 2 inits, the program
            time.sleep(0.02)
        zygote = [p for p in _ours(marker) if _ppid(p) == worker]
        assert len(zygote) == 1, zygote
        jobs = [p for p in _ours(marker) if _ppid(p) == zygote[0]]  # the inits (the spare's too) and the program
        assert len(jobs) >= 3, jobs
        os.kill(zygote[0], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while set(jobs) & set(_ours(marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not set(jobs) & set(_ours(marker))
        runner.join()
    assert len(got) == 1 and not got[0].passed, got


def test_signals_to_the_job_init_change_nothing():
    # The init has no signal handlers, so as its namespace's init it ignores whatever the job sends it; the
    # next job's fatal-error report (faulthandler, installed in the zygote the init shares memory with) still works.
    signals = "import os, signal\nfor s in (11, 6, 7, 4, 8, 15, 2, 10, 1, 14):\n    try:\n        os.kill(1, s)\n" \
              "    except PermissionError:\n        pass\n"
    segfault = "import ctypes\nctypes.string_at(0)\n" + RIGHT
    with Executor(workers=1, timeout=3.0) as ex:
        if not ex.isolated:
            pytest.skip("no namespaces on this kernel: " + ex.isolation)
        got = ex.run([Job("signals", signals + RIGHT, test_list=("assert f(1) == 2",)),
                      Job("segfault", segfault, test_list=("assert f(1) == 2",))])
    assert got[0].verdict == "passed", got[0]
    assert got[1].verdict == "crash" and "SIGSEGV" in got[1].error, got[1]
    assert " line " in got[1].error.split("\nstderr: ", 1)[1], got[1]  # the traceback faulthandler wrote


APPROX_TESTS = ("from pytest import approx\nassert f(0.1) == approx(1.1)",
                "import pytest\nassert [f(0.2)] == pytest.approx([1.2])",
                "import pytest\nwith pytest.raises(TypeError):\n    f('x')")


@pytest.mark.parametrize("isolate", [True, False])
def test_tests_get_pytest_approx_and_the_rest_of_pytest(isolate):
    with Executor(workers=1, timeout=3.0, isolate=isolate) as ex:
        right, wrong = ex.run([Job("r", RIGHT, test_list=APPROX_TESTS),
                               Job("w", "def f(x):\n    return x + 1.01\n", test_list=APPROX_TESTS)])
    assert (right.verdict, wrong.verdict) == ("passed", "failed"), (right, wrong)
    assert "approx(1.1" in wrong.error


def test_judge_pytest_front_imports_only_approx_until_asked():
    code = ("import sys\nfrom ilf_jax.execute import pytest_module\npytest_module.install()\n"
            "from pytest import approx\nimport pytest\nassert 0.1 + 0.2 == approx(0.3) and pytest.approx is approx\n"
            "print('pytest.main' in sys.modules or '_pytest.main' in sys.modules)\n"
            "raises = pytest.raises\nprint('_pytest.main' in sys.modules, sys.modules['pytest'].approx is approx)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"], out


def test_judge_pytest_front_without_approx_homes_takes_the_whole_of_pytest():
    code = ("import sys\nfrom ilf_jax.execute import pytest_module\npytest_module.install()\n"
            "pytest_module._APPROX_HOMES = ('no_such_home',)  # a pytest that keeps approx elsewhere\n"
            "from pytest import approx\nassert 0.1 + 0.2 == approx(0.3)\n"
            "print(sys.modules['pytest'].__file__ is not None, sys.modules['pytest'].approx is approx)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr[-500:]
