"""`ilf sample`: completions for the prompts of a JSONL file, written resumably to a JSONL file.

Input lines: {"id": ..., "prompt": "..."}. Output lines, n per input id, in input order:
{"id", "sample", "completion", "finish_reason", "num_tokens"}; `completion` is the text after the
prompt, already cut by the paper's rule (truncate_completion).

Resuming: the settings are stored next to the output (`OUT.meta.json`). Rerunning with the same -o
keeps every id whose n samples are all present, drops a partial trailing record or an id with
missing samples, and samples only the missing ids; different settings are refused. Each prompt's
key is derived from its line number in the input file, so a resumed run draws the same samples
as an uninterrupted one. Records are appended to the output (a `jsonl.RecordLog`) a group of
prompts at a time, flushed and fsynced.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

from ilf_jax.errors import IlfError
from ilf_jax.jsonl import RecordLog, atomic_write_text, read_json, read_objects
from ilf_jax.processes import process_count

META_SUFFIX = ".meta.json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF model directory (CodeGen, Llama, Qwen2, Qwen3) or an ilf_jax checkpoint directory")
    parser.add_argument("--prompts", required=True, help="JSONL file with `id` and `prompt` on each line")
    parser.add_argument("-o", "--output", required=True, help="output JSONL (resumed when it exists)")
    parser.add_argument("-n", type=int, default=1, help="samples per prompt (default 1)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 means greedy (default 0.8)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: off)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0: off)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="bound on generated tokens (default 1024, the reference's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32, help="decode slots: rows (prompt x sample) in flight per device call (default 32)")
    parser.add_argument("--mesh", default="1,-1,1", help="mesh sizes data,fsdp,tensor (default 1,-1,1)")
    parser.add_argument("--no-stop-rule", action="store_true", help="stop only at EOS or max-new-tokens (text is still cut)")
    parser.add_argument("--debug", action="store_true", help="run the decode step from a Python loop")


def read_prompts(path: pathlib.Path) -> list[tuple[str | int, str]]:
    """(id, prompt) per line; an id is a string or an integer, unique in the file."""
    out, seen = [], set()
    for where, rec in read_objects(path):
        if "id" not in rec or not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool):
            raise IlfError(f"{where}: field 'id' missing or not a string/integer")
        if not isinstance(rec.get("prompt"), str) or not rec["prompt"]:
            raise IlfError(f"{where}: field 'prompt' missing, empty or not a string")
        key = json.dumps(rec["id"])
        if key in seen:
            raise IlfError(f"{where}: field 'id' {rec['id']!r} repeats an earlier id")
        seen.add(key)
        out.append((rec["id"], rec["prompt"]))
    return out


def _settings(args: argparse.Namespace) -> dict:
    return {
        "model": str(pathlib.Path(args.model).resolve()),
        "prompts": str(pathlib.Path(args.prompts).resolve()),
        "n": args.n,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "stop_rule": not args.no_stop_rule,
    }


def _key(rec: dict) -> tuple[str, int]:
    return json.dumps(rec["id"]), int(rec["sample"])


def _resume(out: pathlib.Path, settings: dict, n: int) -> RecordLog:
    """The output's record log holding only ids with all n samples (a torn last line and ids with
    missing samples dropped); refuses an output written with other settings."""
    meta = out.with_name(out.name + META_SUFFIX)
    if meta.is_file():
        old = read_json(meta)
        diff = sorted(k for k in settings if old.get(k) != settings[k])
        if diff and out.exists():
            raise IlfError(f"{out}: exists with different settings ({', '.join(diff)}); use another -o or delete it")
    elif out.exists() and out.stat().st_size:
        raise IlfError(f"{out}: exists without {meta.name}; it was not written by `ilf sample` (delete it to start over)")
    atomic_write_text(meta, json.dumps(settings, indent=2) + "\n")
    log = RecordLog(out, _key)
    samples: dict[str, set[int]] = {}
    for pid, s in log.records:
        samples.setdefault(pid, set()).add(s)
    log.retain(lambda rec: samples[_key(rec)[0]] == set(range(n)))
    return log


def run(args: argparse.Namespace) -> int:
    from ilf_jax.sample.sampler import SamplingConfig

    knobs = ("n", "temperature", "top_k", "top_p", "max_new_tokens", "seed", "batch_size")
    cfg = SamplingConfig(**{k: getattr(args, k) for k in knobs}, stop_rule=not args.no_stop_rule)
    prompts = read_prompts(pathlib.Path(args.prompts))
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _resume(out, _settings(args), cfg.n) as log:
        done = {pid for pid, _ in log.records}
        todo = [(i, pid, p) for i, (pid, p) in enumerate(prompts) if json.dumps(pid) not in done]
        if process_count() > 1:
            from ilf_jax.parallel.distributed import agree

            agree([i for i, _, _ in todo])  # every process samples the same prompts (an SPMD call)
        print(f"ilf sample: {len(prompts)} prompts, {len(prompts) - len(todo)} already done, {len(todo)} to sample",
              file=sys.stderr)
        if todo:
            _sample(args, cfg, todo, log)
    return 0


def _sample(args: argparse.Namespace, cfg: Any, todo: list[tuple[int, Any, str]], log: RecordLog) -> None:
    """Sample the prompts of `todo` ((line index, id, prompt)), appending each group's records to `log`."""
    from ilf_jax.data.formats import truncate_completion
    from ilf_jax.model.store import load_model, load_tokenizer
    from ilf_jax.parallel.mesh import make_mesh, parse_mesh
    from ilf_jax.sample.sampler import Sampler

    mesh = make_mesh(parse_mesh(args.mesh))
    config, params = load_model(args.model, mesh=mesh)
    sampler = Sampler(params, config, load_tokenizer(args.model), mesh, debug=args.debug)
    # Groups of prompts that keep the slots busy for a while (the slots drain at the end of each
    # group); each group is appended durably.
    group = max(1, (16 * cfg.batch_size) // cfg.n)
    start_time, rows = time.time(), 0
    for g in range(0, len(todo), group):
        part = todo[g : g + group]
        completions = sampler.sample([p for _, _, p in part], cfg, key_ids=[i for i, _, _ in part], postprocess=truncate_completion)
        if sampler.truncated:
            print(f"ilf sample: warning: {len(sampler.truncated)} prompt(s) truncated from the left to fit the context", file=sys.stderr)
        log.append({"id": part[c.prompt_index][1], "sample": c.sample, "completion": c.text,
                    "finish_reason": c.finish_reason, "num_tokens": c.num_tokens} for c in completions)
        rows += len(completions)
        print(f"ilf sample: {min(g + group, len(todo))}/{len(todo)} prompts, {rows / (time.time() - start_time):.1f} samples/s", file=sys.stderr)
