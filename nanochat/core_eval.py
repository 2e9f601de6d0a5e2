"""CORE: few-shot in-context evaluation of a base model, as defined by DCLM (Li et al. 2024,
"DataComp-LM", arXiv:2406.11794): 22 tasks, each scored by accuracy, centered against its random
baseline, and averaged.

Three kinds of task, every sequence starting with BOS and the few-shot examples (separated by a
blank line) before the item:
- multiple_choice: context = query + delimiter, one continuation per choice; the prediction is the
  choice whose continuation has the lowest mean per-token cross-entropy.
- schema: one context per option, one shared continuation; the prediction is the option under
  which the continuation has the lowest mean cross-entropy.
- language_modeling: correct iff greedy decoding reproduces the continuation exactly, i.e. the
  argmax at every continuation position is the continuation's token.

Context and continuation are tokenized separately (the context's trailing spaces move onto the
continuation, so " door" stays one word-token as in running text) and concatenated, which fixes
the scored span exactly. Sequences longer than the model's sequence_len lose tokens from the left
(BOS is kept). Few-shot examples are drawn with random.Random(FEWSHOT_SEED + item index), never
the item itself, so results do not depend on ranks, batching or --max-per-task. Items are strided
across ranks and the per-item results all-reduced.

Centered accuracy = (accuracy - b) / (1 - b), b the random baseline as a fraction; CORE = mean.

scoring="nanochat" reproduces karpathy/nanochat's scorer (Nov 2025), whose CORE table people
compare against, by four named differences (docs/EVALS.md says which numbers each can be compared with):
- span: each prompt is tokenized whole; multiple_choice scores from the first token where the
  choices' sequences differ, schema only their common suffix (_whole_prompt_spans);
- spaces: context and continuation are joined as they are, so hellaswag's leading space after the
  " " delimiter stays a double space (render_item skips _split_pair);
- truncation: none (tokenize_item ignores max_len);
- few-shot draw: from the Random(SUBSET_SEED)-shuffled list, cropped by max_items, seeded by
  position in it (_shuffled_pool).
Where nanochat crashes (fewer items than shots) both scorings draw from the items there are.

Where the tasks come from (load_core_tasks): the DCLM eval bundle in <base>/eval_bundle, else
downloaded from BUNDLE_URL, else the offline hub (20 of the 22 tasks: the result is labelled
"CORE (offline, 20 tasks)", never the published CORE).
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
import tempfile
import time
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nanochat.common import get_base_dir, print0

if TYPE_CHECKING:
    from nanochat.tokenizer import Tokenizer

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"  # DCLM's bundle, as nanochat uses
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
EXAMPLE_SEPARATOR = "\n\n"
FEWSHOT_SEED = 1234
SUBSET_SEED = 1337  # which items --max-per-task keeps (a seeded shuffle, then the first N)
LOGITS_BUDGET_BYTES = 2 << 30  # per forward: float32 logits plus one temporary of the same size
SOURCES = ("auto", "online", "offline")
SCORINGS = ("dclm", "nanochat")  # DCLM's definition; karpathy/nanochat's reproduction of it


@dataclass
class CoreTask:
    label: str
    icl_task_type: str  # one of TASK_TYPES
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # percent
    items: list[dict] = field(repr=False, default_factory=list)


def centered_accuracy(accuracy: float, random_baseline: float) -> float:
    """(accuracy - b) / (1 - b) with b = random_baseline / 100: 0 at chance, 1 when perfect."""
    b = random_baseline / 100.0
    return (accuracy - b) / (1.0 - b)


# ------------------------------------------------------------------------------------------------
# Prompts


def fewshot_indices(num_items: int, index: int, k: int, seed: int = FEWSHOT_SEED) -> list[int]:
    """k distinct item indices other than `index`, drawn with Random(seed + index)."""
    k = min(k, num_items - 1)
    if k <= 0:
        return []
    draws = random.Random(seed + index).sample(range(num_items - 1), k)
    return [j + (j >= index) for j in draws]  # skip over the item itself


def _example_text(task: CoreTask, ex: dict) -> str:
    d = task.continuation_delimiter
    if task.icl_task_type == "multiple_choice":
        return f"{ex['query']}{d}{ex['choices'][ex['gold']]}"
    if task.icl_task_type == "schema":
        return f"{ex['context_options'][ex['gold']]}{d}{ex['continuation']}"
    return f"{ex['context'].strip()}{d}{ex['continuation']}"


def _split_pair(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing spaces onto the continuation: "the " + "door" -> "the" + " door"."""
    stripped = context.rstrip(" ")
    spaces = context[len(stripped):]
    return (stripped, spaces + continuation.lstrip(" ")) if spaces else (context, continuation)


