"""Small things every part of nanochat needs: where artifacts live, rank-0 printing,
logging set-up (called by entry scripts, never at import) and device detection."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("nanochat")


def get_base_dir() -> Path:
    """Root of every artifact: $NANOCHAT_BASE_DIR, default ~/.cache/nanochat. Created on demand."""
    base = os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
