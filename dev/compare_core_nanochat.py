"""Check item for item that core_eval's nanochat scoring predicts what karpathy/nanochat's own
evaluate_task does, on the same weights.

    python -m dev.compare_core_nanochat --nanochat-path PATH                    # base checkpoint, 50 items/task
    python -m dev.compare_core_nanochat --nanochat-path PATH -i sft --tasks copa,hellaswag --max-per-task 20

PATH is a checkout of karpathy/nanochat (tested with b6da698, Nov 2025); its nanochat.gpt and
nanochat.core_eval are imported from there at run time under their own package name, so nothing of
it lives in this repository. The script:
1. loads our checkpoint and copies its weights into nanochat's GPT (load_state_dict strict). nanochat
   rotates each (x1, x2) pair by -theta where we rotate by +theta: negating the second half of every
   head's rows of c_q and c_k gives the same attention scores. nanochat keeps its rotary tables in
   bfloat16, so ours are rounded the same way for this comparison; the logits are then checked.
   Prompts past the rotary tables (10 × sequence_len) are skipped unless --rotary-horizon is raised;
2. runs every CORE task (local bundle, else online, else offline hub; --data-source) through our
   predict_task(scoring="nanochat") and through nanochat's evaluate_example on the same shuffled,
   cropped list. nanochat returns only right/wrong, so its prediction is recovered by asking again
   with each other choice as the gold;
   It also checks that both build the same token sequences and scored spans for every item (which
   says something even where the model gets every item wrong, e.g. language_modeling on a tiny model);
3. prints one row per task (items, agreements, both accuracies) and a final JSON line. Our dclm
   scoring's agreement with nanochat is shown beside it: how much the check can tell apart.
"""

import argparse
import importlib
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from nanochat.checkpoint_manager import load_model
from nanochat.core_eval import SUBSET_SEED, load_core_tasks, predict_task, tokenize_item
from nanochat.gpt import rotary_tables

# -------------------------------------------------------------------------------------------------


def import_reference(path: Path):
    """nanochat.gpt and nanochat.core_eval of the checkout at `path`, without disturbing our own
    `nanochat` package (both are called nanochat: ours is set aside while theirs is imported)."""
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "nanochat" or k.startswith("nanochat.")}
    sys.path.insert(0, str(path))
    try:
        gpt = importlib.import_module("nanochat.gpt")
        core_eval = importlib.import_module("nanochat.core_eval")
    finally:
        sys.path.remove(str(path))
        for k in [k for k in sys.modules if k == "nanochat" or k.startswith("nanochat.")]:
            del sys.modules[k]
        sys.modules.update(ours)
    return gpt, core_eval