def render_item(task: CoreTask, index: int, scoring: str = "dclm") -> list[tuple[str, str]]:
    """(context, continuation) texts of item `index`: one per choice (multiple_choice), per context
    option (schema), or a single pair (language_modeling). Under nanochat scoring the pair is kept
    as joined by the template: no space moved, none stripped."""
    if task.icl_task_type not in TASK_TYPES:
        raise ValueError(f"CORE task {task.label}: unknown type {task.icl_task_type!r}; one of {', '.join(TASK_TYPES)}")
    item, d = task.items[index], task.continuation_delimiter
    shots = fewshot_indices(len(task.items), index, task.num_fewshot)
    prefix = "".join(_example_text(task, task.items[j]) + EXAMPLE_SEPARATOR for j in shots)
    if task.icl_task_type == "multiple_choice":
        pairs = [(prefix + item["query"] + d, choice) for choice in item["choices"]]
    elif task.icl_task_type == "schema":
        pairs = [(prefix + option + d, item["continuation"]) for option in item["context_options"]]
    else:
        pairs = [(prefix + item["context"].strip() + d, item["continuation"])]
    if scoring == "nanochat":
        return pairs
    return [_split_pair(c, x) for c, x in pairs]


def _common_length(seqs: list[list[int]], from_end: bool) -> int:
    """Length of the prefix (or, from_end, the suffix) that all of seqs share."""
    n = min(len(s) for s in seqs)
    for i in range(n):
        j = -1 - i if from_end else i
        if any(s[j] != seqs[0][j] for s in seqs):
            return i
    return n


def _whole_prompt_spans(tokenizer: Tokenizer, task: CoreTask, index: int,
                        pairs: list[tuple[str, str]]) -> list[tuple[list[int], int, int]]:
    """nanochat's spans: each prompt tokenized whole, never truncated. multiple_choice scores from the
    first token where the choices differ; schema the suffix all options share; language_modeling what
    the prompt adds to its context stripped of surrounding whitespace."""
    bos = tokenizer.get_bos_token_id()
    seqs = tokenizer.encode([c + x for c, x in pairs], prepend=bos)
    if task.icl_task_type == "multiple_choice":
        start = _common_length(seqs, from_end=False)
        return [(ids, start, len(ids)) for ids in seqs]
    if task.icl_task_type == "schema":
        k = _common_length(seqs, from_end=True)
        return [(ids, len(ids) - k, len(ids)) for ids in seqs]
    ((ids,), ((context, _),)) = seqs, pairs
    ctx = tokenizer.encode(context.strip(), prepend=bos)
    if len(ctx) >= len(ids) or ids[: len(ctx)] != ctx:
        raise ValueError(f"CORE task {task.label} item {index}: the context's tokens are not a prefix of the "
                         "prompt's, so nanochat scoring cannot place the continuation; use --scoring dclm")
    return [(ids, len(ctx), len(ids))]


def tokenize_item(tokenizer: Tokenizer, task: CoreTask, index: int, max_len: int,
                  scoring: str = "dclm") -> list[tuple[list[int], int, int]]:
    """Token sequences of one item as (ids, start, end): ids[start:end] is the scored continuation.
    Longer than max_len: the oldest tokens after BOS are dropped (dclm scoring only)."""
    if scoring == "nanochat":
        return _whole_prompt_spans(tokenizer, task, index, render_item(task, index, scoring))
    bos = tokenizer.get_bos_token_id()
    out = []
    for context, continuation in render_item(task, index, scoring):
        ctx = [bos] + tokenizer.encode(context)
        ids = ctx + tokenizer.encode(continuation)
        start, end = len(ctx), len(ids)
        if len(ids) > max_len:
            cut = len(ids) - max_len
            ids = [bos] + ids[cut + 1:]  # (max_len,)
            start, end = max(1, start - cut), max_len
        out.append((ids, start, end))
    return out


# ------------------------------------------------------------------------------------------------
# Scoring


