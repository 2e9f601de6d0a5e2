"""What every training script shares: flag types, the run set-up, precision, the LR schedule, one
optimizer step (accumulation, OOM handling), the automatic device batch size, the source-checkpoint
loader, resuming and the step log line.

The loops themselves stay in the scripts (base_train, mid_train, chat_sft, chat_rl), which read
top to bottom; this module holds the pieces they would otherwise each write again.
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from nanochat.checkpoint_manager import (CheckpointError, committed_steps, load_checkpoint, load_model,
                                         restore_rank_state)
from nanochat.common import autodetect_dtype, compute_init, print0

GIB = 2**30

# what base_train and base_loss complete to show what a base model knows
SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is",
                  "If yesterday was Friday, then tomorrow will be", "The opposite of hot is",
                  "The planets of the solar system are:", "My favorite color is", "If 5*x + 3 = 13, then x is"]

# -------------------------------------------------------------------------------------------------
# Flag types: argparse reports a bad value as "argument --x: invalid ... value" and exits 2


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def unit_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def batch_size_or_auto(text: str) -> int | str:
    """--device-batch-size: a positive int, or 'auto' (see auto_device_batch_size)."""
    return "auto" if text == "auto" else positive_int(text)


def add_run_flags(parser: argparse.ArgumentParser, compile_default: str | None = "auto",
                  compile_help: str = "torch.compile (auto: on for CUDA)") -> None:
    """The flags init_run reads: --run, --device-type, --dtype and, unless compile_default is None, --compile."""
    parser.add_argument("--run", default="dummy", help="wandb run name ('dummy' = no wandb)")
    parser.add_argument("--device-type", default="auto", choices=["auto", "cuda", "cpu", "mps"], help="device")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="autocast dtype for matmuls (weights and optimizer state stay float32)")
    if compile_default is not None:
        parser.add_argument("--compile", default=compile_default, choices=["auto", "on", "off"], help=compile_help)


def add_lr_flags(parser: argparse.ArgumentParser, init_lr_frac: float | None = None) -> None:
    """The learning rates GPT.setup_optimizers takes and, for a stage that starts from a trained
    model (init_lr_frac given), --init-lr-frac: the fraction of them it starts at."""
    parser.add_argument("--embedding-lr", type=float, default=0.2, help="AdamW lr of the embedding (scaled by width)")
    parser.add_argument("--unembedding-lr", type=float, default=0.004, help="AdamW lr of the head (scaled by width)")
    parser.add_argument("--matrix-lr", type=float, default=0.02, help="Muon lr of the block matrices")
    if init_lr_frac is not None:
        parser.add_argument("--init-lr-frac", type=unit_fraction, default=init_lr_frac,
                            help="learning rates relative to the flags above")


# -------------------------------------------------------------------------------------------------
# Set-up


@dataclass
class Run:
    """What compute_init, the precision and compile flags and wandb give every training script."""

    ddp: bool
    rank: int
    world_size: int
    device: torch.device
    dtype_name: str
    autocast: Any  # context manager
    use_compile: bool
    ns_dtype: torch.dtype | None  # Muon's Newton-Schulz dtype
    wandb: Any  # a wandb run or None

    @property
    def master(self) -> bool:
        return self.rank == 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def init_run(device_type: str, dtype_flag: str, compile_flag: str, run_name: str, config: dict,
             project: str = "nanochat", seed: int = 42) -> Run:
    """compute_init, precision, the compile decision (auto: on for CUDA) and the wandb run."""
    ddp, rank, _, world_size, device = compute_init(device_type, seed=seed)
    dtype_name, autocast = precision(device.type, dtype_flag)
    use_compile = compile_flag == "on" or (compile_flag == "auto" and device.type == "cuda")
    # Newton-Schulz in bf16 whenever training is: 1.4x faster optimizer step on CPU, loss within 0.2% (dev/LOG.md)
    ns_dtype = torch.bfloat16 if dtype_name == "bfloat16" else None
    wandb_run = init_wandb(run_name, rank == 0, config, project=project)
    return Run(ddp, rank, world_size, device, dtype_name, autocast, use_compile, ns_dtype, wandb_run)


def load_source_or_exit(stage: str, device, model_tag: str | None, step: int | None, who: str):
    """The model a stage starts from: (model, tokenizer, meta, model_tag) of `stage`'s checkpoint, in
    train mode. The tag is --model-tag, else the one the source run was given, else d<depth>. A
    missing or damaged checkpoint ends the run with one sentence."""
    try:
        model, tokenizer, meta = load_model(stage, device, phase="train", model_tag=model_tag, step=step)
    except CheckpointError as e:
        raise SystemExit(f"{who}: {e}") from None
    tag = model_tag or meta["args"].get("model_tag") or f"d{model.config.n_layer}"
    return model, tokenizer, meta, tag


def precision(device_type: str, dtype_flag: str):
    """(dtype name, autocast context) for --dtype auto|float32|bfloat16. Weights and optimizer state
    stay float32; bf16 autocast only changes the matmuls."""
    name = autodetect_dtype(device_type) if dtype_flag == "auto" else dtype_flag
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if name == "bfloat16" else nullcontext()
    return name, ctx


def lr_multiplier(step: int, num_iterations: int, warmup_ratio: float = 0.0, warmdown_ratio: float = 0.2,
                  final_lr_frac: float = 0.0) -> float:
    """Linear warmup, constant, linear warmdown to final_lr_frac at the last step."""
    warmup, warmdown = round(warmup_ratio * num_iterations), round(warmdown_ratio * num_iterations)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_iterations - warmdown:
        return 1.0
    progress = (num_iterations - step) / warmdown
    return progress + (1 - progress) * final_lr_frac


def set_lr(optimizers: list, lrm: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm


def muon_momentum(step: int, start: float = 0.85, end: float = 0.95, ramp_steps: int = 300) -> float:
    """Muon's momentum ramps from `start` to `end` over the first `ramp_steps` steps."""
    frac = min(step / ramp_steps, 1.0)
    return (1 - frac) * start + frac * end