def reference_model(ref_gpt, model: torch.nn.Module, horizon: int) -> torch.nn.Module:
    """nanochat's GPT holding our model's weights, with q and k mapped onto its rotary convention.
    Both rotary tables cover horizon × sequence_len positions (nanochat scoring never truncates)."""
    c = model.config
    # nanochat's table is 10 × its sequence_len: only the table depends on it
    ref = ref_gpt.GPT(ref_gpt.GPTConfig(sequence_len=c.sequence_len * horizon // 10, vocab_size=c.vocab_size,
                                        n_layer=c.n_layer, n_head=c.n_head, n_kv_head=c.n_kv_head, n_embd=c.n_embd))
    state = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    D = c.head_dim
    for i in range(c.n_layer):
        for name, heads in (("c_q", c.n_head), ("c_k", c.n_kv_head)):
            w = state[f"transformer.h.{i}.attn.{name}.weight"].view(heads, D, c.n_embd)  # (H, D, C)
            w[:, D // 2:] *= -1  # their rotation by -theta of (x1, -x2) is ours of (x1, x2), up to sign
    ref.load_state_dict(state, strict=True)
    ref.eval()
    # their tables are bfloat16 (their forward asserts it); give ours the same values
    cos, sin = rotary_tables(ref.cos.size(1), c.head_dim)
    model.cos, model.sin = cos.bfloat16().float(), sin.bfloat16().float()
    return ref


def reference_predictions(ref_core, ref_model, tokenizer, task, max_items: int) -> list[int]:
    """nanochat's prediction for each item of its shuffled, cropped list (as its base_eval builds it)."""
    data = [dict(item) for item in task.items]
    random.Random(SUBSET_SEED).shuffle(data)  # nanochat's base_eval: Random(1337), then the first max_items
    data = data[:max_items] if max_items > 0 else data
    meta = {"task_type": task.icl_task_type, "num_fewshot": task.num_fewshot,
            "continuation_delimiter": task.continuation_delimiter}
    preds = []
    for idx, item in enumerate(data):
        if task.icl_task_type == "language_modeling":
            preds.append(int(ref_core.evaluate_example(idx, ref_model, tokenizer, data, "cpu", meta)))
            continue
        n = len(item["choices"] if task.icl_task_type == "multiple_choice" else item["context_options"])
        gold = int(item["gold"])
        pred = None
        for c in [gold] + [c for c in range(n) if c != gold]:  # the item's own gold first: one call if right
            data[idx] = {**item, "gold": c}
            if ref_core.evaluate_example(idx, ref_model, tokenizer, data, "cpu", meta):
                pred = c
                break
        data[idx] = item
        preds.append(pred)
    return preds


def reference_sequences(ref_core, tokenizer, task, data: list[dict], idx: int) -> list[tuple[list[int], int, int]]:
    """nanochat's (tokens, start, end) for data[idx]: its few-shot draw (the three lines of its
    evaluate_example, repeated here), then its own render_prompts_* and batch_sequences_*."""
    shots = []
    if task.num_fewshot > 0:
        available = [i for i in range(len(data)) if i != idx]
        shots = [data[i] for i in random.Random(1234 + idx).sample(available, task.num_fewshot)]
    kind = {"multiple_choice": "mc", "schema": "schema", "language_modeling": "lm"}[task.icl_task_type]
    prompts = getattr(ref_core, f"render_prompts_{kind}")(data[idx], task.continuation_delimiter, shots)
    tokens, starts, ends = getattr(ref_core, f"batch_sequences_{kind}")(tokenizer, prompts)
    return list(zip(tokens, starts, ends))


# -------------------------------------------------------------------------------------------------
parser = argparse.ArgumentParser(description="Our nanochat scoring vs nanochat's own CORE scorer, item for item.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--nanochat-path", type=Path, required=True, help="a checkout of karpathy/nanochat")
parser.add_argument("-i", "--stage", default="base", choices=["base", "mid", "sft", "rl"], help="which checkpoints")
parser.add_argument("-g", "--model-tag", default=None, help="model tag (default: the deepest of the stage)")
parser.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: the last)")
parser.add_argument("--max-per-task", type=int, default=50, help="items per task (more than the most shots, 10)")
parser.add_argument("--tasks", default="", help="comma-separated task labels (default: all)")
parser.add_argument("--rotary-horizon", type=int, default=10,
                    help="rotary tables of this many × sequence_len positions (long few-shot prompts need more)")
parser.add_argument("--data-source", default="auto", choices=["auto", "online", "offline"], help="CORE tasks from")
args = parser.parse_args()
if not (args.nanochat_path / "nanochat" / "core_eval.py").is_file():
    parser.error(f"--nanochat-path {args.nanochat_path} has no nanochat/core_eval.py; pass a nanochat checkout")
if args.max_per_task <= 10:
    parser.error("--max-per-task must exceed 10: nanochat's scorer crashes with fewer items than shots")