def _predict(mean_losses: list[float], scoring: str) -> int:
    """The choice with the lowest mean loss, first on ties. An empty span's loss is nan: under dclm
    it loses; under nanochat it goes through min() as there, where a nan in first place is never
    replaced and a nan later never replaces anything."""
    if scoring == "nanochat":
        return mean_losses.index(min(mean_losses))
    return min(range(len(mean_losses)), key=lambda i: math.inf if math.isnan(mean_losses[i]) else mean_losses[i])


def _prediction(task: CoreTask, mean_losses: list[float], greedy_ok: list[bool], scoring: str) -> int:
    """The chosen choice / context option; for language_modeling 1 if greedy decoding reproduces the
    continuation, else 0."""
    if task.icl_task_type == "language_modeling":
        return int(greedy_ok[0])
    return _predict(mean_losses, scoring)


def _is_correct(task: CoreTask, item: dict, prediction: int) -> bool:
    return prediction == (1 if task.icl_task_type == "language_modeling" else int(item["gold"]))


def _shuffled_pool(task: CoreTask, order: list[int]) -> CoreTask:
    """The task as nanochat sees it: only the items in `order`, in that order, so few-shot examples
    come from them and are seeded by position (nanochat shuffles, crops, then draws)."""
    return replace(task, items=[task.items[i] for i in order])


@torch.no_grad()
def _forward_sequences(model: torch.nn.Module, seqs: list[tuple[list[int], int, int]], pad_id: int,
                       device: torch.device | str, autocast) -> tuple[list[float], list[bool]]:
    """Mean continuation loss and greedy match of each sequence, in one padded forward pass."""
    T = max(len(ids) for ids, _, _ in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for b, (row, _, _) in enumerate(seqs):
        ids[b, : len(row)] = torch.tensor(row)
    ids = ids.to(device)  # (B, T), right-padded: padding comes after every scored position
    with autocast:
        logits = model(ids)  # (B, T, V) float32
    B, T, V = logits.shape
    targets = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -1)], dim=1)  # (B, T): position t predicts t+1
    losses = F.cross_entropy(logits.view(B * T, V), targets.view(B * T), ignore_index=-1,
                             reduction="none").view(B, T)  # (B, T)
    hits = logits.argmax(dim=-1) == targets  # (B, T)
    pos = torch.arange(T, device=device)[None, :]  # (1, T)
    start = torch.tensor([s for _, s, _ in seqs], device=device)[:, None]  # (B, 1)
    end = torch.tensor([e for _, _, e in seqs], device=device)[:, None]  # (B, 1)
    span = (pos >= start - 1) & (pos < end - 1)  # (B, T): the positions predicting the continuation
    n = span.sum(dim=1)  # (B,)
    mean_losses = torch.where(n > 0, (losses * span).sum(dim=1) / n.clamp(min=1), float("nan"))  # (B,)
    greedy_ok = (hits | ~span).all(dim=1) & (n > 0)  # (B,)
    return mean_losses.tolist(), greedy_ok.tolist()


