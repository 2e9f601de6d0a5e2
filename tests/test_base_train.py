"""base_train end to end on a tiny model: loss falls, checkpoints, exact resume, clear errors."""

import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_script

TINY = ["--depth=1", "--head-dim=32", "--max-seq-len=32", "--device-batch-size=4", "--total-batch-size=256",
        "--eval-tokens=512", "--sample-every=-1", "--device-type=cpu", "--dtype=float32"]


def losses(stdout: str) -> dict[int, float]:
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"step (\d+)/\d+ .*?\| loss ([\d.]+)", stdout)}


def val_bpbs(stdout: str) -> list[float]:
    return [float(x) for x in re.findall(r"\| val bpb ([\d.]+)", stdout)]


def test_train_checkpoint_and_exact_resume(tiny_world):
    base = tiny_world
    out = run_script("scripts.base_train", *TINY, "--num-iterations=16", "--eval-every=8", "--save-every=8",
                     "--model-tag=straight", base=base).stdout
    bpb = val_bpbs(out)
    assert len(bpb) == 3 and bpb[-1] < bpb[0]
    assert re.search(r"mfu [\d.]+%", out) and "tok/s" in out and "eta" in out
    root = base / "base_checkpoints"
    assert sorted(p.name for p in (root / "straight").iterdir() if p.is_dir()) == ["step_000008", "step_000016"]

    # stop at step 8 (copy the checkpoint), resume to 16: bit-identical weights and losses
    (root / "resumed").mkdir()
    shutil.copytree(root / "straight" / "step_000008", root / "resumed" / "step_000008")
    out2 = run_script("scripts.base_train", *TINY, "--num-iterations=16", "--eval-every=8", "--save-every=8",
                      "--model-tag=resumed", "--resume", base=base).stdout
    assert "resumed from" in out2
    a, b = losses(out), losses(out2)
    assert {s: a[s] for s in range(9, 17)} == {s: b[s] for s in range(9, 17)}
    wa = load_file(root / "straight" / "step_000016" / "model.safetensors")
    wb = load_file(root / "resumed" / "step_000016" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_flags(tiny_world):
    proc = run_script("scripts.base_train", "--no-such-flag", base=tiny_world, check=False)
    assert proc.returncode == 2 and "unrecognized arguments: --no-such-flag" in proc.stderr
    proc = run_script("scripts.base_train", "--depth=zero", base=tiny_world, check=False)
    assert proc.returncode == 2 and "invalid int value" in proc.stderr
    proc = run_script("scripts.base_train", *TINY, "--total-batch-size=100", base=tiny_world, check=False)
    assert proc.returncode == 2 and "not divisible" in proc.stderr


@pytest.mark.slow
def test_torchrun_two_processes(tiny_world):
    out = run_script("scripts.base_train", *TINY, "--num-iterations=4", "--eval-every=2", "--model-tag=ddp",
                     base=tiny_world, nproc=2).stdout
    assert "distributed True" in out and len(val_bpbs(out)) == 3
    assert (tiny_world / "base_checkpoints" / "ddp" / "step_000004" / "rank1.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_two_nodes_on_loopback(tiny_world):
    # the multi-node launch from the README: two torchrun agents (one per "node", one process each)
    # meet through a c10d rendezvous on 127.0.0.1 and train over gloo
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tiny_world), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "GLOO_SOCKET_IFNAME": "lo"}
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
                                "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                "--rdzv-id=two-nodes", "-m", "scripts.base_train", *TINY, "--num-iterations=3",
                                "--eval-every=-1", "--model-tag=nodes"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for node in (0, 1)]
    outs = [agent.communicate(timeout=600) for agent in agents]
    assert all(agent.returncode == 0 for agent in agents), "\n".join(o + e[-3000:] for o, e in outs)
    out = "".join(o for o, _ in outs)
    assert "distributed True" in out and "step 00003/00003" in out
    assert "× 2 processes" in out
    assert (tiny_world / "base_checkpoints" / "nodes" / "step_000003" / "rank1.safetensors").is_file()


def test_base_loss(tiny_base_checkpoint):
    out = run_script("scripts.base_loss", "--device-batch-size=2", "--eval-tokens=256", "--device-type=cpu",
                     "--dtype=float32", base=tiny_base_checkpoint).stdout
    assert re.search(r"train bpb: [\d.]+", out) and re.search(r"val bpb: [\d.]+", out)
    assert out.count("sample:") == 7
    assert "Base model loss" in (tiny_base_checkpoint / "report" / "base-model-loss.md").read_text()


def test_base_loss_without_checkpoint(tmp_path):
    proc = run_script("scripts.base_loss", "--device-type=cpu", base=tmp_path, check=False)
    assert proc.returncode != 0 and "no checkpoints in" in proc.stderr