# -------------------------------------------------------------------------------------------------
torch.manual_seed(0)
ref_gpt, ref_core = import_reference(args.nanochat_path.resolve())
model, tokenizer, meta = load_model(args.stage, "cpu", phase="eval", model_tag=args.model_tag, step=args.step)
model.float()
ref_model = reference_model(ref_gpt, model, args.rotary_horizon)
probe = torch.randint(0, model.config.vocab_size, (2, min(64, model.config.sequence_len)))
with torch.no_grad():
    logit_diff = (model(probe) - ref_model(probe)).abs().max().item()
print(f"model: {args.stage} {model.config}; max |logit difference| on random tokens: {logit_diff:.3g}")

tasks, label, where = load_core_tasks(args.data_source)
if args.tasks:
    wanted = set(args.tasks.split(","))
    tasks = [t for t in tasks if t.label in wanted]
rows, disagreements = [], []
for task in tasks:
    t0 = time.time()
    try:
        items, ours = predict_task(model, tokenizer, task, "cpu", max_items=args.max_per_task, scoring="nanochat")
        theirs = reference_predictions(ref_core, ref_model, tokenizer, task, args.max_per_task)
        dclm = dict(zip(*predict_task(model, tokenizer, task, "cpu", max_items=args.max_per_task, scoring="dclm")))
        pool = replace(task, items=[task.items[i] for i in items])  # nanochat's shuffled, cropped list
        same_tokens = sum(tokenize_item(tokenizer, pool, pos, model.config.sequence_len, "nanochat")
                          == reference_sequences(ref_core, tokenizer, task, pool.items, pos)
                          for pos in range(len(items)))
    except (ValueError, AssertionError) as e:  # e.g. a prompt past the rotary table: both refuse it
        print(f"{task.label:34s} skipped: {type(e).__name__}: {str(e)[:120]}")
        rows.append({"task": task.label, "skipped": str(e)[:200]})
        continue
    gold = [1 if task.icl_task_type == "language_modeling" else int(task.items[i]["gold"]) for i in items]
    agree = sum(a == b for a, b in zip(ours, theirs))
    disagreements += [{"task": task.label, "item": i, "ours": a, "theirs": b}
                      for i, a, b in zip(items, ours, theirs) if a != b]
    dclm_agree = sum(dclm[i] == b for i, b in zip(items, theirs))  # how much the check can tell apart
    row = {"task": task.label, "type": task.icl_task_type, "items": len(items), "same_tokens": same_tokens,
           "agree": agree, "dclm_agree": dclm_agree,
           "ours_acc": sum(a == g for a, g in zip(ours, gold)) / len(items),
           "theirs_acc": sum(b == g for b, g in zip(theirs, gold)) / len(items),
           "dclm_acc": sum(dclm[i] == g for i, g in zip(items, gold)) / len(items), "seconds": time.time() - t0}
    rows.append(row)
    print(f"{task.label:34s} {task.icl_task_type:17s} {len(items):4d} items  same tokens and spans {same_tokens:4d}  "
          f"agree {agree:4d} (dclm {dclm_agree:4d})  "
          f"accuracy ours {row['ours_acc']:.4f} theirs {row['theirs_acc']:.4f} dclm {row['dclm_acc']:.4f}  "
          f"({row['seconds']:.0f}s)")

done = [r for r in rows if "skipped" not in r]
total, agreed = sum(r["items"] for r in done), sum(r["agree"] for r in done)
dclm_agreed, same = sum(r["dclm_agree"] for r in done), sum(r["same_tokens"] for r in done)
print(f"\n{label} tasks from the {where}: {agreed}/{total} predictions agree over {len(done)} tasks "
      f"({len(rows) - len(done)} skipped); same tokens and spans {same}/{total}; "
      f"dclm scoring agrees with nanochat's on {dclm_agreed}/{total}")
for d in disagreements[:20]:
    print(f"  differs: {d}")
print(json.dumps({"stage": args.stage, "tasks": len(done), "skipped": len(rows) - len(done), "items": total,
                  "same_tokens": same, "agree": agreed, "dclm_agree": dclm_agreed, "max_logit_diff": logit_diff,
                  "rows": rows}))
