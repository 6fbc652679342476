"""The annotation app's API (Starlette test client), store, export and safety, on real ILF rows."""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from annotate_case import REPO, server, surge_rows, write_queue  # noqa: E402
from ilf_jax.annotate.app import Settings, create_app  # noqa: E402
from ilf_jax.annotate.checks import with_errors  # noqa: E402
from ilf_jax.annotate.items import load_items  # noqa: E402
from ilf_jax.annotate.store import Annotator, Conflict, Store  # noqa: E402
from ilf_jax.annotate.workspace import workspace_for  # noqa: E402
from ilf_jax.data.annotations import keep_annotation, levenshtein, load_annotations  # noqa: E402
from ilf_jax.errors import IlfError  # noqa: E402

IDS = [15, 26, 125, 641, 268]  # two MBPP_Test tasks (leakage guard), one refine, two train


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def rows(shared_data):
    return surge_rows(shared_data, IDS)


def _open(tmp_path, rows, clock=None, lease_s=600.0):
    queue = write_queue(tmp_path / "failing.jsonl", rows)
    ws = workspace_for(queue)
    store = Store(ws.database, lease_s=lease_s, **({"clock": clock} if clock else {}))
    store.sync_items(with_errors(load_items(queue), 1, 3.0))
    return ws, store


def _client(store, ws, settings=Settings()):
    return TestClient(create_app(store, ws, settings), base_url="http://127.0.0.1:8765")


def _csrf(client, **kw):
    return {"X-CSRF-Token": client.get("/api/session", **kw).json()["csrf"], **kw.get("headers", {})}


