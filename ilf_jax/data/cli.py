"""`ilf data [--cache DIR] [--from DIR]`: fetch and verify MBPP and the ILF annotation file into a cache.

Online: MBPP from the HF hub (`datasets`; falling back to the pinned google-research file) and the annotation
file from the reference repository, each checked against its sha256. Offline: says what to download by hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ilf_jax.data.fetch import FILES, by_hand, default_cache, default_sources, ensure


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache directory (default: $ILF_DATA or ~/.cache/ilf_jax/data)")
    parser.add_argument("--from", dest="from_dir", type=Path, default=None,
                        help="copy verified files from DIR (DIR/mbpp/mbpp.jsonl, DIR/ilf/surge_annotations.jsonl) "
                             "instead of downloading")


def run(args: argparse.Namespace) -> int:
    cache = args.cache or default_cache()
    failed = 0
    for file in FILES:
        out = ensure(file, cache, default_sources(file), args.from_dir)
        if out.status == "failed":
            failed += 1
            print(f"{file.name}: FAILED ({out.detail})\n  by hand: {by_hand(out)}")
        else:
            how = {"cached": "already cached", "fetched": f"fetched from {out.detail}",
                   "copied": f"copied from {out.detail}"}[out.status]
            print(f"{file.name}: {out.path} ({how}; sha256 {file.sha256[:12]}... verified)")
    if failed:
        print(f"ilf data: {failed} of {len(FILES)} files missing; the paper configs need both (see README, "
              "'Reproducing the paper')")
        return 1
    print(f"ilf data: all files verified in {cache}")
    return 0
