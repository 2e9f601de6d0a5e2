"""Pretraining shards: the file format, reading them, and downloading FineWeb-Edu's.

Shards are <base>/base_data/shard_00000.parquet, shard_00001.parquet, ...: one `text` column, row
groups of up to 1024 documents, zstd. Sorted by name, the LAST shard present is the validation
split and the others are train -- for downloaded shards and for the offline corpus alike.

Online: FineWeb-Edu (karpathy/fineweb-edu-100b-shuffle, shard_00000 .. shard_01822) over HTTP,
with the download rules of nanochat.data.download (locked, retried, resumed, verified, atomic).
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from nanochat.common import get_base_dir
from nanochat.data.download import USER_AGENT, DownloadError, download_file, retrying

DEFAULT_BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
NUM_ONLINE_SHARDS = 1823  # shard_00000 .. shard_01822
MAX_SHARD = NUM_ONLINE_SHARDS - 1
PROBE_TIMEOUT_S = 5.0  # "is the online source there at all": short, so auto falls back quickly
PROBE_RETRIES = 3  # attempts 2..4 wait 1, 2 and 4 s: a mirror that hiccups three times still serves
PROBE_BACKOFF_S = 1.0

SHARD_RE = re.compile(r"shard_(\d{5})\.parquet")
ROW_GROUP_DOCS = 1024


class DatasetError(RuntimeError):
    """Pretraining data cannot be provided as asked; the message says what to do."""


# ------------------------------------------------------------------------------------------------
# Shard names, locations, reading


def data_dir() -> Path:
    return get_base_dir() / "base_data"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def get_base_url(base_url: str | None = None) -> str:
    """The online shard repository: the argument, else $NANOCHAT_DATA_URL, else DEFAULT_BASE_URL."""
    return (base_url or os.environ.get("NANOCHAT_DATA_URL") or DEFAULT_BASE_URL).rstrip("/")


def shard_url(index: int, base_url: str | None = None) -> str:
    return f"{get_base_url(base_url)}/{shard_name(index)}"


def list_parquet_files(directory: str | os.PathLike | None = None) -> list[Path]:
    """The shards present (finished ones only: no .part/.tmp), sorted; the last one is val."""
    directory = Path(directory) if directory is not None else data_dir()
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if SHARD_RE.fullmatch(p.name))


def parquets_iter_batched(split: str, start: int = 0, step: int = 1) -> Iterator[list[str]]:
    """Yield the documents of each row group of the split, row groups start, start+step, ... of every
    shard (pass start=rank, step=world_size to give each rank a disjoint part)."""
    import pyarrow.parquet as pq

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    paths = list_parquet_files()
    if len(paths) < 2:
        raise DatasetError(f"need at least 2 shards in {data_dir()} (train + val), found {len(paths)}: "
                           "run `python -m nanochat.data -n 2` (or --source offline) first")
    for path in paths[:-1] if split == "train" else paths[-1:]:
        pf = pq.ParquetFile(path)
        for rg in range(start, pf.num_row_groups, step):
            yield pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()


def check_parquet(path: Path) -> None:
    """Raise unless `path` is a parquet file (readable footer) with a `text` column."""
    import pyarrow.parquet as pq

    names = pq.ParquetFile(path).schema_arrow.names
    if "text" not in names:
        raise ValueError(f"no `text` column (columns: {names})")


# ------------------------------------------------------------------------------------------------
# Online: FineWeb-Edu shards over HTTP


def download_shard(index: int, base_url: str | None = None, directory: Path | None = None, *,
                   retries: int = 5, timeout: float = 30.0, backoff: float = 1.0) -> Path:
    """Download one shard (no-op if a good copy is there); the file is verified as parquet."""
    if not 0 <= index <= MAX_SHARD:
        raise ValueError(f"shard index must be in 0..{MAX_SHARD}, got {index}")
    directory = Path(directory) if directory is not None else data_dir()
    return download_file(shard_url(index, base_url), directory / shard_name(index), verify=check_parquet,
                         retries=retries, timeout=timeout, backoff=backoff)


def download_shards(indices: Iterable[int], base_url: str | None = None, workers: int = 4,
                    directory: Path | None = None) -> list[Path]:
    """Download shards in parallel threads (network-bound) with a progress bar; raise if any failed."""
    from tqdm import tqdm

    indices = list(indices)
    failed: list[tuple[int, Exception]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(download_shard, i, base_url, directory): i for i in indices}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="shards", unit="shard", disable=not indices):
            if fut.exception() is not None:
                failed.append((futures[fut], fut.exception()))
    if failed:
        index, err = min(failed, key=lambda f: f[0])
        raise DownloadError(f"{len(failed)} of {len(indices)} shards failed (first: {shard_name(index)}: {err})")
    directory = Path(directory) if directory is not None else data_dir()
    return [directory / shard_name(i) for i in indices]


def probe_online(base_url: str | None = None, index: int = 0, timeout: float = PROBE_TIMEOUT_S,
                 retries: int | None = None, backoff: float | None = None) -> str | None:
    """None if the shard repository answers for shard `index`, else a short reason (for the log line).

    Retried like a download (a 5xx or a reset is often transient), with a smaller budget: an
    unreachable host should not delay the offline fallback by minutes."""
    url = shard_url(index, base_url)

    def attempt() -> None:
        req = urllib.request.Request(url, headers={"Range": "bytes=0-0", "User-Agent": USER_AGENT})
        with urllib.request.urlopen(req, timeout=timeout):
            return None

    try:
        retrying(attempt, url, retries=PROBE_RETRIES if retries is None else retries,
                 backoff=PROBE_BACKOFF_S if backoff is None else backoff)
    except DownloadError as e:
        return f"{get_base_url(base_url)}: {e.reason}"
    return None
