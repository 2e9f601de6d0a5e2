"""Memory of one training step (forward, backward, Muon + AdamW) at fixed shapes: the peak and the
largest single allocation, with the loss computed chunk by chunk (what GPT.forward does) and, as
the old reference, from the full (B·T, V) logits.

    python -m dev.bench_memory                                          # CPU: d2, B=8, T=512, V=65536
    python -m dev.bench_memory --depth 20 --seq-len 2048 --device-batch-size 32 --compile   # one GPU

CPU numbers come from torch.profiler memory events (every allocation and free, in order); CUDA
numbers from torch.cuda.max_memory_allocated (the peak) and the same profiler events (the largest
allocation), both by nanochat.training.step_memory, which --device-batch-size auto uses too.
"resident" is what lives between steps (weights and optimizer state); "peak" is the most allocated
at once during the step, resident included. The measured step is the second one, so the optimizer
state already exists. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from nanochat.common import autodetect_device_type, print0
from nanochat.gpt import GPT, GPTConfig
from nanochat.training import GIB, step_memory


def build(depth: int, vocab_size: int, seq_len: int, device: torch.device, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = GPT(GPTConfig.from_depth(depth, vocab_size, sequence_len=seq_len))
    model.to_empty(device=device)
    model.init_weights()
    with torch.no_grad():  # a zero head gives zero gradients to everything below it; any values do here
        model.lm_head.weight.normal_(0.0, 0.02)
    return model


def full_logits_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss as computed before chunking: the (B·T, V) float32 logits, then cross-entropy."""
    logits = model(x)  # (B, T, V) float32, soft-capped
    return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)


def measure_step(model: GPT, optimizers: list, x: torch.Tensor, y: torch.Tensor, loss_path: str,
                dtype: torch.dtype, compiled=None, warmup: bool = True) -> dict:
    """Train two steps and measure the second (one, measured, without warmup). Returns resident, peak
    and largest allocation in bytes."""
    device = x.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    forward = compiled or model

    def step() -> None:
        with autocast:
            loss = full_logits_loss(forward, x, y) if loss_path == "full" else forward(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

    if warmup:
        step()
    resident = sum(p.numel() * p.element_size() for p in model.parameters())
    resident += sum(t.numel() * t.element_size() for opt in optimizers for state in opt.state.values()
                    for t in state.values() if torch.is_tensor(t))
    if device.type == "cuda":
        resident = torch.cuda.memory_allocated()
    peak, largest = step_memory(step, device)
    return {"resident": resident, "peak": resident + peak, "largest": largest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=65536)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--device-batch-size", type=int, nargs="+", default=[8])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="autocast dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--losses", nargs="+", default=["full", "chunked"], choices=["full", "chunked"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()

    device = torch.device(autodetect_device_type() if args.device == "auto" else args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
    print0(f"device {device}, depth {args.depth}, T {args.seq_len}, V {args.vocab_size:,}, dtype {dtype_name}, "
           f"compile {args.compile}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print0(f"{'B':>4} {'loss':>8} {'resident GiB':>13} {'peak GiB':>9} {'largest GiB':>12} {'largest/full logits':>20}")
    rows = []
    for batch in args.device_batch_size:
        full_logits = batch * args.seq_len * args.vocab_size * 4  # the fp32 (B·T, V) logits
        for loss_path in args.losses:
            model = build(args.depth, args.vocab_size, args.seq_len, device)
            optimizers = model.setup_optimizers(compile=args.compile)
            compiled = torch.compile(model, dynamic=False) if args.compile else None
            g = torch.Generator(device="cpu").manual_seed(1)
            x = torch.randint(0, args.vocab_size, (batch, args.seq_len), generator=g).to(device)
            y = torch.randint(0, args.vocab_size, (batch, args.seq_len), generator=g).to(device)
            try:
                m = measure_step(model, optimizers, x, y, loss_path, dtype, compiled)
            except torch.OutOfMemoryError:
                m = {"resident": float("nan"), "peak": float("inf"), "largest": float("nan")}
                print0(f"{batch:>4} {loss_path:>8} out of memory")
            else:
                print0(f"{batch:>4} {loss_path:>8} {m['resident'] / GIB:>13.3f} {m['peak'] / GIB:>9.3f} "
                       f"{m['largest'] / GIB:>12.3f} {m['largest'] / full_logits:>20.3f}")
            rows.append({"batch": batch, "loss": loss_path, **m, "full_logits": full_logits})
            del model, optimizers, compiled
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(json.dumps({"device": str(device), "depth": args.depth, "seq_len": args.seq_len,
                      "vocab_size": args.vocab_size, "dtype": dtype_name, "compile": args.compile, "rows": rows}))


if __name__ == "__main__":
    main()