def resume(checkpoint_dir: Path, model: torch.nn.Module, optimizers: list, model_config: dict, world_size: int,
           rank: int, device) -> tuple[int, dict, dict]:
    """Load the last committed checkpoint of checkpoint_dir into model and optimizers.

    Returns (step, loop_state, rank_state); (0, {}, {}) when there is nothing to resume. A checkpoint
    that does not fit (other model shape, other process count, damaged file) ends the run with one
    sentence saying why."""
    steps = committed_steps(checkpoint_dir)
    if not steps:
        print0(f"--resume: no committed checkpoint in {checkpoint_dir}; starting from scratch")
        return 0, {}, {}
    try:
        model_state, rank_part, meta = load_checkpoint(checkpoint_dir, steps[-1], device, rank=rank)
        if meta["model_config"] != model_config:
            raise CheckpointError(f"{checkpoint_dir} holds a model {meta['model_config']}, this run builds "
                                  f"{model_config}: use the same model flags to resume")
        if meta["world_size"] != world_size:
            raise CheckpointError(f"the checkpoint was written by {meta['world_size']} processes, this run has "
                                  f"{world_size}: resume with the same number of processes")
        model.load_state_dict(model_state, strict=True)
        rank_state = restore_rank_state(rank_part, optimizers)
    except CheckpointError as e:
        print0(f"cannot resume: {e}")
        sys.exit(1)
    print0(f"resumed from {checkpoint_dir}/step_{meta['step']:06d}")
    return meta["step"], meta.get("loop_state", {}), rank_state