def test_queue_lease_save_history_export_roundtrip(tmp_path, rows):
    clock = Clock()
    ws, store = _open(tmp_path, rows, clock)
    tokens = {name: store.add_annotator(name) for name in ("alice", "bob", "carol")}
    auth = {name: {"Authorization": f"Bearer {t}"} for name, t in tokens.items()}
    with _client(store, ws) as c:
        h = {name: {**a, "X-CSRF-Token": c.get("/api/session", headers=a).json()["csrf"]} for name, a in auth.items()}
        queue = c.get("/api/queue", headers=h["alice"]).json()
        assert [q["task_id"] for q in queue["items"]] == IDS and queue["progress"]["total"] == 5
        a_item = c.post("/api/next", json={}, headers=h["alice"]).json()["item"]
        b_item = c.post("/api/next", json={}, headers=h["bob"]).json()["item"]
        assert (a_item["task_id"], b_item["task_id"]) == (15, 26)  # queue order, never the same item
        assert (a_item["split"], b_item["split"]) == ("test", "test")  # shown: the export's guard drops these
        assert a_item["refinement"] == a_item["program"] == rows[15]["original_model_completion"]
        assert "Error" in a_item["error"] or "assert" in a_item["error"]  # the executor's text, computed here
        # a held lease is returned again (a reload), and nobody else can take or save it
        assert c.post("/api/next", json={}, headers=h["alice"]).json()["item"]["task_id"] == 15
        r = c.post("/api/items/15/claim", json={}, headers=h["bob"])
        assert r.status_code == 409 and "alice" in r.json()["error"]
        body = {"feedback": "f", "refinement": rows[15]["unedited_annotator_completion"], "base_version": 0,
                "status": "saved"}
        assert c.post("/api/items/15/save", json=body, headers=h["bob"]).status_code == 409

        # Run tests: the failing program fails, the annotator's refinement passes; filter shown
        run = c.post("/api/items/15/run", json={"refinement": a_item["program"]}, headers=h["alice"]).json()
        assert not run["passed"] and run["verdict"] != "passed" and run["error"]
        assert run["filter"] == {"distance": 0, "limit": len(a_item["program"]) / 2, "small_edit": True,
                                 "passed": False, "kept": False}
        good = rows[15]["unedited_annotator_completion"]
        run = c.post("/api/items/15/run", json={"refinement": good}, headers=h["alice"]).json()
        d = levenshtein(good, a_item["program"])
        assert run["passed"] and run["filter"]["distance"] == d
        assert run["filter"]["kept"] == keep_annotation(good, a_item["program"], True)
        live = c.post("/api/items/15/filter", json={"refinement": good}, headers=h["alice"]).json()["filter"]
        assert live == run["filter"]  # the same text's verdict is remembered for the live filter

        # save twice: history keeps both; a stale base version is refused
        v1 = c.post("/api/items/15/save", json={**body, "refinement": a_item["program"], "feedback": "first try"},
                    headers=h["alice"]).json()
        assert v1["version"] == 1 and v1["verdict"] != "passed"
        v2 = c.post("/api/items/15/save", json={**body, "base_version": 1, "feedback": rows[15]["Feedback"]},
                    headers=h["alice"]).json()
        assert v2["version"] == 2 and v2["passed"] and v2["progress"]["done"] == 1
        stale = c.post("/api/items/15/save", json={**body, "base_version": 1}, headers=h["alice"])
        assert stale.status_code == 409
        hist = c.get("/api/items/15/history", headers=h["alice"]).json()["history"]
        assert [(e["version"], e["feedback"], e["annotator"]) for e in hist] == [
            (1, "first try", "alice"), (2, rows[15]["Feedback"], "alice")]
        assert c.post("/api/items/15/save", json={**body, "base_version": 2, "feedback": "  "},
                      headers=h["alice"]).status_code == 400  # feedback is required to save

        # skip puts an item at the back of that annotator's queue; can't fix counts as done
        nxt = c.post("/api/items/15/skip", json={}, headers=h["alice"]).json()["item"]
        assert nxt["task_id"] == 125
        cf = c.post("/api/items/125/save", json={"feedback": "spec unclear", "refinement": nxt["program"],
                                                 "base_version": 0, "status": "cant_fix"}, headers=h["alice"]).json()
        assert cf["progress"]["cant_fix"] == 1 and cf["progress"]["done"] == 2
        # an expired lease frees its item for another annotator
        carol_item = c.post("/api/next", json={}, headers=h["carol"]).json()["item"]
        assert carol_item["task_id"] == 641
        clock.now += 601
        assert c.post("/api/items/641/claim", json={}, headers=h["bob"]).status_code == 200
        for tid, who in ((26, "bob"), (641, "bob"), (268, "alice")):
            c.post(f"/api/items/{tid}/claim", json={}, headers=h[who])
            r = c.post(f"/api/items/{tid}/save", json={"feedback": rows[tid]["Feedback"], "base_version": 0,
                                                       "refinement": rows[tid]["unedited_annotator_completion"],
                                                       "status": "saved"}, headers=h[who])
            assert r.status_code == 200, r.text
        exported = c.post("/api/export", json={}, headers=h["alice"]).json()
        assert exported["rows"] == 4 and pathlib.Path(exported["path"]) == ws.export
        assert c.get("/export/annotations.jsonl", headers=h["bob"]).text == ws.export.read_text()
        progress = json.loads(ws.progress.read_text())
        assert progress["done"] == 5 and sorted(progress["done_ids"]) == sorted(IDS)
        assert progress["by_annotator"] == {"alice": 3, "bob": 2}

    # export -> the pipeline's loader -> the same triples; the leakage guard counts the test-split rows
    loaded = load_annotations(ws.export)
    assert loaded.excluded_test_ids == (15, 26)
    got = {a.task_id: (a.original, a.feedback, a.refinement, a.worker_id) for a in loaded.rows}
    assert got == {tid: (rows[tid]["original_model_completion"], rows[tid]["Feedback"],
                         rows[tid]["unedited_annotator_completion"], "bob" if tid == 641 else "alice")
                   for tid in (641, 268)}
    with_test = load_annotations(ws.export, include_test=True)
    assert {a.task_id for a in with_test.rows} == {15, 26, 641, 268}  # 125 was flagged can't fix
    row15 = next(a for a in with_test.rows if a.task_id == 15)
    assert (row15.feedback, row15.refinement) == (rows[15]["Feedback"], rows[15]["unedited_annotator_completion"])
    assert all(json.loads(line)["passed"] for line in ws.export.read_text().splitlines())


def test_two_annotators_in_separate_processes_never_share_an_item(tmp_path, rows):
    ws, store = _open(tmp_path, rows)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        taken = pool.starmap(_work_queue, [(str(ws.database), f"w{i}") for i in range(3)])
    flat = [tid for part in taken for tid in part]
    assert sorted(flat) == sorted(IDS)  # each item handed to exactly one annotator
    assert store.progress().done == len(IDS)


