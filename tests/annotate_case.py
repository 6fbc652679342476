"""Shared by the annotation app's tests: queues made of real ILF rows, and a real server process."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator

REPO = pathlib.Path(__file__).resolve().parents[1]


def surge_rows(shared_data: pathlib.Path, ids: list[int]) -> dict[int, dict]:
    """The ILF annotation rows (CodeGen-6B's failing program, feedback, refinement) of these task ids."""
    rows = {}
    for line in (shared_data / "ilf" / "surge_annotations.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["task_id"] in ids:
            rows[rec["task_id"]] = rec
    assert sorted(rows) == sorted(ids)
    return {i: rows[i] for i in ids}


def write_queue(path: pathlib.Path, rows: dict[int, dict]) -> pathlib.Path:
    """A queue JSONL of the rows' failing programs (error text left for the app to compute)."""
    path.write_text("".join(json.dumps({"task_id": r["task_id"], "prompt": r["prompt"], "test": r["test"],
                                        "program": r["original_model_completion"]}) + "\n"
                            for r in rows.values()))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(target: pathlib.Path, *args: str, port: int | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """`ilf annotate TARGET` in its own process; yields (process, base URL) once it answers."""
    port = port or free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "ilf_jax.cli", "annotate", str(target), "--port", str(port), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stdout.read()}")
            try:
                with urllib.request.urlopen(base + "/api/session", timeout=2):
                    break
            except urllib.error.HTTPError:  # up, and refusing token-less requests
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
