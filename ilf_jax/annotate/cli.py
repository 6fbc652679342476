"""`ilf annotate TARGET`: serve the annotation app over a run's failures (RUN_DIR) or a queue JSONL;
`ilf annotate add-annotator NAME TARGET` prints a token; `ilf annotate export TARGET [-o FILE]`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys

from ilf_jax.errors import IlfError

USAGE = """examples:
  ilf annotate runs/ilf                        serve on http://127.0.0.1:8765 (this machine only)
  ilf annotate failing.jsonl --port 9000       a queue JSONL of failing programs
  ilf annotate add-annotator alice runs/ilf    print alice's token (needed with --host 0.0.0.0)
  ilf annotate runs/ilf --host 0.0.0.0         serve to the network: every request needs a token
  ilf annotate export runs/ilf -o ann.jsonl    the Surge-format JSONL for feedback.source: human"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = USAGE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("target", help="RUN_DIR or queue JSONL (or the word add-annotator / export)")
    parser.add_argument("more", nargs="*", help="add-annotator NAME TARGET | export TARGET")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--annotator", default=None, help="name of the token-less local annotator (default $USER)")
    parser.add_argument("--lease-minutes", type=float, default=10.0, help="an open item is kept this long per renewal")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per test run (executor timeout)")
    parser.add_argument("--workers", type=int, default=1, help="sandbox workers for Run tests")
    parser.add_argument("-o", "--output", default=None, help="export: where to write (default: the workspace's)")


def _open(target: str, lease_minutes: float = 10.0, workers: int = 1, timeout: float = 3.0):
    """(Workspace, Store) of a RUN_DIR or queue JSONL, with the queue's new items added to the store."""
    from ilf_jax.annotate.checks import with_errors
    from ilf_jax.annotate.items import load_items
    from ilf_jax.annotate.store import Store
    from ilf_jax.annotate.workspace import workspace_for

    ws = workspace_for(target)
    if lease_minutes <= 0:
        raise IlfError(f"--lease-minutes={lease_minutes}: must be positive")
    store = Store(ws.database, lease_s=lease_minutes * 60)
    if ws.queue.is_file():
        stored = {s.item.task_id: s.item for s in store.queue()}
        items = [dataclasses.replace(it, error=stored[it.task_id].error) if not it.error and it.task_id in stored
                 else it for it in load_items(ws.queue)]
        added = store.sync_items(with_errors(items, workers, timeout))
        if added:
            print(f"ilf annotate: {added} new items from {ws.queue}")
    return ws, store


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ilf_jax.annotate.app import Settings, create_app, is_loopback
    except ImportError:
        raise IlfError("the annotation app needs its extra: pip install -e '.[annotate]'") from None
    ws, store = _open(args.target, args.lease_minutes, args.workers, args.timeout)
    settings = Settings(host=args.host, local_annotator=args.annotator or os.environ.get("USER") or "local",
                        executor_workers=args.workers, executor_timeout=args.timeout)
    if not is_loopback(args.host) and not store.has_tokens():
        raise IlfError(f"--host {args.host} needs annotator tokens: run `ilf annotate add-annotator NAME {args.target}`")
    p = store.progress()
    where = "this machine only" if is_loopback(args.host) else "the network; open it with ?token=YOUR_TOKEN"
    print(f"ilf annotate: {p.done} of {p.total} items done; serving http://{args.host}:{args.port}/ ({where})")
    print(f"ilf annotate: database {ws.database}; export {ws.export}")
    sys.stdout.flush()
    uvicorn.run(create_app(store, ws, settings), host=args.host, port=args.port, log_level="warning")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.target == "add-annotator":
        if len(args.more) != 2:
            raise IlfError("usage: ilf annotate add-annotator NAME TARGET (a RUN_DIR or queue JSONL)")
        name, target = args.more
        _, store = _open(target)
        token = store.add_annotator(name)
        print(f"annotator {name!r}: token {token}")
        print(f"open http://HOST:PORT/?token={token} (the token becomes a cookie; keep it secret)")
        return 0
    if args.target == "export":
        if len(args.more) != 1:
            raise IlfError("usage: ilf annotate export TARGET [-o FILE]")
        from ilf_jax.annotate import export

        ws, store = _open(args.more[0])
        path = pathlib.Path(args.output) if args.output else ws.export
        rows = export.export(store, path)
        export.refresh(store, ws)
        p = store.progress()
        print(f"ilf annotate: wrote {rows} annotations to {path} ({p.done} of {p.total} items done, "
              f"{p.cant_fix} can't fix)")
        return 0
    if args.more:
        raise IlfError(f"unexpected arguments {' '.join(args.more)!r} (see ilf annotate --help)")
    return _serve(args)