def _work_queue(db: str, name: str) -> list[int]:
    store = Store(db)
    who = store.local_annotator(name)
    got = []
    while (state := store.next_item(who)) is not None:
        got.append(state.item.task_id)
        time.sleep(0.02)
        store.save(who, state.item.task_id, status="saved", feedback=name, refinement=state.refinement,
                   base_version=state.version)
    return got


def test_lease_conflicts_at_the_store(tmp_path, rows):
    clock = Clock()
    ws, store = _open(tmp_path, rows, clock, lease_s=60)
    a, b = store.local_annotator("a"), store.local_annotator("b")
    s = store.next_item(a)
    with pytest.raises(Conflict):
        store.claim(b, s.item.task_id)
    with pytest.raises(Conflict):
        store.renew(b, s.item.task_id)
    clock.now += 30
    store.renew(a, s.item.task_id)
    clock.now += 45  # 75 s after the first lease, 45 after the renewal: still a's
    with pytest.raises(Conflict):
        store.claim(b, s.item.task_id)
    clock.now += 16
    assert store.claim(b, s.item.task_id).lease_holder == "b"
    with pytest.raises(Conflict):  # a lost it: its save is refused, nothing is overwritten
        store.save(a, s.item.task_id, status="saved", feedback="x", refinement="y", base_version=0)


def test_safety_off_loopback_requires_tokens_csrf_and_limits(tmp_path, rows):
    ws, store = _open(tmp_path, rows)
    token = store.add_annotator("alice")
    with TestClient(create_app(store, ws, Settings(host="0.0.0.0", max_body_bytes=4096)),
                    base_url="http://10.1.2.3:8765") as c:
        for path in ("/", "/api/session", "/api/queue", "/static/app.js", "/api/items/15/history",
                     "/export/annotations.jsonl"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert c.post("/api/next", json={}).status_code == 401
        # the printed URL: ?token= becomes an HttpOnly cookie and leaves the address bar
        r = c.get(f"/?token={token}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
        assert c.get("/").status_code == 200  # the cookie authenticates from now on
        csrf = c.get("/api/session").json()["csrf"]
        assert c.post("/api/next", json={}).status_code == 403  # no CSRF token
        assert c.post("/api/next", json={}, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
        assert c.post("/api/next", json={}, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}).status_code == 403
        assert c.post("/api/next", content=b"{}", headers={"X-CSRF-Token": csrf, "Content-Type": "text/plain"}).status_code == 415
        item = c.post("/api/next", json={}, headers={"X-CSRF-Token": csrf}).json()["item"]
        big = c.post(f"/api/items/{item['task_id']}/run", json={"refinement": "x" * 5000}, headers={"X-CSRF-Token": csrf})
        assert big.status_code == 413
        page = c.get("/")
        assert "script-src 'self'" in page.headers["content-security-policy"] and "<script>" not in page.text
        c.cookies.clear()
        assert c.get("/api/session").status_code == 401
    with _client(store, ws, Settings(max_program_chars=1000)) as c:
        h = _csrf(c)
        item = c.post("/api/next", json={}, headers=h).json()["item"]
        r = c.post(f"/api/items/{item['task_id']}/filter", json={"refinement": "x" * 1001}, headers=h)
        assert r.status_code == 413 and "over 1000 characters" in r.json()["error"]
    # loopback: token-less is the local annotator, but a foreign Host (DNS rebinding) is refused
    with _client(store, ws) as c:
        assert c.get("/api/session").json()["annotator"] == "local"
        assert c.get("/api/session", headers={"Host": "evil.example:8765"}).status_code == 403
        assert c.get("/api/session", headers={"Authorization": "Bearer wrong"}).status_code == 401
        with pytest.raises(WebSocketDisconnect) as closed:  # only authenticated HTTP reaches the app
            with c.websocket_connect("/api/session"):
                pass
        assert closed.value.code == 1008


def test_killing_the_server_loses_no_acknowledged_save(tmp_path, rows):
    """SIGKILL the real server while saves stream in; every acknowledged version is in the database whole."""
    queue = write_queue(tmp_path / "failing.jsonl", {641: rows[641]})
    ws = workspace_for(queue)
    acked: list[int] = []
    with server(queue, "--annotator", "k") as (proc, base):
        def call(path, body, csrf):
            req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())

        with urllib.request.urlopen(base + "/api/session") as r:
            csrf = json.loads(r.read())["csrf"]
        call("/api/next", {}, csrf)
        stop = threading.Event()

        def saver():
            version = 0
            while not stop.is_set():
                pad = "#" * (20000 + 997 * version % 9000)
                body = {"feedback": f"version {version + 1} {pad}", "base_version": version, "status": "saved",
                        "refinement": f"{rows[641]['original_model_completion']}# v{version + 1}\n"}
                try:
                    version = call("/api/items/641/save", body, csrf)["version"]
                except OSError:
                    return
                acked.append(version)

        t = threading.Thread(target=saver)
        t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.037)  # somewhere inside a later save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        t.join()
    assert len(acked) >= 5
    store = Store(ws.database)
    state = store.get(641)
    assert state.version >= acked[-1]  # the save in flight may have committed, but nothing acknowledged is lost
    n = state.version
    assert state.feedback.startswith(f"version {n} ") and state.refinement.endswith(f"# v{n}\n")  # one whole version
    assert [h.version for h in store.history(641)] == list(range(1, n + 1))


