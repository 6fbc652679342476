"""`ilf data`: pinned sha256s, the HF records -> mbpp.jsonl bytes, copy/fetch/offline paths (no network)."""

from __future__ import annotations

import json

import pytest

from ilf_jax.cli import main
from ilf_jax.data import fetch
from ilf_jax.data.fetch import ANNOTATIONS, MBPP, ensure, mbpp_jsonl, sha256_of
from ilf_jax.errors import IlfError


def test_pinned_sha256_are_the_shared_copies(shared_data):
    for f in (MBPP, ANNOTATIONS):
        assert sha256_of((shared_data / f.relpath).read_bytes()) == f.sha256


def test_hf_records_serialise_to_the_pinned_bytes(shared_data):
    lines = (shared_data / MBPP.relpath).read_text(encoding="utf-8").splitlines()
    # what `datasets` yields: the HF feature order, shuffled splits, lists
    hf = [{k: rec[k] for k in ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")}
          for rec in map(json.loads, lines)][::-1]
    assert sha256_of(mbpp_jsonl(hf)) == MBPP.sha256
    hf[5] = {**hf[5], "code": hf[5]["code"].replace("\r\n", "\n")}  # another version of one task
    assert sha256_of(mbpp_jsonl(hf)) != MBPP.sha256
    with pytest.raises(IlfError, match="missing field 'code'"):
        mbpp_jsonl([{"task_id": 1, "text": "t"}])


def test_fetch_verifies_and_never_writes_wrong_bytes(shared_data, tmp_path):
    good = (shared_data / ANNOTATIONS.relpath).read_bytes()
    calls = []

    def offline():
        calls.append("offline")
        raise OSError("Network is unreachable")

    out = ensure(ANNOTATIONS, tmp_path, [("mirror", offline), ("bad", lambda: good[:-1]), ("good", lambda: good)])
    assert out.status == "fetched" and out.detail == "good" and out.path.read_bytes() == good
    assert ensure(ANNOTATIONS, tmp_path, [("never", offline)]).status == "cached" and calls == ["offline"]
    out.path.write_bytes(b"tampered")
    failed = ensure(ANNOTATIONS, tmp_path, [("bad", lambda: good[:-1]), ("down", offline)])
    assert failed.status == "failed" and "not the pinned" in failed.detail and "Network is unreachable" in failed.detail
    assert out.path.read_bytes() == b"tampered"  # nothing written over it with unverified bytes
    assert ANNOTATIONS.url in fetch.by_hand(failed) and ANNOTATIONS.sha256 in fetch.by_hand(failed)


def test_cli_from_dir_then_cached_and_offline_message(shared_data, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    assert main(["data", "--cache", str(cache), "--from", str(shared_data)]) == 0
    assert "mbpp: " in capsys.readouterr().out
    assert (cache / MBPP.relpath).read_bytes() == (shared_data / MBPP.relpath).read_bytes()
    assert main(["data", "--cache", str(cache)]) == 0 and "already cached" in capsys.readouterr().out

    def no_network(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(fetch.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(fetch, "hf_mbpp_bytes", lambda: no_network())
    empty = tmp_path / "empty"
    assert main(["data", "--cache", str(empty)]) == 1
    text = capsys.readouterr().out
    assert "mbpp: FAILED" in text and MBPP.url in text and str(empty / MBPP.relpath) in text
    assert "annotations: FAILED" in text and ANNOTATIONS.sha256 in text and not empty.exists()
