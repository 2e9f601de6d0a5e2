"""The pieces every training script shares: the step log, flag types, one optimizer step, and
--device-batch-size auto probing real training steps on a tiny model."""

import argparse
import re
from contextlib import nullcontext

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig
from nanochat.training import (StepLog, auto_device_batch_size, batch_candidates, batch_size_or_auto, positive_int,
                               step_memory, train_step, unit_fraction)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seq_len: int = 64, vocab_size: int = 256) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=seq_len, vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=2, n_embd=64))
    model.init_weights()
    return model


def test_first_step_eta_is_a_number():
    log = StepLog(num_iterations=10, flops_per_token=1e6, peak_flops=1e12, world_size=1)
    line, _ = log.update(1, loss=3.0, lrm=1.0, dt=2.0, tokens=1000)
    eta = float(line.split("eta ")[1].rstrip("m"))
    assert eta == pytest.approx(9 * 2.0 / 60, abs=0.05)  # 9 steps left at the first step's 2 s
    line, _ = log.update(2, loss=3.0, lrm=1.0, dt=1.0, tokens=1000)  # from now on: timed steps only
    assert float(line.split("eta ")[1].rstrip("m")) == pytest.approx(8 * 1.0 / 60, abs=0.05)
    assert "nan" not in line


def test_flag_types():
    assert positive_int("3") == 3 and unit_fraction("0.5") == 0.5
    assert batch_size_or_auto("auto") == "auto" and batch_size_or_auto("16") == 16
    for fn, text, message in ((positive_int, "0", "must be positive"), (positive_int, "x", "invalid int"),
                              (unit_fraction, "1.5", "in [0, 1]"), (batch_size_or_auto, "-2", "must be positive")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            fn(text)


def test_batch_candidates_keep_the_total_batch():
    # 524,288 tokens of 2048-token rows on 8 processes: 32 rows each at most
    assert batch_candidates(524288, 2048, 8) == [32, 16, 8, 4, 2, 1]
    assert batch_candidates(524288, 2048, 1) == [64, 32, 16, 8, 4, 2, 1]
    assert batch_candidates(24, 1, 1) == [8, 4, 2, 1]
    with pytest.raises(SystemExit, match="no device batch size"):
        batch_candidates(100, 64, 1)


def test_train_step_accumulates_like_one_big_batch():
    x, y = torch.randint(0, 256, (4, 64)), torch.randint(0, 256, (4, 64))
    weights = []
    for micro in ([(x, y)], [(x[:2], y[:2]), (x[2:], y[2:])]):
        model = tiny_model()
        optimizers = model.setup_optimizers()
        losses = train_step(model, optimizers, micro, nullcontext(), lrm=1.0, loss_scale=1 / len(micro))
        assert len(losses) == len(micro) and all(p.grad is None for p in model.parameters())
        weights.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_auto_device_batch_size_backs_off_to_what_fits():
    model = tiny_model()
    optimizers = model.setup_optimizers()
    before = [p.detach().clone() for p in model.parameters()]
    candidates = batch_candidates(8 * 64, 64, 1)  # [8, 4, 2, 1]
    # a budget nothing can exceed: the largest, after one real step
    assert auto_device_batch_size(model, optimizers, nullcontext(), 64, 256, candidates, budget_bytes=2**40) == 8
    # a budget just under what batch 8 needs (measured the same way): it backs off to 4
    x = torch.randint(0, 256, (8, 64))
    peak8, _ = step_memory(lambda: train_step(model, optimizers, [(x, x)], nullcontext(), lrm=0.0), x.device)
    model.zero_grad(set_to_none=True)
    for opt in optimizers:
        opt.state.clear()
    chosen = auto_device_batch_size(model, optimizers, nullcontext(), 64, 256, candidates, budget_bytes=peak8 - 1)
    assert chosen == 4
    # probing trains at learning rate 0 and leaves no optimizer state behind
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(not opt.state for opt in optimizers)
    with pytest.raises(SystemExit, match="not even batch 1 fits"):
        auto_device_batch_size(model, optimizers, nullcontext(), 64, 256, candidates, budget_bytes=1)


def test_auto_device_batch_size_without_budget_on_cpu():
    model = tiny_model()
    optimizers = model.setup_optimizers()
    assert auto_device_batch_size(model, optimizers, nullcontext(), 64, 256, [64, 32, 16, 8, 4]) == 8
    assert auto_device_batch_size(model, optimizers, nullcontext(), 64, 256, [32, 16]) == 16
