"""Bits per byte: the loss that does not depend on the tokenizer's vocabulary."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, batches: Iterator, steps: int, token_bytes: torch.Tensor,
                 autocast=None) -> float:
    """Sum of cross-entropy (nats) over target tokens / (ln 2 · their UTF-8 bytes), over `steps`
    batches (all ranks). Special tokens (0 bytes) and ignored targets (-1) count for nothing."""
    device = token_bytes.device
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.float64, device=device)
    for _ in range(steps):
        x, y = next(batches)[:2]
        with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
            loss = model(x, y, loss_reduction="none").float()  # (B, T) nats
        y = y.flatten()
        valid = y >= 0
        nbytes = torch.where(valid, token_bytes[y.clamp(min=0)], torch.zeros_like(y))  # (B*T,)
        total_nats += (loss.flatten() * (nbytes > 0)).sum().double()
        total_bytes += nbytes.sum().double()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total_nats)
        dist.all_reduce(total_bytes)
    if total_bytes.item() == 0:
        return float("inf")
    return total_nats.item() / (math.log(2) * total_bytes.item())