class StepLog:
    """The fixed-format line per step: step, loss (EMA, debiased), lr multiplier, dt, tokens/s, MFU, ETA,
    and on CUDA the peak memory allocated so far.
    The EMA and the time spent are loop state, saved in checkpoints so resumed logs continue exactly."""

    def __init__(self, num_iterations: int, flops_per_token: float, peak_flops: float | None, world_size: int,
                 state: dict | None = None, beta: float = 0.9):
        self.num_iterations, self.flops_per_token = num_iterations, flops_per_token
        self.peak, self.world_size, self.beta = peak_flops, world_size, beta
        state = state or {}
        self.smooth_loss = state.get("smooth_loss", 0.0)
        self.total_time = state.get("total_time", 0.0)
        self.timed_steps = state.get("timed_steps", 0)
        self.first = True  # the first step of a process includes warm-up/compilation: not timed

    def state(self) -> dict:
        return {"smooth_loss": self.smooth_loss, "total_time": self.total_time, "timed_steps": self.timed_steps}

    def update(self, step: int, loss: float, lrm: float, dt: float, tokens: int) -> tuple[str, dict]:
        """step: the number of steps done. Returns the line and the numbers (for wandb)."""
        self.smooth_loss = self.beta * self.smooth_loss + (1 - self.beta) * loss
        debiased = self.smooth_loss / (1 - self.beta**step)
        if not self.first:
            self.total_time += dt
            self.timed_steps += 1
        self.first = False
        tok_per_s = tokens / dt
        mfu = 100 * self.flops_per_token * tok_per_s / (self.peak * self.world_size) if self.peak else float("nan")
        # until a step has been timed, the first one (compilation included) is the only estimate
        per_step = self.total_time / self.timed_steps if self.timed_steps else dt
        eta = (self.num_iterations - step) * per_step
        line = (f"step {step:05d}/{self.num_iterations:05d} ({100 * step / self.num_iterations:5.1f}%) | "
                f"loss {debiased:.6f} | lrm {lrm:.2f} | dt {dt * 1000:.0f}ms | tok/s {tok_per_s:,.0f} | "
                f"mfu {mfu:.1f}% | eta {eta / 60:.1f}m")
        numbers = {"loss": debiased, "lrm": lrm, "dt": dt, "tok_per_s": tok_per_s, "mfu": mfu}
        if torch.cuda.is_initialized():
            numbers["peak_mem_gib"] = torch.cuda.max_memory_allocated() / GIB
            line += f" | mem {numbers['peak_mem_gib']:.1f}GiB"
        return line, numbers


def oom_exit(device_batch_size: int) -> None:
    print0(f"out of memory at --device-batch-size={device_batch_size}: try "
           f"--device-batch-size={max(1, device_batch_size // 2)} or --device-batch-size=auto "
           f"(gradient accumulation keeps the total batch)")
    sys.exit(1)


# -------------------------------------------------------------------------------------------------
# One optimizer step


def train_step(model: torch.nn.Module, optimizers: list, batches: Iterable[tuple[Tensor, Tensor]], autocast,
               lrm: float, momentum: float | None = None, loss_scale: float | Tensor = 1.0,
               reduction: str = "mean", exit_on_oom: bool = True) -> list[Tensor]:
    """Forward and backward of every micro-batch (x, y), gradients adding up; then the learning
    rates (initial_lr × lrm) and Muon's momentum set, every optimizer stepped, gradients cleared.

    Each micro-batch's loss is multiplied by loss_scale before its backward (1/accumulation steps
    for a mean over the step). Returns the unscaled losses, detached. Out of memory ends the run
    with the device batch size to try instead, unless exit_on_oom is False (then it raises)."""
    losses = []
    device_batch_size = 0
    try:
        for x, y in batches:
            device_batch_size = x.size(0)
            with autocast:
                loss = model(x, y, loss_reduction=reduction)
            (loss * loss_scale).backward()
            losses.append(loss.detach())
        set_lr(optimizers, lrm)
        if momentum is not None:
            for opt in optimizers:
                for group in opt.param_groups:
                    if "momentum" in group:
                        group["momentum"] = momentum
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    except torch.OutOfMemoryError:
        if not exit_on_oom:
            raise
        oom_exit(device_batch_size)
    return losses


class PendingBatches:
    """A resumable (x, y, state) loader with one batch fetched ahead: `cursor` is the loader state
    that reproduces the pending batch, which is what a checkpoint saves."""

    def __init__(self, loader: Iterator, cursor: Any = None):
        self.loader, self.cursor = loader, cursor
        self.x, self.y, self.next_cursor = next(loader)

    def take(self, n: int) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(n):
            yield self.x, self.y
            self.cursor = self.next_cursor
            self.x, self.y, self.next_cursor = next(self.loader)


def timed(run: Run, fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, float]:
    """(fn(*args, **kwargs), seconds), the device synchronised before and after."""
    run.sync()
    t0 = time.time()
    out = fn(*args, **kwargs)
    run.sync()
    return out, time.time() - t0


# -------------------------------------------------------------------------------------------------
# --device-batch-size auto

AUTO_MAX_BATCH = 64  # the largest device batch auto tries
AUTO_CPU_BATCH = 8  # auto without a memory budget (CPU, MPS): the CPU preset's batch, no probing
AUTO_HEADROOM = 0.90  # a step may peak at this fraction of the card's memory


