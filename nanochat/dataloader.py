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
from nanochat.data.shards import list_parquet_files

logger = logging.getLogger(__name__)


def split_files(split: str) -> list[str]:
    """The last shard is validation, the others train."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    files = [str(p) for p in list_parquet_files()]
    if len(files) < 2:
        raise FileNotFoundError(f"need at least 2 pretraining shards (train + val), found {len(files)}: "
                                "run `python -m nanochat.data` (or --source offline) first")
    return files[:-1] if split == "train" else files[-1:]


def _documents(files: list[str], rank: int, world: int, start: dict) -> Iterator[tuple[tuple, str]]:
    """(cursor, text) for this rank's documents, forever, from `start`; cursor = (epoch, shard, rg, doc)."""
    epoch = start["epoch"]
    first = (start["shard"], start["row_group"], start["doc"])
    while True:
        read = 0
        for shard in range(first[0], len(files)):
            pf = pq.ParquetFile(files[shard])
            rg0 = first[1] if shard == first[0] else rank
            for rg in range(rg0, pf.num_row_groups, world):
                texts = pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()
                read += 1
                d0 = first[2] if (shard, rg) == first[:2] else 0
                for d in range(d0, len(texts)):
                    yield (epoch, shard, rg, d), texts[d]
        if read == 0 and first[:2] == (0, rank):  # a whole epoch without a row group for this rank
            groups = max(pq.ParquetFile(f).num_row_groups for f in files)
            raise ValueError(f"rank {rank} of {world} has no data: the shards have at most {groups} row groups, "
                             f"one per rank is needed; rebuild the offline corpus (delete base_data and run "
                             f"`python -m nanochat.data --source offline`) or use fewer processes")
        epoch += 1
        first = (0, rank, 0)
        logger.info("dataloader: rank %d starts epoch %d over %d shard(s)", rank, epoch, len(files))


def _pack_batches(sequences: Iterator[tuple[tuple, list[int]]], B: int, T: int, device, skip: int = 0,
                  state_keys: tuple[str, ...] = ()):
    """Concatenate token sequences into (B, T) inputs/targets; yield them with the state that
    resumes right after: the cursor of the first sequence not fully consumed + the tokens of it
    already consumed. `skip` tokens of the first sequence are dropped (a resumed run)."""
    pending: deque[list] = deque()  # [cursor, token ids, first unconsumed index]
    use_cuda = torch.device(device).type == "cuda"
    need = B * T + 1
    available = 0
    while True:
        while available <= need:  # keep a head sequence for the state
            cursor, ids = next(sequences)
            pending.append([cursor, ids, skip])
            available += len(ids) - skip
            skip = 0
        out: list[int] = []
        while len(out) < need:
            entry = pending[0]
            _, ids, i = entry
            take = min(need - len(out), len(ids) - i)
            out.extend(ids[i:i + take])
            entry[2] = i + take
            if entry[2] == len(ids):
                pending.popleft()
        available -= need
        head_cursor, _, head_offset = pending[0]
        state = {**dict(zip(state_keys, head_cursor)), "token": head_offset}
        buf = torch.tensor(out, dtype=torch.long)
        if use_cuda:
            buf = buf.pin_memory().to(device, non_blocking=True)
        elif str(device) != "cpu":
            buf = buf.to(device)
        yield buf[:-1].view(B, T), buf[1:].view(B, T), state  # inputs (B, T), targets (B, T)


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

    def sequences():
        while True:  # tokenize documents in parallel batches
            batch = [next(docs) for _ in range(tokenizer_batch_size)]
            token_lists = tokenizer.encode([text for _, text in batch], prepend=bos, num_threads=tokenizer_threads)
            yield from ((cursor, ids) for (cursor, _), ids in zip(batch, token_lists))

    yield from _pack_batches(sequences(), B, T, device, skip=state["token"],
                             state_keys=("epoch", "shard", "row_group", "doc"))


def conversation_data_loader(tokenizer, task, B: int, T: int, device: str | torch.device = "cpu",
                             resume_state: dict | None = None, rank: int | None = None,
                             world_size: int | None = None):
    """Midtraining batches: the task's conversations (rank r takes examples r, r+W, ...), each
    rendered by render_conversation and packed into one token stream, looping over epochs.
    Yields (inputs (B, T), targets (B, T), state) like the pretraining loader; state["epoch"] and
    state["example"] tell how far through the task this rank is."""
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world_size is None else world_size
    state = dict(resume_state) if resume_state else {"epoch": 0, "example": rank, "token": 0}
    if len(task) <= rank:
        raise ValueError(f"the task has {len(task)} examples, too few for {world} processes")

    def sequences():
        epoch, i = state["epoch"], state["example"]
        while True:
            while i < len(task):
                ids, _ = tokenizer.render_conversation(task[i])
                yield (epoch, i), ids
                i += world
            epoch, i = epoch + 1, rank
            logger.info("conversation loader: rank %d starts epoch %d", rank, epoch)

    yield from _pack_batches(sequences(), B, T, device, skip=state["token"], state_keys=("epoch", "example"))


def padded_batch(rows: list[tuple[list[int], list[int]]], pad_id: int,
                 device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) rows -> inputs (B, L) and targets (B, L) for next-token training, L = longest - 1.
    A target is kept only where the mask of the token it predicts is 1; elsewhere, and in the
    padding, it is -1 (ignored by the loss)."""
    L = max(len(ids) for ids, _ in rows) - 1
    inputs = torch.full((len(rows), L), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), L), -1, dtype=torch.long)
    for b, (ids, mask) in enumerate(rows):
        ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)
        n = len(ids) - 1
        inputs[b, :n] = ids_t[:-1]
        targets[b, :n] = torch.where(mask_t[1:] == 1, ids_t[1:], -1)
    return inputs.to(device), targets.to(device)
