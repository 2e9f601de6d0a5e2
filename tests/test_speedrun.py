"""speedrun.sh end to end at a micro size on CPU: every stage runs, every artifact exists, the report
card has its summary table, and a second run skips the finished stages."""

import os
import subprocess

import pytest

from conftest import REPO


@pytest.mark.slow
def test_speedrun_micro(tmp_path):
    base, report = tmp_path / "base", tmp_path / "report.md"
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "SCALE": "micro", "NPROC": "0", "HF_HUB_OFFLINE": "1",
           "REPORT_PATH": str(report)}
    first = subprocess.run(["bash", "speedrun.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=3000)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    for path in ["base_data/manifest.json", "tokenizer/tokenizer.json", "tokenizer/token_bytes.npy",
                 "base_checkpoints/d4/step_000004/meta.json", "mid_checkpoints/d4/step_000002/meta.json",
                 "sft_checkpoints/d4/step_000002/meta.json", "identity_conversations.jsonl"]:
        assert (base / path).is_file(), path
    assert list((base / "base_eval").glob("*.csv"))
    text = report.read_text()
    assert "| Metric | BASE | MID | SFT | RL |" in text
    assert "| CORE (offline, 20 tasks) |" in text and "| ARC-Easy |" in text and "| ChatCORE" in text
    assert "## Tokenizer training" in text and "## Chat SFT" in text and "total wall time" in text
    assert "talk to your model" in first.stdout.lower()

    second = subprocess.run(["bash", "speedrun.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert second.stdout.count("already done, skipping") == 11
