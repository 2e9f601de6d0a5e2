"""Checkpoint format: round trip, atomic commit under SIGKILL, clear errors for damaged files."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nanochat.checkpoint_manager import (CheckpointError, build_model, committed_steps, load_checkpoint,
                                         restore_rank_state, save_checkpoint, step_dir)
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer

CFG = GPTConfig(sequence_len=16, vocab_size=265, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)


def tiny_model():
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(CFG)
    model.to_empty(device="cpu")
    model.init_weights()
    return model


def trained_state(model):
    opts = model.setup_optimizers()
    x = torch.randint(0, CFG.vocab_size, (2, 16))
    for _ in range(2):
        model(x, x).backward()
        for o in opts:
            o.step()
        model.zero_grad()
    return opts


def test_roundtrip(tmp_path):
    model = tiny_model()
    opts = trained_state(model)
    save_checkpoint(tmp_path, 3, model, opts, {"model_config": CFG.to_dict(), "loop_state": {"x": 1}},
                    rank_state={"dataloader": {"shard": 2}})
    assert committed_steps(tmp_path) == [3]
    state, rank_part, meta = load_checkpoint(tmp_path, 3)
    assert meta["step"] == 3 and meta["loop_state"] == {"x": 1}
    model2 = tiny_model()
    model2.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    opts2 = model2.setup_optimizers()
    assert restore_rank_state(rank_part, opts2) == {"dataloader": {"shard": 2}}
    for o1, o2 in zip(opts, opts2):
        t1, _ = o1.flat_state_dict()
        t2, _ = o2.flat_state_dict()
        assert t1.keys() == t2.keys() and all(torch.equal(t1[k], t2[k]) for k in t1)


def test_sigkill_during_save_keeps_previous_step(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path, 1, model, [], {"model_config": CFG.to_dict()})
    # a child process starts saving step 2 and is SIGKILLed just before meta.json: nothing committed
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        import nanochat.checkpoint_manager as cm
        from tests.test_checkpoint import tiny_model, CFG
        real = cm._write_json
        def killer(path, obj):
            if path.name == "meta.json":
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, obj)
        cm._write_json = killer
        cm.save_checkpoint({str(tmp_path)!r}, 2, tiny_model(), [], {{"model_config": CFG.to_dict()}})
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert (tmp_path / "step_000002.tmp" / "model.safetensors").exists()
    assert committed_steps(tmp_path) == [1]
    load_checkpoint(tmp_path, 1)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_weights_give_clear_error(tmp_path, damage):
    save_checkpoint(tmp_path, 5, tiny_model(), [], {"model_config": CFG.to_dict()})
    path = step_dir(tmp_path, 5) / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path, 5)


def test_missing_checkpoint_and_vocab_mismatch(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path, 7)
    save_checkpoint(tmp_path, 1, tiny_model(), [], {"model_config": CFG.to_dict()})
    tok = Tokenizer.train_from_iterator(["hello world"] * 10, 300)
    with pytest.raises(CheckpointError, match="vocab size"):
        build_model(tmp_path, 1, "cpu", tokenizer=tok)
    meta = json.loads((step_dir(tmp_path, 1) / "meta.json").read_text())
    assert set(meta["files"]) == {"model.safetensors", "rank0.safetensors", "rank0.json"}
