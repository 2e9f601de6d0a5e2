"""dev/gpu_check.sh as a CPU dry run with shrunk sizes: it reuses a base dir's shards and tokenizer,
trains a few steps under torchrun, answers one prompt with chat_cli and prints its summary."""

import os
import subprocess

import pytest

from conftest import REPO


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(tiny_world, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for name in ("base_data", "tokenizer"):  # reuse the tiny world's data, write checkpoints elsewhere
        (base / name).symlink_to(tiny_world / name)
    env = {**os.environ, "GPU_CHECK_BASE_DIR": str(base), "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_DEPTH": "1",
           "GPU_CHECK_STEPS": "3", "GPU_CHECK_SEQ_LEN": "64", "GPU_CHECK_TOTAL_BATCH": "1024",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(["bash", "dev/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "--device-batch-size auto: 8" in out  # CPU: no probe, the CPU preset's batch
    assert "step 00003/00003" in out and "[gpu_check] OK" in out
    assert "base_train   3 steps; after the first: median" in out and "MFU" in out
    assert (base / "base_checkpoints" / "gpu_check_d1" / "step_000003" / "meta.json").is_file()
    assert "chat_cli" in out and "FAILED" not in out
