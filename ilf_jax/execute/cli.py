"""`ilf exec INPUT.jsonl -o OUTPUT.jsonl [--timeout S] [--workers N]`: run programs against their tests.

Output lines are written (and flushed) as results arrive; rerunning with the same output file
skips ids already done, so an interrupted run resumes. The output is created 0600, and neither
file is reachable from inside the sandboxes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ilf_jax.errors import IlfError
from ilf_jax.jsonl import read_objects
from ilf_jax.execute.job import Job
from ilf_jax.execute.pool import Executor


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `ilf exec` arguments."""
    parser.add_argument("input", type=Path, help="JSONL: id, program, and test + entry_point or test_list")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSONL results (appended, resumable)")
    parser.add_argument("--timeout", type=float, default=3.0, help="CPU seconds per program (default 3)")
    parser.add_argument("--wall-timeout", type=float, default=None,
                        help="wall-clock seconds per program, a backstop for waiting programs (default max(30, 10 x timeout))")
    parser.add_argument("--workers", type=int, default=None, help="parallel sandboxes (default: CPU count)")


def _str_field(rec: dict[str, Any], field: str, where: str, required: bool = True) -> str | None:
    """A string field of an input record, or an IlfError naming the record and field."""
    if field not in rec or rec[field] is None:
        if required:
            raise IlfError(f"{where}: missing field {field!r}")
        return None
    if not isinstance(rec[field], str):
        raise IlfError(f"{where}: field {field!r} must be a string, got {type(rec[field]).__name__}")
    return rec[field]


def parse_job(rec: dict[str, Any], where: str) -> Job:
    """One input record as a Job (strictly validated)."""
    job_id = rec.get("id")
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    if not isinstance(job_id, str) or not job_id:
        raise IlfError(f"{where}: field 'id' must be a non-empty string")
    program = _str_field(rec, "program", where)
    test = _str_field(rec, "test", where, required=False)
    if test is not None:
        entry_point = _str_field(rec, "entry_point", where)
        return Job(job_id, program, test=test, entry_point=entry_point)
    tests = rec.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise IlfError(f"{where}: needs 'test' + 'entry_point', or 'test_list' as a non-empty list of strings")
    setup = _str_field(rec, "test_setup_code", where, required=False) or ""
    return Job(job_id, program, test_list=tuple(tests), test_setup_code=setup)


def read_jobs(path: Path) -> list[Job]:
    """All jobs of an input file; ids must be unique."""
    jobs, seen = [], set()
    for where, rec in read_objects(path):
        job = parse_job(rec, where)
        if job.id in seen:
            raise IlfError(f"{where}: duplicate id {job.id!r}")
        seen.add(job.id)
        jobs.append(job)
    return jobs


def done_ids(path: Path) -> set[str]:
    """Ids already in an output file (a torn last line from a killed run is ignored)."""
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            ids.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


def run(args: argparse.Namespace) -> int:
    """Execute the input's jobs not yet in the output; print a one-line summary."""
    if args.timeout <= 0:
        raise IlfError(f"--timeout must be positive, got {args.timeout}")
    if args.wall_timeout is not None and args.wall_timeout < args.timeout:
        raise IlfError(f"--wall-timeout must be at least --timeout, got {args.wall_timeout}")
    if args.workers is not None and args.workers < 1:
        raise IlfError(f"--workers must be at least 1, got {args.workers}")
    jobs = read_jobs(args.input)
    done = done_ids(args.output)
    todo = [j for j in jobs if j.id not in done]
    _drop_torn_tail(args.output)
    passed = 0
    fd = os.open(args.output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    with Executor(args.workers, args.timeout, wall_timeout=args.wall_timeout, hide=[args.input, args.output]) as ex, \
            os.fdopen(fd, "a", encoding="utf-8") as out:
        for result in ex.imap(todo):
            out.write(json.dumps(result.to_json()) + "\n")
            out.flush()
            passed += result.passed
    print(f"ilf exec: {len(todo)} run ({passed} passed), {len(jobs) - len(todo)} already done -> {args.output}",
          file=sys.stderr)
    return 0


def _drop_torn_tail(path: Path) -> None:
    """Make sure appending starts on a fresh line after an interrupted write."""
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")
