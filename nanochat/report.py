"""The report card: each stage writes its own section; `generate` joins them into report.md.

    python -m nanochat.report reset      # start a new report (clears the sections)
    python -m nanochat.report generate   # write <base>/report/report.md and copy it to ./report.md (--out)

Sections are markdown files under `<base>/report/`, one per stage, written by `log_section`.
Only rank 0 writes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import os
import platform
import subprocess
import sys
from pathlib import Path

from nanochat.common import atomic_write, get_base_dir, get_rank

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


def log_section(title: str, items: list[str | dict], metrics: dict[str, float] | None = None) -> Path | None:
    """Write (replace) one section: `items` are markdown strings or dicts rendered as `- key: value`.
    `metrics` (e.g. {"CORE": 0.21} or {"ARC-Easy": 0.4, ...}) feed the report's summary table."""
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
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    if metrics is not None:
        with atomic_write(path.with_suffix(".json")) as f:
            json.dump(metrics, f)
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


# the summary table: rows are metrics, columns the stages whose sections provide them
SUMMARY_METRICS = ["CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "ChatCORE"]
SUMMARY_COLUMNS = {"BASE": ["base-model-evaluation"], "MID": ["chat-evaluation-mid"],
                   "SFT": ["chat-evaluation-sft"], "RL": ["chat-evaluation-rl"]}


def _summary_table(d: Path) -> list[str]:
    columns = {}
    for col, slugs in SUMMARY_COLUMNS.items():
        merged = {}
        for slug in slugs:
            try:
                merged.update(json.loads((d / f"{slug}.json").read_text()))
            except (OSError, ValueError):
                pass
        columns[col] = merged
    lines = ["## Summary", "", "| Metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for metric in SUMMARY_METRICS:
        # the i-th row takes each column's i-th matching key: several only for CORE under two scorings
        keys = [[k for k in c if k == metric or k.startswith(metric + " (")] for c in columns.values()]
        for i in range(max(1, *map(len, keys))):
            label = next((ks[i] for ks in keys if len(ks) > i), metric)
            cells = ["-" if len(ks) <= i else f"{c[ks[i]]:.4f}" for ks, c in zip(keys, columns.values())]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _code_size() -> list[str]:
    root = Path(__file__).resolve().parent.parent
    counts = {}
    for pattern in ("nanochat/*.py", "scripts/*.py", "tasks/*.py", "rustbpe/src/*.rs", "nanochat/*.html"):
        files = list(root.glob(pattern))
        counts[pattern.split("/")[0] + "/" + pattern.rsplit(".", 1)[-1]] = (
            len(files), sum(len(f.read_text(errors="replace").splitlines()) for f in files))
    total = sum(n for _, n in counts.values())
    rows = [f"- {k}: {files} files, {n:,} lines" for k, (files, n) in counts.items()]
    return ["## Code size", "", *rows, f"- total: {total:,} lines", ""]


def plot_history(history_path: Path, out: Path, title: str) -> Path | None:
    """train loss and val bpb curves of a run's history.json as one PNG (None if no history)."""
    try:
        hist = json.loads(history_path.read_text())
    except (OSError, ValueError):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(hist.get("step", []), hist.get("train_loss", []))
    axes[0].set(title=f"{title}: train loss", xlabel="step", ylabel="loss (nats/token)")
    key = "val_bpb" if hist.get("val_bpb") else "val_loss"  # sft logs a loss per supervised token
    steps, values = hist.get("val_step", []), hist.get(key, [])
    axes[1].plot(steps[: len(values)], values[: len(steps)], marker="o")
    axes[1].set(title=f"{title}: {key.replace('_', ' ')}", xlabel="step", ylabel=key.split("_")[1])
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def generate(copy_to: str | os.PathLike | None = "report.md") -> Path:
    """Join the header, a summary table and every section into <base>/report/report.md, the plots
    beside it, and write a copy to `copy_to` whose images point at those plots."""
    d = report_dir()
    sections = {p.stem: p for p in d.glob("*.md") if p.name not in ("report.md", "header.md")}
    order = [s for s in SECTION_ORDER if s in sections] + sorted(s for s in sections if s not in SECTION_ORDER)
    parts = ["# nanochat report card", "", f"generated: {datetime.datetime.now().isoformat(timespec='seconds')}", ""]
    try:
        start = json.loads((d / "start.json").read_text())["start"]
        parts += [f"total wall time: {(time.time() - start) / 60:.1f} min (since `report reset`)", ""]
    except (OSError, ValueError, KeyError):
        pass
    parts += _environment()
    parts += _code_size()
    parts += _summary_table(d)
    plots = []
    for stage in ("base", "mid", "sft"):
        for hist in sorted((get_base_dir() / f"{stage}_checkpoints").glob("*/history.json")):
            png = plot_history(hist, d / f"{stage}-{hist.parent.name}.png", f"{stage} {hist.parent.name}")
            if png:
                plots.append(png)
    if plots:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    parts += [sections[s].read_text() for s in order]
    out = d / "report.md"
    with atomic_write(out) as f:
        f.write("\n".join(parts))
    if copy_to is not None:
        # the copy (by default ./report.md in the checkout) is the only file written outside the base
        # dir: its images point at the plots where they are, under <base>/report/
        text = "\n".join(parts)
        for png in plots:
            text = text.replace(f"![{png.stem}]({png.name})", f"![{png.stem}]({png.resolve()})")
        with atomic_write(copy_to) as f:
            f.write(text)
    return out


def reset() -> None:
    """Remove every section and start the wall clock: the next run starts a fresh report."""
    d = report_dir()
    for p in [*d.glob("*.md"), *d.glob("*.json"), *d.glob("*.png")]:
        p.unlink()
    (d / "start.json").write_text(json.dumps({"start": time.time()}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="nanochat report card")
    parser.add_argument("command", choices=["reset", "generate"],
                        help="reset: clear sections; generate: write report.md")
    parser.add_argument("--out", default="report.md",
                        help="where generate copies report.md (the plots stay in the base dir)")
    args = parser.parse_args()
    if args.command == "reset":
        reset()
        print(f"report reset in {report_dir()}")
    else:
        print(f"report written to {generate(copy_to=args.out)} and {args.out}")