def step_memory(fn: Callable[[], Any], device: torch.device, largest: bool = True) -> tuple[int, int]:
    """(peak bytes above what was allocated before, largest single allocation) of one call of fn.
    CUDA: max_memory_allocated for the peak; torch.profiler memory events (every allocation and
    free, in order) for the rest, skipped on CUDA when largest is False (the largest is then 0)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    if cuda and not largest:
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, 0
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                 profile_memory=True) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    wanted = "CUDA" if cuda else "CPU"
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and wanted in str(e.device_type())), key=lambda e: e.start_ns())
    biggest = max((e.nbytes() for e in events), default=0)
    if cuda:
        return torch.cuda.max_memory_allocated() - before, biggest
    live = peak = 0
    for e in events:  # nbytes < 0 is a free
        live += e.nbytes()
        peak = max(peak, live)
    return peak, biggest


def batch_candidates(per_step: int, per_row: int, world_size: int, max_batch: int = AUTO_MAX_BATCH) -> list[int]:
    """Powers of two ≤ max_batch, largest first, whose micro-batches add up to exactly per_step
    (tokens or examples per optimizer step; a row is per_row of them)."""
    out = [b for b in (2**i for i in range(max_batch.bit_length() - 1, -1, -1))
           if per_step % (b * per_row * world_size) == 0]
    if not out:
        raise SystemExit(f"no device batch size divides the step: {per_step:,} is not a multiple of "
                         f"{per_row * world_size:,} (row × processes); change the total batch size")
    return out


def auto_device_batch_size(model: torch.nn.Module, optimizers: list, autocast, seq_len: int, vocab_size: int,
                           candidates: list[int], forward: torch.nn.Module | None = None,
                           budget_bytes: int | None = None) -> int:
    """The largest candidate device batch whose training step fits in memory with headroom.

    Each try is one real step of `forward` (the compiled model, if any) at the real shapes: random
    tokens (b, seq_len), forward, backward, optimizer step at learning rate 0, so the weights do not
    move; the optimizer state it creates is dropped afterwards. A try fails when it runs out of memory
    or peaks above the budget (default: AUTO_HEADROOM of the CUDA card); then the next smaller one
    is tried. Without a budget off CUDA there is nothing to probe: AUTO_CPU_BATCH (or the largest
    candidate below it), because CPU memory is rarely the limit and a larger batch is not faster there.
    Under torchrun every process probes and all take the smallest choice (the cards are assumed
    alike: a rank that runs out of memory where the others do not would leave them waiting)."""
    device = next(model.parameters()).device
    forward = forward or model
    if budget_bytes is None:
        if device.type != "cuda":
            choice = next((b for b in candidates if b <= AUTO_CPU_BATCH), candidates[-1])
            print0(f"--device-batch-size auto: {choice} ({device.type}: no memory probe, the CPU preset's batch)")
            return choice
        budget_bytes = int(AUTO_HEADROOM * torch.cuda.get_device_properties(device).total_memory)
    tried = []
    choice = None
    for b in candidates:
        x = torch.randint(0, vocab_size, (b, seq_len), device=device)
        resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0  # weights, optimizer state
        try:
            peak, _ = step_memory(functools.partial(train_step, forward, optimizers, [(x, x)], autocast, lrm=0.0,
                                                           exit_on_oom=False), device, largest=False)
            peak += resident
            fits = peak <= budget_bytes
            tried.append(f"{b}: peak {peak / GIB:.2f} GiB" + ("" if fits else " (over the budget)"))
        except torch.OutOfMemoryError:
            fits = False
            tried.append(f"{b}: out of memory")
        del x
        model.zero_grad(set_to_none=True)
        for opt in optimizers:
            opt.state.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # the step log's peak memory counts training only
        if fits:
            choice = b
            break
    if choice is None:
        raise SystemExit(f"--device-batch-size auto: not even batch {candidates[-1]} fits in "
                         f"{budget_bytes / GIB:.1f} GiB ({'; '.join(tried)}): use a smaller model or sequence length")
    if torch.distributed.is_initialized():
        t = torch.tensor(choice, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        choice = int(t.item())
    print0(f"--device-batch-size auto: {choice} (budget {budget_bytes / GIB:.2f} GiB; tried {'; '.join(tried)})")
    return choice


def init_wandb(run: str, master: bool, config: dict, project: str = "nanochat"):
    """A wandb run when --run is not 'dummy' (rank 0 only; WANDB_MODE=offline works without network)."""
    if run == "dummy" or not master:
        return None
    import wandb

    return wandb.init(project=project, name=run, config=config)
