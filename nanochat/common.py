"""Small things every part of nanochat needs: where artifacts live, rank-0 printing,
logging set-up (called by entry scripts, never at import) and device detection."""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

logger = logging.getLogger("nanochat")


class SetupError(SystemExit):
    """This machine is not set up for the step (an unusable base dir, no tokenizer). A SystemExit
    whose message is one sentence saying what to do: an entry script ends with that sentence on
    stderr and status 1, not with a traceback from deep inside."""


def get_base_dir() -> Path:
    """Root of every artifact: $NANOCHAT_BASE_DIR, default ~/.cache/nanochat. Created on demand;
    SetupError if it cannot be created or written."""
    env = os.environ.get("NANOCHAT_BASE_DIR")
    path = Path(env or os.path.join(os.path.expanduser("~"), ".cache", "nanochat"))
    what = f"NANOCHAT_BASE_DIR={env}" if env else f"the base dir {path} (NANOCHAT_BASE_DIR is not set)"
    fix = "set NANOCHAT_BASE_DIR to a directory you can write (it is created if missing)"
    if path.exists() and not path.is_dir():
        raise SetupError(f"{what} is not a directory: {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SetupError(f"{what} cannot be created ({e.strerror}): {fix}") from None
    if not _writable(str(path)):
        raise SetupError(f"{what} is not writable: {fix}")
    return path


@functools.lru_cache(maxsize=16)
def _writable(directory: str) -> bool:
    """Whether a file can be created in `directory` (os.access says yes to root on a read-only fs)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".nanochat-write-test-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to `path` for writing; on success it is fsynced and renamed over
    `path`, on error removed. Readers see the old file or the whole new one, never half of one.

        with atomic_write(path) as f:
            json.dump(meta, f)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": "\n"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_lock(path: str | os.PathLike):
    """A FileLock (processes, ranks and threads) guarding `path`.

    The lock file lives in <base>/.locks/ (for a path outside the base dir: in .locks/ beside it),
    not next to `path`: data directories stay free of `.lock` files, which filelock never deletes
    (deleting a lock file others may hold is a race)."""
    from filelock import FileLock

    path = Path(path).absolute()
    env = os.environ.get("NANOCHAT_BASE_DIR")
    base = Path(env or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")).absolute()
    locks = (get_base_dir() if path.is_relative_to(base) else path.parent) / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    return FileLock(str(locks / f"{path.name}-{key}.lock"))


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Ask `proc` to exit (SIGTERM), kill it if it is still running after `grace` seconds, and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def get_rank() -> int:
    """This process's global rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only: the console line a person reads."""
    if get_rank() == 0:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def setup_logging(level: int | str | None = None) -> None:
    """Configure the `nanochat` logger for an entry script (library modules only get loggers).

    Level from the argument, else $NANOCHAT_LOG_LEVEL, else INFO; ranks other than 0 log warnings only."""
    level = level or os.environ.get("NANOCHAT_LOG_LEVEL", "INFO")
    if get_rank() != 0:
        level = "WARNING"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def autodetect_device_type() -> str:
    """cuda if available, else mps, else cpu (torch is imported lazily: this module stays light)."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# -------------------------------------------------------------------------------------------------
# Distributed set-up, precision and peak FLOP/s


def is_distributed() -> bool:
    """True when launched by torchrun (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def compute_init(device_type: str = "auto", seed: int = 42):
    """Seed, pick the device and, under torchrun, join the process group (NCCL on CUDA, gloo
    otherwise). Returns (ddp, rank, local_rank, world_size, device)."""
    import torch
    import torch.distributed as dist

    if device_type == "auto":
        device_type = autodetect_device_type()
    if device_type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device-type=cuda but no CUDA device is available; use --device-type=cpu")
    torch.manual_seed(seed)
    ddp = is_distributed()
    rank, world_size = get_rank(), get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device(device_type)
    if ddp and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device_type == "cuda" else None)
        dist.barrier()
    return ddp, rank, local_rank, world_size, device


def compute_cleanup() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # gloo can abort if one rank tears down while another still works
        dist.destroy_process_group()


# Dense peak FLOP/s of known GPUs in bf16 (vendor datasheets, without sparsity)
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "B200": 2250e12, "A100": 312e12, "A10": 125e12,
                  "L40S": 362e12, "L4": 121e12, "4090": 165e12, "3090": 71e12}


