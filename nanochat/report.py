"""The report card: each stage writes its own section; `generate` joins them into report.md.

    python -m nanochat.report reset      # start a new report (clears the sections)
    python -m nanochat.report generate   # write <base>/report/report.md and copy it to ./report.md

Sections are markdown files under `<base>/report/`, one per stage, written by `log_section`.
Only rank 0 writes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from nanochat.common import get_base_dir, get_rank

# the order sections appear in; unknown sections follow alphabetically
SECTION_ORDER = ["tokenizer-training", "tokenizer-evaluation", "base-model-training", "base-model-loss",
                 "base-model-evaluation", "midtraining", "chat-evaluation-mid", "chat-sft",
                 "chat-evaluation-sft", "chat-rl", "chat-evaluation-rl"]


def report_dir() -> Path:
    path = get_base_dir() / "report"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def _format_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def log_section(title: str, items: list[str | dict]) -> Path | None:
    """Write (replace) one section: `items` are markdown strings or dicts rendered as `- key: value`."""
    if get_rank() != 0:
        return None
    lines = [f"## {title}", f"timestamp: {datetime.datetime.now().isoformat(timespec='seconds')}", ""]
    for item in items:
        if isinstance(item, dict):
            lines += [f"- {k}: {_format_value(v)}" for k, v in item.items()]
        else:
            lines.append(str(item))
        lines.append("")
    path = report_dir() / f"{_slug(title)}.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def _environment() -> list[str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"

    lines = ["## Environment", "",
             f"- git commit: {git('rev-parse', '--short', 'HEAD') or 'unknown'}"
             f"{' (dirty)' if git('status', '--porcelain') else ''}",
             f"- platform: {platform.platform()}",
             f"- python: {sys.version.split()[0]}",
             f"- cpu cores: {os.cpu_count()}"]
    try:
        import torch

        lines.append(f"- torch: {torch.__version__}")
        if torch.cuda.is_available():
            lines.append(f"- gpus: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        lines.append(f"- memory: {mem:.1f} GiB")
    except (ValueError, OSError, AttributeError):
        pass
    return lines + [""]


def generate(copy_to: str | os.PathLike | None = "report.md") -> Path:
    """Join the header and every section into report.md (and copy it to `copy_to`)."""
    d = report_dir()
    sections = {p.stem: p for p in d.glob("*.md") if p.name not in ("report.md", "header.md")}
    order = [s for s in SECTION_ORDER if s in sections] + sorted(s for s in sections if s not in SECTION_ORDER)
    parts = ["# nanochat report card", "", f"generated: {datetime.datetime.now().isoformat(timespec='seconds')}", ""]
    parts += _environment()
    parts += [sections[s].read_text() for s in order]
    out = d / "report.md"
    out.write_text("\n".join(parts))
    if copy_to is not None:
        shutil.copyfile(out, copy_to)
    return out


def reset() -> None:
    """Remove every section: the next run starts a fresh report."""
    for p in report_dir().glob("*.md"):
        p.unlink()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="nanochat report card")
    parser.add_argument("command", choices=["reset", "generate"], help="reset: clear sections; generate: write report.md")
    args = parser.parse_args()
    if args.command == "reset":
        reset()
        print(f"report reset in {report_dir()}")
    else:
        print(f"report written to {generate()} and ./report.md")
