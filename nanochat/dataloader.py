"""Pretraining batches: parquet documents -> tokens (BOS before every document) -> (inputs, targets).

Row groups are strided across ranks (rank r reads row groups r, r+W, r+2W, ... of every shard), so
ranks see disjoint text. The loader yields `(inputs, targets, state)`; passing `state` back as
`resume_state` continues with exactly the next batch. The state names the first token not yet
consumed: (epoch, shard, row group, document within the row group, token within the document).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator

import pyarrow.parquet as pq
import torch

from nanochat.common import get_rank, get_world_size
from nanochat.dataset import list_parquet_files

logger = logging.getLogger(__name__)


def split_files(split: str) -> list[str]:
    """The last shard is validation, the others train."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    files = [str(p) for p in list_parquet_files()]
    if len(files) < 2:
        raise FileNotFoundError(f"need at least 2 pretraining shards (train + val), found {len(files)}: "
                                "run `python -m nanochat.dataset` (or --source offline) first")
    return files[:-1] if split == "train" else files[-1:]


def _documents(files: list[str], rank: int, world: int, start: dict) -> Iterator[tuple[tuple, str]]:
    """(cursor, text) for this rank's documents, forever, from `start`; cursor = (epoch, shard, rg, doc)."""
    epoch = start["epoch"]
    first = (start["shard"], start["row_group"], start["doc"])
    while True:
        for shard in range(first[0], len(files)):
            pf = pq.ParquetFile(files[shard])
            rg0 = first[1] if shard == first[0] else rank
            for rg in range(rg0, pf.num_row_groups, world):
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                d0 = first[2] if (shard, rg) == first[:2] else 0
                for d in range(d0, len(texts)):
                    yield (epoch, shard, rg, d), texts[d]
        epoch += 1
        first = (0, rank, 0)
        logger.info("dataloader: rank %d starts epoch %d over %d shard(s)", rank, epoch, len(files))


def tokenizing_distributed_data_loader(tokenizer, B: int, T: int, split: str, device: str | torch.device = "cpu",
                                       resume_state: dict | None = None, tokenizer_threads: int = 4,
                                       tokenizer_batch_size: int = 128, files: list[str] | None = None,
                                       rank: int | None = None, world_size: int | None = None):
    """Yield (inputs (B, T) int64, targets (B, T) int64, state) forever for this rank."""
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world_size is None else world_size
    files = split_files(split) if files is None else files
    state = dict(resume_state) if resume_state else {"epoch": 0, "shard": 0, "row_group": rank, "doc": 0, "token": 0}
    bos = tokenizer.get_bos_token_id()
    docs = _documents(files, rank, world, state)
    pending: deque[list] = deque()  # [cursor, token ids, first unconsumed index]
    skip = state["token"]  # tokens of the first document already consumed before the resume
    use_cuda = torch.device(device).type == "cuda"
    need = B * T + 1
    while True:
        # keep enough tokenized documents to fill the batch, tokenizing in parallel batches
        while sum(len(ids) - i for _, ids, i in pending) <= need:  # keep a head for the state
            batch = [next(docs) for _ in range(tokenizer_batch_size)]
            token_lists = tokenizer.encode([text for _, text in batch], prepend=bos, num_threads=tokenizer_threads)
            for (cursor, _), ids in zip(batch, token_lists):
                pending.append([cursor, ids, skip])
                skip = 0
        out: list[int] = []
        while len(out) < need:
            entry = pending[0]
            cursor, ids, i = entry
            take = min(need - len(out), len(ids) - i)
            out.extend(ids[i:i + take])
            entry[2] = i + take
            if entry[2] == len(ids):
                pending.popleft()
        head_cursor, _, head_offset = pending[0]
        epoch, shard, rg, d = head_cursor
        state = {"epoch": epoch, "shard": shard, "row_group": rg, "doc": d, "token": head_offset}
        buf = torch.tensor(out, dtype=torch.long)
        if use_cuda:
            buf = buf.pin_memory().to(device, non_blocking=True)
        elif str(device) != "cpu":
            buf = buf.to(device)
        inputs = buf[:-1].view(B, T)  # (B, T)
        targets = buf[1:].view(B, T)  # (B, T)
        yield inputs, targets, state
