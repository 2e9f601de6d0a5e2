"""Training throughput: tokens/s and MFU of full training steps (forward, backward, Muon + AdamW)
against the matmul peak measured on this machine in the same run.

    python -m dev.bench_train                                    # CPU: d2, 4 × 128 tokens
    python -m dev.bench_train --depth 12 --device-batch-size 16 --seq-len 2048     # one GPU
    torchrun --nproc_per_node=8 -m dev.bench_train --depth 20 --device-batch-size 32 --seq-len 2048

Rows: the plain step, the step with activation checkpointing (expected slower: recompute), and
with --compile the torch.compile'd model. MFU = estimate_flops() · tokens/s / (peak · ranks), peak
being a square matmul in the training dtype (bf16 on CUDA, fp32 on CPU). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from nanochat.common import autodetect_device_type, print0
from nanochat.gpt import GPT, GPTConfig

parser = argparse.ArgumentParser(description="training tokens/s and MFU vs the measured matmul peak")
parser.add_argument("--depth", type=int, default=2, help="model depth (width = 64·depth)")
parser.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size")
parser.add_argument("--seq-len", type=int, default=128, help="tokens per row")
parser.add_argument("--device-batch-size", type=int, default=4, help="rows per forward per rank")
parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
parser.add_argument("--matmul-size", type=int, default=-1, help="side of the peak matmul (-1 = 4096 GPU, 1024 CPU)")
parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd model")
args = parser.parse_args()

# -------------------------------------------------------------------------------------------------
distributed = "RANK" in os.environ
device_type = autodetect_device_type()
if distributed:
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
world = dist.get_world_size() if distributed else 1
device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device(device_type)
dtype = torch.bfloat16 if device_type == "cuda" else torch.float32
autocast = torch.autocast(device_type, dtype=torch.bfloat16) if device_type == "cuda" else nullcontext()


def sync() -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def matmul_peak() -> float:
    """FLOP/s of a square matmul in the training dtype: the denominator of MFU."""
    n = args.matmul_size if args.matmul_size > 0 else (4096 if device_type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    reps = 20 if device_type == "cuda" else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def time_steps(checkpointing: bool, compiled: bool) -> tuple[float, int]:
    """(seconds per optimizer step, FLOPs per token); one forward/backward per rank per step."""
    torch.manual_seed(0)
    cfg = GPTConfig.from_depth(args.depth, vocab_size=args.vocab_size, sequence_len=args.seq_len)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.init_weights()
    model.set_activation_checkpointing(checkpointing)
    optimizers = model.setup_optimizers(compile=compiled)
    forward = torch.compile(model, dynamic=False) if compiled else model
    x = torch.randint(0, args.vocab_size, (args.device_batch_size, args.seq_len), device=device)
    y = torch.randint(0, args.vocab_size, (args.device_batch_size, args.seq_len), device=device)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync()
            t0 = time.perf_counter()
        with autocast:
            loss = forward(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - t0) / args.steps, model.estimate_flops()


# -------------------------------------------------------------------------------------------------
peak = matmul_peak()
configs = [("eager", False, False), ("activation checkpointing", True, False)]
if args.compile:
    configs.append(("torch.compile", False, True))
tokens_per_step = args.device_batch_size * args.seq_len * world
rows = []
for name, checkpointing, compiled in configs:
    dt, flops_per_token = time_steps(checkpointing, compiled)
    tok_s = tokens_per_step / dt
    rows.append(dict(config=name, step_s=dt, tokens_per_s=tok_s, mfu=flops_per_token * tok_s / (peak * world)))

print0(f"depth {args.depth} | {device_type} ×{world} | {tokens_per_step:,} tokens/step | "
       f"matmul peak {peak / 1e12:.3f} TFLOP/s per rank ({dtype})")
print0(f"{'config':<26}{'step (s)':>10}{'tokens/s':>12}{'MFU':>8}{'vs eager':>10}")
for row in rows:
    print0(f"{row['config']:<26}{row['step_s']:>10.4f}{row['tokens_per_s']:>12,.0f}{row['mfu']:>8.2%}"
           f"{row['tokens_per_s'] / rows[0]['tokens_per_s']:>10.2f}")
print0(json.dumps(dict(bench="train", depth=args.depth, device=device_type, world_size=world,
                       tokens_per_step=tokens_per_step, matmul_peak_flops=peak, results=rows)))
if distributed:
    dist.barrier()
    dist.destroy_process_group()
