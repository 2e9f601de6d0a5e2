"""Training worker for tests/test_optim.py: the same few optimizer steps on 1 or N processes.

    torchrun --nproc_per_node=2 tests/_dist_optim_worker.py --out DIR --scenarios 128:auto:2 131:reduce_scatter:1
    (test_optim.py also loads run() and calls it in-process as the 1-process reference)

Each scenario trains a tiny GPT for `steps` steps on a fixed global batch of world·accum
micro-batches per step (rank r takes micro-batches r·accum .. (r+1)·accum-1), with the LR and
Muon-momentum schedules moving every step. At `resume_at` it checkpoints (weights + this rank's
optimizer shard as safetensors + JSON), trains on, then rebuilds everything from the checkpoint,
trains the same steps again and requires bit-identical parameters. It also requires every rank to
hold identical replicas. Rank 0 writes the final parameters to DIR/<vocab>_<mode>_<accum>.safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script by torchrun

import nanochat.optim as optim  # noqa: E402
from nanochat.gpt import GPT, GPTConfig  # noqa: E402

# 3 layers: 3 matrices per Muon shape group, so 2 ranks also exercise the padded block
SHAPE = dict(sequence_len=32, n_layer=3, n_head=2, n_kv_head=2, n_embd=64)
BATCH, STEPS, RESUME_AT = 2, 6, 3
MODES = {"auto": None, "all_reduce": True, "reduce_scatter": False}


def build(vocab: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=vocab, **SHAPE))
    model.to_empty(device="cpu")
    model.init_weights()
    return model


def micro_batch(step: int, index: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + index)
    data = torch.randint(0, vocab, (BATCH, SHAPE["sequence_len"] + 1), generator=g)
    return data[:, :-1], data[:, 1:]  # (B, T) each


def train(model: GPT, optimizers: list, start: int, end: int, accum: int, vocab: int) -> None:
    rank = dist.get_rank() if dist.is_initialized() else 0
    for step in range(start, end):
        for i in range(accum):
            x, y = micro_batch(step, rank * accum + i, vocab)
            (model(x, y) / accum).backward()
        lr_mult = 1.0 - 0.1 * step
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_mult
                if "momentum" in group:
                    group["momentum"] = 0.85 + 0.02 * step  # the Muon warm-up ramp
            opt.step()
        model.zero_grad(set_to_none=True)


def new_optimizers(model: GPT) -> list:
    return model.setup_optimizers(weight_decay=0.01)


def run(out: Path, vocab: int, accum: int, mode: str) -> dict[str, torch.Tensor]:
    """Train one scenario, check exact resume and identical replicas; return the final weights."""
    saved_mode = optim.REDUCE_SCATTER_VIA_ALL_REDUCE
    optim.REDUCE_SCATTER_VIA_ALL_REDUCE = MODES[mode]
    try:
        return _run(out, vocab, accum)
    finally:
        optim.REDUCE_SCATTER_VIA_ALL_REDUCE = saved_mode


def _run(out: Path, vocab: int, accum: int) -> dict[str, torch.Tensor]:
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    ckpt = out / f"ckpt_{vocab}_{accum}_w{world}"
    ckpt.mkdir(parents=True, exist_ok=True)

    model = build(vocab, seed=0)
    optimizers = new_optimizers(model)
    train(model, optimizers, 0, RESUME_AT, accum, vocab)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt / "model.safetensors")
    for i, opt in enumerate(optimizers):
        tensors, meta = opt.flat_state_dict()
        save_file(tensors, ckpt / f"optim{i}_rank{rank}.safetensors")
        (ckpt / f"optim{i}_rank{rank}.json").write_text(json.dumps(meta))
    if dist.is_initialized():
        dist.barrier()
    train(model, optimizers, RESUME_AT, STEPS, accum, vocab)
    final = {k: v.clone() for k, v in model.state_dict().items()}

    # resume: a differently initialised model, restored from the files only
    resumed = build(vocab, seed=123)
    resumed.load_state_dict(load_file(ckpt / "model.safetensors"))
    resumed_opts = new_optimizers(resumed)
    for i, opt in enumerate(resumed_opts):
        meta = json.loads((ckpt / f"optim{i}_rank{rank}.json").read_text())
        opt.load_flat_state_dict(load_file(ckpt / f"optim{i}_rank{rank}.safetensors"), meta)
    train(resumed, resumed_opts, RESUME_AT, STEPS, accum, vocab)
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, final[k]), f"rank {rank}: resumed {k} differs from uninterrupted run"

    if world > 1:
        for k, v in final.items():
            reference = v.clone()
            dist.broadcast(reference, src=0)
            assert torch.equal(v, reference), f"rank {rank}: replica of {k} differs from rank 0"
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for checkpoints and results")
    parser.add_argument("--scenarios", nargs="+", required=True,
                        help="VOCAB:MODE:ACCUM triples; MODE in auto|all_reduce|reduce_scatter, "
                             "ACCUM = micro-batches per rank per step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    for scenario in args.scenarios:
        vocab, mode, accum = scenario.split(":")
        final = run(args.out, int(vocab), int(accum), mode)
        if not distributed or dist.get_rank() == 0:
            save_file(final, args.out / f"{vocab}_{mode}_{accum}.safetensors")
    if distributed:
        # gloo can abort ("terminate called without an active exception") when one rank tears
        # down its process group while the other is still busy; leave together
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
