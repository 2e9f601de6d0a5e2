"""What every training script shares: precision, the LR schedule, resuming, the step log line.

The loops themselves stay in the scripts (base_train, mid_train, chat_sft, chat_rl), which read
top to bottom; this module holds the pieces they would otherwise each write again.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from nanochat.checkpoint_manager import (CheckpointError, committed_steps, load_checkpoint, restore_rank_state)
from nanochat.common import autodetect_dtype, print0


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
    """The fixed-format line per step: step, loss (EMA, debiased), lr multiplier, dt, tokens/s, MFU, ETA.
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
        eta = (self.num_iterations - step) * self.total_time / self.timed_steps if self.timed_steps else float("nan")
        line = (f"step {step:05d}/{self.num_iterations:05d} ({100 * step / self.num_iterations:5.1f}%) | "
                f"loss {debiased:.6f} | lrm {lrm:.2f} | dt {dt * 1000:.0f}ms | tok/s {tok_per_s:,.0f} | "
                f"mfu {mfu:.1f}% | eta {eta / 60:.1f}m")
        return line, {"loss": debiased, "lrm": lrm, "dt": dt, "tok_per_s": tok_per_s, "mfu": mfu}


def oom_exit(device_batch_size: int) -> None:
    print0(f"out of memory at --device-batch-size={device_batch_size}: try "
           f"--device-batch-size={max(1, device_batch_size // 2)} (gradient accumulation keeps the total batch)")
    sys.exit(1)


def init_wandb(run: str, master: bool, config: dict, project: str = "nanochat"):
    """A wandb run when --run is not 'dummy' (rank 0 only; WANDB_MODE=offline works without network)."""
    if run == "dummy" or not master:
        return None
    import wandb

    return wandb.init(project=project, name=run, config=config)
