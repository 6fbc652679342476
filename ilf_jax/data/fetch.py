"""`ilf data`'s core: the paper's two input files, where they come from, and their sha256 check.

MBPP comes from the HF hub through `datasets` (the reference's `load_dataset("mbpp")`), written back in
google-research's `mbpp.jsonl` layout, whose bytes are pinned by sha256; the ILF annotation file comes from
the reference repository at a pinned commit. Nothing is written unless its sha256 matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable

from ilf_jax.errors import IlfError

_MBPP_KEYS = ("text", "code", "task_id", "test_setup_code", "test_list", "challenge_test_list")  # google's order


@dataclasses.dataclass(frozen=True)
class DataFile:
    """One input file: its place in the cache, its pinned sha256 and a URL to download it by hand."""

    name: str
    relpath: str
    sha256: str
    url: str
    origin: str


MBPP = DataFile(
    "mbpp", "mbpp/mbpp.jsonl", "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
    "https://raw.githubusercontent.com/google-research/google-research/30adf0ec5f35f9609c2f1d896005e184195d9146/"
    "mbpp/mbpp.jsonl",
    "HF hub dataset `mbpp` (config full, all splits) through `datasets`, as google-research's mbpp.jsonl")
ANNOTATIONS = DataFile(
    "annotations", "ilf/surge_annotations.jsonl", "fedbfd3e2a0cfcb39497e93dae5ad996e734bbc51a9f6ecd1f49bc8cd595ecfc",
    "https://raw.githubusercontent.com/nyu-mll/ILF-for-code-generation/1bbccca2934b26e2d8745e5afab65eb677cbe92a/"
    "surge_annotations.jsonl",
    "nyu-mll/ILF-for-code-generation at commit 1bbccca (surge_annotations.jsonl)")
FILES = (MBPP, ANNOTATIONS)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What `ilf data` did for one file: `status` is cached, fetched, copied or failed."""

    file: DataFile
    path: Path
    status: str
    detail: str = ""


CACHE_PREFIX = "cache:"  # a config path `cache:REL` is REL under default_cache()


def default_cache() -> Path:
    """$ILF_DATA, else ~/.cache/ilf_jax/data."""
    return Path(os.environ.get("ILF_DATA") or Path.home() / ".cache" / "ilf_jax" / "data")


def check_cached(path: str | Path) -> None:
    """When `path` is one of the pinned files' place in the cache, it must hold the pinned bytes (IlfError
    saying how to get them otherwise); other paths are left to their readers."""
    path = Path(path).absolute()
    for file in FILES:
        if path == (default_cache() / file.relpath).absolute() and not _cached(file, path):
            state = "is missing" if not path.is_file() else f"has sha256 {sha256_of(path.read_bytes())}, not the pinned one"
            raise IlfError(f"{path}: {state}; run `ilf data` (online) or {by_hand(Outcome(file, path, 'failed'))}"
                           .replace("\n    ", " "))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mbpp_jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    """MBPP records (any key order, e.g. from `datasets`) in google-research's mbpp.jsonl bytes, by task id."""
    rows = sorted(records, key=lambda r: r["task_id"])
    out = []
    for rec in rows:
        missing = [k for k in _MBPP_KEYS if k not in rec]
        if missing:
            raise IlfError(f"MBPP record task_id={rec.get('task_id')!r}: missing field {missing[0]!r}")
        out.append(json.dumps({k: (list(rec[k]) if isinstance(rec[k], tuple) else rec[k]) for k in _MBPP_KEYS}))
    return ("\n".join(out) + "\n").encode("utf-8")


def hf_mbpp_bytes() -> bytes:
    """MBPP from the HF hub, as mbpp.jsonl bytes (needs `datasets` and network or its cache)."""
    from ilf_jax.data.mbpp import hf_records

    return mbpp_jsonl(hf_records("mbpp", "full"))


def download(url: str, timeout: float = 60.0) -> bytes:
    """The bytes at `url`; IlfError with the reason when it cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a pinned https URL
            return r.read()
    except (OSError, ValueError) as e:
        raise IlfError(f"cannot download {url}: {e}") from None


def _write(path: Path, data: bytes) -> None:
    """Write atomically: a partial download never sits at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _cached(file: DataFile, path: Path) -> bool:
    return path.is_file() and sha256_of(path.read_bytes()) == file.sha256


def ensure(file: DataFile, cache: Path, sources: Iterable[tuple[str, Callable[[], bytes]]],
           from_dir: Path | None = None) -> Outcome:
    """Make `cache/file.relpath` hold the pinned bytes: keep a verified copy, else copy from `from_dir`, else
    try each (label, fetch) source in turn; a source whose bytes do not match the sha256 is reported, not used."""
    path = cache / file.relpath
    if _cached(file, path):
        return Outcome(file, path, "cached")
    problems = []
    if from_dir is not None:
        src = from_dir / file.relpath
        if not src.is_file():
            problems.append(f"{src}: not found")
        elif sha256_of(src.read_bytes()) != file.sha256:
            problems.append(f"{src}: sha256 {sha256_of(src.read_bytes())} is not the pinned {file.sha256}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path)
            return Outcome(file, path, "copied", str(src))
    else:
        for label, fetch in sources:
            try:
                data = fetch()
            except IlfError as e:
                problems.append(f"{label}: {e}")
                continue
            except Exception as e:  # noqa: BLE001 - network / hub errors of every kind become one line
                problems.append(f"{label}: {type(e).__name__}: {e}".splitlines()[0])
                continue
            got = sha256_of(data)
            if got != file.sha256:
                problems.append(f"{label}: sha256 {got} is not the pinned {file.sha256} (another version)")
                continue
            _write(path, data)
            return Outcome(file, path, "fetched", label)
    return Outcome(file, path, "failed", "; ".join(problems))


def default_sources(file: DataFile) -> list[tuple[str, Callable[[], bytes]]]:
    """Where each file is fetched from, in order: MBPP from the HF hub then the pinned google-research file."""
    if file is MBPP:
        return [("HF hub (datasets)", hf_mbpp_bytes), (file.url, lambda: download(file.url))]
    return [(file.url, lambda: download(file.url))]


def by_hand(outcome: Outcome) -> str:
    """What to do when a file could not be fetched: the URL, where to put it and the sha256 to check."""
    f = outcome.file
    return (f"download {f.url}\n    to {outcome.path}\n    and check: sha256sum {outcome.path}  (must be {f.sha256})\n"
            f"    or put the file in DIR/{f.relpath} and run `ilf data --from DIR`")
