"""Checkpoint format: round trip, atomic commit under SIGKILL, clear errors for damaged files."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from nanochat.checkpoint_manager import (CheckpointError, build_model, committed_steps, load_checkpoint, read_meta,
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


# ------------------------------------------------------------------------------------------------
# a re-save that crashed between its two renames is repaired on list/load


def _crash_between_renames(tmp_path, new_meta_written: bool):
    """The state a crash leaves after `final -> .old` and before `.tmp -> final`."""
    final = save_checkpoint(tmp_path, 5, tiny_model(), [], {"model_config": CFG.to_dict(), "loop_state": {"v": 1}})
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.copytree(final, tmp)
    meta = json.loads((tmp / "meta.json").read_text())
    if new_meta_written:
        (tmp / "meta.json").write_text(json.dumps({**meta, "loop_state": {"v": 2}}))
    else:
        (tmp / "meta.json").unlink()
    os.replace(final, old)
    return final, tmp, old


@pytest.mark.parametrize("new_meta_written", [True, False], ids=["finish", "roll-back"])
def test_interrupted_commit_is_repaired_on_list(tmp_path, new_meta_written):
    final, tmp, old = _crash_between_renames(tmp_path, new_meta_written)
    assert committed_steps(tmp_path) == [5]
    assert not old.exists() and (tmp.exists() != new_meta_written)
    assert read_meta(tmp_path, 5)["loop_state"] == {"v": 2 if new_meta_written else 1}


def test_interrupted_commit_is_repaired_on_load(tmp_path):
    final, tmp, old = _crash_between_renames(tmp_path, new_meta_written=True)
    byte_tokenizer = Tokenizer.from_ranks({bytes([i]): i for i in range(256)})
    model, _, meta = build_model(tmp_path, 5, "cpu", tokenizer=byte_tokenizer)
    assert meta["loop_state"] == {"v": 2} and not old.exists() and final.is_dir()
    # a finished commit that crashed before deleting .old: the leftover goes
    shutil.copytree(final, old)
    assert committed_steps(tmp_path) == [5] and not old.exists()


# ------------------------------------------------------------------------------------------------
# meta.json is validated as a whole before anything is built


def _with_meta(tmp_path, change):
    final = save_checkpoint(tmp_path, 1, tiny_model(), [], {"model_config": CFG.to_dict()})
    meta = json.loads((final / "meta.json").read_text())
    (final / "meta.json").write_text(json.dumps(change(meta)))


BAD_METAS = {
    "a list": (lambda m: [m], "expected a JSON object, got list"),
    "no files": (lambda m: {k: v for k, v in m.items() if k != "files"}, "no 'files'"),
    "no model_config": (lambda m: {k: v for k, v in m.items() if k != "model_config"}, "no 'model_config'"),
    "unknown key": (lambda m: {**m, "model_config": {**m["model_config"], "n_expert": 8}}, "unknown key.*n_expert"),
    "n_head does not divide": (lambda m: {**m, "model_config": {**m["model_config"], "n_head": 3, "n_kv_head": 3}},
                               "inconsistent.*not divisible"),
    "n_embd a string": (lambda m: {**m, "model_config": {**m["model_config"], "n_embd": "64"}}, "n_embd='64'"),
    "huge sequence_len": (lambda m: {**m, "model_config": {**m["model_config"], "sequence_len": 10**9}},
                          "sequence_len=1000000000 must be an integer in 1..131,072"),
    "files not a dict": (lambda m: {**m, "files": ["model.safetensors"]}, "'files' must be a dict"),
}


@pytest.mark.parametrize("case", list(BAD_METAS))
def test_malformed_meta_is_one_checkpoint_error(tmp_path, case):
    change, message = BAD_METAS[case]
    _with_meta(tmp_path, change)
    tok = Tokenizer.from_ranks({bytes([i]): i for i in range(256)})
    with pytest.raises(CheckpointError, match=message) as info:
        build_model(tmp_path, 1, "cpu", tokenizer=tok)
    assert str(info.value).count("\n") == 0 and "save the checkpoint again" in str(info.value)