@torch.no_grad()
def predict_task(model: torch.nn.Module, tokenizer: Tokenizer, task: CoreTask, device: torch.device | str,
                 max_items: int = -1, batch_tokens: int | None = None, autocast=None, scoring: str = "dclm",
                 rank: int = 0, world: int = 1) -> tuple[list[int], list[int | None]]:
    """(items, predictions): the indices into task.items that are evaluated, in evaluation order, and
    each one's prediction (_prediction); items of other ranks (position != rank mod world) get None.

    max_items > 0 evaluates that many items, chosen by a seeded shuffle. Items are packed into
    forward passes of at most batch_tokens padded tokens (default: ~2 GiB of logits).
    scoring: "dclm" or "nanochat" (see the module docstring)."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    autocast = autocast if autocast is not None else nullcontext()
    max_len = model.config.sequence_len
    if batch_tokens is None:
        batch_tokens = max(max_len, LOGITS_BUDGET_BYTES // (8 * model.config.vocab_size))
    items = list(range(len(task.items)))
    if 0 < max_items < len(items) or scoring == "nanochat":
        random.Random(SUBSET_SEED).shuffle(items)
        items = items[:max_items] if max_items > 0 else items
    # which list the prompts index: all items (dclm), or nanochat's shuffled, cropped one
    pool, order = (_shuffled_pool(task, items), list(range(len(items)))) if scoring == "nanochat" else (task, items)
    predicted: list[int | None] = [None] * len(order)
    pad_id = tokenizer.get_bos_token_id()

    pending: list[tuple[int, list]] = []  # (position in order, its sequences)

    def flush() -> None:
        seqs = [s for _, item_seqs in pending for s in item_seqs]
        mean_losses, greedy_ok = _forward_sequences(model, seqs, pad_id, device, autocast)
        k = 0
        for pos, item_seqs in pending:
            n = len(item_seqs)
            predicted[pos] = _prediction(task, mean_losses[k : k + n], greedy_ok[k : k + n], scoring)
            k += n
        pending.clear()

    longest = 0
    for pos in range(rank, len(order), world):
        item_seqs = tokenize_item(tokenizer, pool, order[pos], max_len, scoring)
        count = sum(len(p) for _, p in pending) + len(item_seqs)
        longest_with = max([longest] + [len(ids) for ids, _, _ in item_seqs])
        if pending and count * longest_with > batch_tokens:
            flush()
            longest_with = max(len(ids) for ids, _, _ in item_seqs)
        pending.append((pos, item_seqs))
        longest = longest_with
    if pending:
        flush()
    return items, predicted


def evaluate_task(model: torch.nn.Module, tokenizer: Tokenizer, task: CoreTask, device: torch.device | str,
                  max_items: int = -1, batch_tokens: int | None = None, autocast=None, scoring: str = "dclm") -> float:
    """Accuracy of `model` on one CORE task (all ranks get the same number); arguments as predict_task.
    Items are strided across ranks and the per-item results all-reduced."""
    ddp = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    items, predicted = predict_task(model, tokenizer, task, device, max_items, batch_tokens, autocast, scoring,
                                    rank, world)
    # this rank's items filled in, the others stay 0 for the all-reduce
    correct = [0.0 if p is None else float(_is_correct(task, task.items[i], p)) for i, p in zip(items, predicted)]
    total = torch.tensor(correct, dtype=torch.float32, device=device)  # (items,)
    if ddp:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.mean().item() if len(items) else float("nan")


def scored_label(label: str, scoring: str) -> str:
    """The name a result goes by: the tasks' label ("CORE", "CORE (offline, 20 tasks)") under dclm
    scoring; nanochat scoring adds itself: "CORE (nanochat scoring)", "CORE (offline, 20 tasks, nanochat scoring)"."""
    if scoring == "dclm":
        return label
    return f"{label[:-1]}, {scoring} scoring)" if label.endswith(")") else f"{label} ({scoring} scoring)"


def evaluate_core(model: torch.nn.Module, tokenizer: Tokenizer, device: torch.device | str, max_per_task: int = -1,
                  tasks: list[CoreTask] | None = None, label: str | None = None, autocast=None,
                  source: str = "auto", scoring: str = "dclm") -> dict:
    """Every CORE task: {"label", "core" (mean centered accuracy), "scoring", "source", "max_per_task",
    "tasks": {label: {"type", "shots", "items", "accuracy", "random_baseline", "centered", "seconds"}}}.

    tasks/label default to load_core_tasks(source); the label names the scoring unless it is dclm
    (scored_label). Prints one line per task (rank 0)."""
    if tasks is None:
        tasks, label, where = load_core_tasks(source)
    else:
        where = "given tasks"
    label = scored_label(label or f"CORE ({len(tasks)} tasks)", scoring)
    results = {}
    for task in tasks:
        t0 = time.time()
        acc = evaluate_task(model, tokenizer, task, device, max_items=max_per_task, autocast=autocast, scoring=scoring)
        n = len(task.items) if max_per_task <= 0 else min(max_per_task, len(task.items))
        results[task.label] = {"type": task.icl_task_type, "shots": task.num_fewshot, "items": n, "accuracy": acc,
                               "random_baseline": task.random_baseline,
                               "centered": centered_accuracy(acc, task.random_baseline),
                               "seconds": time.time() - t0}
        r = results[task.label]
        print0(f"{task.label:34s} {task.icl_task_type:17s} {task.num_fewshot:2d}-shot {n:6d} items  "
               f"accuracy {acc:.4f}  centered {r['centered']:+.4f}  ({r['seconds']:.1f}s)")
    core = sum(r["centered"] for r in results.values()) / len(results) if results else float("nan")
    return {"label": label, "core": core, "scoring": scoring, "source": where, "max_per_task": max_per_task,
            "tasks": results}


# ------------------------------------------------------------------------------------------------
# Task sources: local bundle -> online bundle -> offline hub

_LOADED: dict[tuple[str, str], tuple[list[CoreTask], str, str]] = {}


def bundle_dir() -> Path:
    return get_base_dir() / "eval_bundle"


def _read_bundle(root: Path) -> list[CoreTask]:
    """Tasks of an unpacked DCLM eval bundle: core.yaml, eval_meta_data.csv, eval_data/."""
    import yaml

    try:
        config = yaml.safe_load((root / "core.yaml").read_text())
        with open(root / "eval_meta_data.csv", newline="") as f:
            baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
        tasks = []
        for spec in config["icl_tasks"]:
            shots = spec["num_fewshot"]  # a list in core.yaml: CORE uses its first entry
            shots = int(shots[0] if isinstance(shots, list) else shots)
            with open(root / "eval_data" / spec["dataset_uri"], encoding="utf-8") as f:
                items = [json.loads(line) for line in f if line.strip()]
            tasks.append(CoreTask(spec["label"], spec["icl_task_type"], shots, spec.get("continuation_delimiter", " "),
                                  baselines[spec["label"]], items))
    except (OSError, KeyError, ValueError, TypeError, yaml.YAMLError) as e:
        raise RuntimeError(f"the eval bundle in {root} is incomplete or corrupt ({type(e).__name__}: {e}); "
                           f"delete it to download it again") from None
    return tasks


def _fetch_bundle() -> Path:
    """Download and unpack the bundle into <base>/eval_bundle (locked; unpacked, then renamed)."""
    from filelock import FileLock

    from nanochat.data.download import download_file

    root = bundle_dir()
    with FileLock(str(root) + ".lock"):
        if not (root / "core.yaml").is_file():
            archive = get_base_dir() / "eval_bundle.zip"
            download_file(BUNDLE_URL, archive)
            with tempfile.TemporaryDirectory(dir=get_base_dir(), prefix=".eval_bundle-") as tmp:
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
                inner = Path(tmp) / "eval_bundle"
                shutil.rmtree(root, ignore_errors=True)
                (inner if inner.is_dir() else Path(tmp)).rename(root)
            archive.unlink(missing_ok=True)
    return root


def _hub_tasks() -> list[CoreTask]:
    from nanochat.data import hub

    tasks = []
    for meta in hub.core_tasks():
        if meta["available"] and meta.get("records", 0) > 0:
            tasks.append(CoreTask(meta["label"], meta["icl_task_type"], int(meta["num_fewshot"]),
                                  meta["continuation_delimiter"], float(meta["random_baseline"]),
                                  hub.load_records("core", meta["split"])))
    return tasks


def load_core_tasks(source: str = "auto") -> tuple[list[CoreTask], str, str]:
    """(tasks, label, where they came from). source: "auto" = the local bundle, else the online
    bundle, else (unreachable) the offline hub; "online" / "offline" force one. Prints one line."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    key = (str(get_base_dir()), source)
    if key not in _LOADED:
        root = bundle_dir()
        if source != "offline" and (root / "core.yaml").is_file():
            _LOADED[key] = (_read_bundle(root), "CORE", f"eval bundle in {root}")
        else:
            from tasks.common import probe_url  # the one reachability probe

            reason = "offline source requested" if source == "offline" else probe_url(BUNDLE_URL)
            if reason is None:
                _LOADED[key] = (_read_bundle(_fetch_bundle()), "CORE", f"eval bundle from {BUNDLE_URL}")
            elif source == "online":
                raise RuntimeError(f"the CORE eval bundle is unavailable ({reason}); check the network or use "
                                   "the offline tasks (source 'auto' or 'offline')")
            else:
                core_tasks = _hub_tasks()
                _LOADED[key] = (core_tasks, f"CORE (offline, {len(core_tasks)} tasks)", f"offline hub ({reason})")
        core_tasks, label, where = _LOADED[key]
        print0(f"CORE tasks: {len(core_tasks)} from the {where}"
               + ("" if label == "CORE" else f"; reported as {label!r}, not the published CORE"))
    return _LOADED[key]