def test_kill_inside_the_save_transaction_keeps_the_previous_version(tmp_path, rows):
    """A process killed between a save's two writes (annotation row, history row) leaves the old version."""
    ws, store = _open(tmp_path, {641: rows[641]})
    who = store.local_annotator("k")
    store.claim(who, 641)
    store.save(who, 641, status="saved", feedback="old", refinement="old program", base_version=0)
    child = subprocess.Popen([sys.executable, "-c", _HALF_SAVE, str(ws.database)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdout.readline().strip() == "inside"
    child.kill()
    child.wait()
    state = Store(ws.database).get(641)
    assert (state.version, state.feedback, state.refinement) == (1, "old", "old program")
    assert [h.feedback for h in store.history(641)] == ["old"]


_HALF_SAVE = """
import sqlite3, sys, time
from ilf_jax.annotate.store import Store
store = Store(sys.argv[1])
who = store.local_annotator("k")
real = store._connect
def connect():
    con = real()
    class Slow:
        def execute(self, sql, *a):
            if sql.startswith("INSERT INTO history"):
                print("inside", flush=True)
                time.sleep(60)
            return con.execute(sql, *a)
        def close(self):
            con.close()
    return Slow()
store._connect = connect
store.save(who, 641, status="saved", feedback="new", refinement="new program", base_version=1)
"""


def test_queue_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"task_id": 1, "prompt": "def f(x):\\n", "test": "def check(c): pass", "program": "p"}\n'
                   '{"task_id": 2, "prompt": "def g(x):\\n", "test": "t"}\n')
    with pytest.raises(IlfError, match=r"q.jsonl: line 2: missing field 'program'"):
        load_items(bad)
    bad.write_text('{"task_id": 1, "prompt": "no def here", "test": "t", "program": "p"}\n')
    with pytest.raises(IlfError, match=r"line 1: field 'prompt' has no `def name"):
        load_items(bad)
    out = subprocess.run([sys.executable, "-m", "ilf_jax.cli", "annotate", str(tmp_path / "missing.jsonl")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2 and "neither a run directory nor a queue JSONL" in out.stderr


def test_cli_add_annotator_and_export(tmp_path, rows):
    queue = write_queue(tmp_path / "failing.jsonl", {641: rows[641]})
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def ilf(*args):
        return subprocess.run([sys.executable, "-m", "ilf_jax.cli", "annotate", *args], capture_output=True,
                              text=True, env=env)

    refused = ilf(str(queue), "--host", "0.0.0.0")
    assert refused.returncode == 2 and "needs annotator tokens" in refused.stderr
    out = ilf("add-annotator", "alice", str(queue))
    assert out.returncode == 0, out.stderr
    token = out.stdout.split("token ")[1].split()[0]
    store = Store(workspace_for(queue).database)
    assert store.annotator_for_token(token) == Annotator(1, "alice")
    assert store.annotator_for_token(token + "x") is None
    out = ilf("export", str(queue), "-o", str(tmp_path / "ann.jsonl"))
    assert out.returncode == 0 and "wrote 0 annotations" in out.stdout and "0 of 1 items done" in out.stdout
    # the real server on all interfaces: nothing without the token, everything with it
    with server(queue, "--host", "0.0.0.0") as (_, base):
        for path in ("/", "/api/session", "/static/app.js"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=10)
            assert refused.value.code == 401
        req = urllib.request.Request(base + "/api/session", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["annotator"] == "alice"
