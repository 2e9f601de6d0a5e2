"""Evaluate a model with CORE: 22 few-shot in-context tasks (DCLM), see nanochat/core_eval.py.

    python -m scripts.base_eval --device-type=cpu --max-per-task=20          # CPU, a few minutes
    torchrun --standalone --nproc_per_node=8 -m scripts.base_eval             # 8 GPUs, the whole CORE
    python -m scripts.base_eval -i mid --model-tag=d20 --step=800             # any stage and step

Tasks come from the DCLM eval bundle (local copy, else downloaded), else from the offline hub,
where 20 of the 22 tasks exist: that result is labelled "CORE (offline, 20 tasks)".
--scoring dclm (default) follows DCLM's definition; --scoring nanochat reproduces karpathy/nanochat's
scorer, whose published table (d20 0.2219, GPT-2 0.2565) people compare with (docs/EVALS.md). With
the real bundle both are computed, --scoring first: "CORE" and "CORE (nanochat scoring)".
Writes <base>/base_eval/<stage>_<tag>_step<NNNNNN>.csv (one row per task and scoring: accuracy,
centered) and the "Base model evaluation" section of the report.
"""

import csv
import sys
import time

from nanochat.checkpoint_manager import CheckpointError, find_model_tag, last_step, load_model, stage_dir
from nanochat.common import ScriptParser, compute_cleanup, compute_init, get_base_dir, print0, setup_logging
from nanochat.core_eval import SCORINGS, SOURCES, evaluate_core, load_core_tasks
from nanochat.report import log_section
from nanochat.training import precision

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "CORE evaluation of a model checkpoint.")
parser.add_argument("-i", "--source", dest="stage", default="base", choices=["base", "mid", "sft", "rl"],
                    help="which checkpoints")
parser.add_argument("-g", "--model-tag", default=None, help="model tag (default: the deepest d<N> of the stage)")
parser.add_argument("-s", "--step", type=int, default=-1, help="checkpoint step (-1 = the last one)")
parser.add_argument("--max-per-task", type=int, default=-1, help="items per task, a seeded subset (-1 = all)")
parser.add_argument("--data-source", default="auto", choices=SOURCES,
                    help="auto: local eval bundle, else online bundle, else offline hub; online/offline: force one")
parser.add_argument("--scoring", default="dclm", choices=SCORINGS,
                    help="dclm: DCLM's definition; nanochat: as karpathy/nanochat scores (with the real bundle: both)")
parser.add_argument("--device-type", default="auto", choices=["auto", "cuda", "cpu", "mps"], help="device")
parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype")
args = parser.parse_args()
if args.max_per_task == 0 or args.max_per_task < -1:
    parser.error(f"--max-per-task must be positive or -1 (all), got {args.max_per_task}")
setup_logging()

# -------------------------------------------------------------------------------------------------
ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
dtype_name, autocast = precision(device.type, args.dtype)
try:
    model_tag = args.model_tag or find_model_tag(stage_dir(args.stage))
    step = last_step(stage_dir(args.stage) / model_tag) if args.step == -1 else args.step
    model, tokenizer, meta = load_model(args.stage, device, phase="eval", model_tag=model_tag, step=step)
except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    compute_cleanup()
    sys.exit(1)
print0(f"evaluating {args.stage} model {model_tag} step {step} on {device} ({dtype_name}, {world_size} processes)")

# -------------------------------------------------------------------------------------------------
try:
    tasks, tasks_label, where = load_core_tasks(args.data_source)
except RuntimeError as e:
    print(f"error: {e}", file=sys.stderr)
    compute_cleanup()
    sys.exit(1)
# the real bundle's number is compared with published tables: give it under both scorings
scorings = [args.scoring] + ([s for s in SCORINGS if s != args.scoring] if tasks_label == "CORE" else [])
results, subset = [], "" if args.max_per_task == -1 else f" (at most {args.max_per_task} items per task)"
for scoring in scorings:
    t0 = time.time()
    try:
        result = evaluate_core(model, tokenizer, device, max_per_task=args.max_per_task, tasks=tasks,
                               label=tasks_label, autocast=autocast, scoring=scoring)
    except ValueError as e:  # e.g. a prompt nanochat scoring cannot split, or past the rotary table
        hint = "; --scoring dclm truncates long prompts" if scoring == "nanochat" and "rotary" in str(e) else ""
        print(f"error: {scoring} scoring: {e}{hint}", file=sys.stderr)
        compute_cleanup()
        sys.exit(1)
    result["seconds"] = time.time() - t0
    results.append(result)
    print0(f"{result['label']}: {result['core']:.4f}{subset} ({scoring} scoring) in {result['seconds']:.0f}s")

# -------------------------------------------------------------------------------------------------
if rank == 0:
    out_dir = get_base_dir() / "base_eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{args.stage}_{model_tag}_step{step:06d}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "type", "shots", "items", "accuracy", "random_baseline", "centered", "scoring"])
        for result in results:
            for name, r in result["tasks"].items():
                w.writerow([name, r["type"], r["shots"], r["items"], f"{r['accuracy']:.6f}", r["random_baseline"],
                            f"{r['centered']:.6f}", result["scoring"]])
            w.writerow([result["label"], "", "", "", "", "", f"{result['core']:.6f}", result["scoring"]])
    print0(f"per-task results: {csv_path}")
    names = list(results[0]["tasks"])
    head = " | ".join(f"{r['scoring']} accuracy | {r['scoring']} centered" for r in results)
    table = [f"| task | type | shots | items | {head} |", "|---|---|---|---|" + "---|---|" * len(results)]
    for name in names:
        r0 = results[0]["tasks"][name]
        cells = " | ".join(f"{r['tasks'][name]['accuracy']:.4f} | {r['tasks'][name]['centered']:.4f}" for r in results)
        table.append(f"| {name} | {r0['type']} | {r0['shots']} | {r0['items']} | {cells} |")
    log_section("Base model evaluation", [
        {"model": f"{args.stage}/{model_tag} step {step}", "tasks from": where,
         "max per task": args.max_per_task if args.max_per_task > 0 else "all",
         "scoring": ", ".join(scorings), "seconds": f"{sum(r['seconds'] for r in results):.1f}"}
        | {r["label"]: r["core"] for r in results},
        "\n".join(table),
    ], metrics={r["label"]: r["core"] for r in results})
compute_cleanup()
