"""Shared fixtures: a tiny pretraining world (shards + tokenizer) in a temporary base dir."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent

# tests are hermetic: the task loaders must never try Hugging Face (subprocesses inherit this too)
os.environ["HF_HUB_OFFLINE"] = "1"

WORDS = ("the a cat dog sat ran on under mat rug red blue big small quickly slowly and then it was "
         "happy tired one two three four five six seven eight nine ten").split()


def make_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "."
                     for _ in range(rng.randint(2, 6))]
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny models: OpenMP threads only add contention on a shared box.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    """Byte-level tokenizer (no merges): 256 byte tokens + the special tokens, no training needed.
    Modules that need a trained tokenizer define their own `tok`, which overrides this one."""
    from nanochat.tokenizer import Tokenizer

    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)})


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A base dir with 3 parquet shards (the last is val) and a 512-token tokenizer."""
    from nanochat.tokenizer import Tokenizer

    base = tmp_path_factory.mktemp("nanochat_base")
    data = base / "base_data"
    data.mkdir()
    all_docs = []
    for shard in range(3):
        docs = make_docs(400, seed=shard)
        all_docs += docs
        table = pa.table({"text": docs})
        pq.write_table(table, data / f"shard_{shard:05d}.parquet", row_group_size=100)
    Tokenizer.train_from_iterator(all_docs, 512).save(base / "tokenizer")
    return base


def run_script(module: str, *args: str, base: Path, nproc: int = 0, timeout: int = 600, check: bool = True):
    """Run `python -m module args` (or under torchrun with nproc processes) with NANOCHAT_BASE_DIR=base."""
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", module, *args]
    else:
        cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_base_checkpoint(tiny_world):
    """tiny_world plus a base checkpoint (depth 1, width 64) trained for 6 steps by scripts.base_train:
    <base>/base_checkpoints/d1/step_000006. Returns the base dir."""
    run_script("scripts.base_train", "--depth=1", "--head-dim=32", "--max-seq-len=64", "--device-batch-size=4",
               "--total-batch-size=256", "--num-iterations=6", "--eval-every=-1", "--eval-tokens=256",
               "--sample-every=-1", "--device-type=cpu", "--dtype=float32", base=tiny_world)
    return tiny_world