def _measure_matmul_flops(dtype, sizes: tuple[int, ...] = (1024, 2048), trials: int = 5) -> float:
    """Best FLOP/s of square matmuls over a few short trials: a peak, so another process stealing the
    CPU for a moment lowers one trial, not the result."""
    import time

    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        for _ in range(trials):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def cpu_matmul_peaks() -> dict[str, float]:
    """Measured matmul FLOP/s of this CPU in float32 and bfloat16, cached in <base>/cpu_peak.json
    (keyed by CPU model and thread count; delete the file to measure again)."""
    import json
    import platform

    import torch

    key = f"v2|{platform.processor() or platform.machine()}|{os.cpu_count()}|{torch.get_num_threads()}"
    path = get_base_dir() / "cpu_peak.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["flops"]
    except (OSError, ValueError, KeyError):
        pass
    flops = {"float32": _measure_matmul_flops(torch.float32), "bfloat16": _measure_matmul_flops(torch.bfloat16)}
    with atomic_write(path) as f:  # ranks measuring at once must not read each other's half-written file
        json.dump({"key": key, "flops": flops}, f, indent=2)
    return flops


def peak_flops(device_type: str, dtype_name: str) -> float | None:
    """Peak FLOP/s per device for MFU: datasheet numbers for known GPUs, a measurement on CPU."""
    import torch

    if device_type == "cuda":
        name = torch.cuda.get_device_name(0)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value if dtype_name != "float32" else value / 2
        return None
    if device_type == "cpu":
        return cpu_matmul_peaks().get(dtype_name)
    return None


def autodetect_dtype(device_type: str) -> str:
    """bfloat16 on CUDA SM80+ and on CPUs whose bf16 matmul is faster than fp32; else float32."""
    import torch

    if device_type == "cuda":
        return "bfloat16" if torch.cuda.get_device_capability()[0] >= 8 else "float32"
    if device_type == "cpu":
        peaks = cpu_matmul_peaks()
        return "bfloat16" if peaks["bfloat16"] > 1.2 * peaks["float32"] else "float32"
    return "float32"


class _DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help already says what the default means, or there is
    nothing to say (None, a switch that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if "default" in help or action.default in (None, False, argparse.SUPPRESS):
            return help
        return super()._get_help_string(action)


class ScriptParser(argparse.ArgumentParser):
    """The argument parser of every entry script: usage reads `python -m scripts.X`, defaults show
    once, and karpathy/nanochat's underscore spellings are accepted (--device_batch_size means
    --device-batch-size), so its commands keep working here.

        parser = ScriptParser(__file__, "Pretrain the base model.")
        parser.add_argument("--device-batch-size", type=int, default=32, help="sequences per forward pass")
        parser.parse_args(["--device_batch_size=8"]).device_batch_size  # 8
    """

    def __init__(self, script: str, description: str, **kwargs):
        path = Path(script)
        super().__init__(prog=f"python -m {path.parent.name}.{path.stem}", description=description,
                         formatter_class=_DefaultsOnce,
                         epilog="Flags may also be spelled with underscores: --model_tag = --model-tag.", **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        known = {flag for action in self._actions for flag in action.option_strings}
        args = list(sys.argv[1:] if args is None else args)
        for i, arg in enumerate(args):
            if arg == "--":  # what follows is positional
                break
            flag, eq, value = arg.partition("=")
            dashed = flag.replace("_", "-")
            if flag.startswith("--") and flag not in known and dashed in known:
                args[i] = dashed + eq + value
        return super().parse_known_args(args, namespace)
