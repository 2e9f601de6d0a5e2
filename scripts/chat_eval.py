"""Evaluate a chat model on ARC-Easy, ARC-Challenge, MMLU, GSM8K, HumanEval and SpellingBee; ChatCORE.

    python -m scripts.chat_eval -i sft --device-type=cpu -x 50                # CPU, a quick look
    python -m scripts.chat_eval -i sft -a "GSM8K|HumanEval" -n 4 -t 0.8       # pass@4 with sampling
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_eval -i sft    # 8 GPUs, everything

Categorical tasks (ARC, MMLU): one forward pass over the prompts (render_for_completion, which
ends with <|assistant_start|>), and the prediction is the allowed answer letter with the highest
logit. Generative tasks (GSM8K, HumanEval, SpellingBee): sample -n completions per problem with
the Engine; a problem counts as solved when any sample passes the task's checker (pass@n).
ChatCORE = mean over the six tasks of the centered accuracy (acc - b) / (1 - b), b = 0.25 for
ARC and MMLU (four choices) and 0 for the others; with fewer tasks it is reported as partial.
--template nanochat scores as karpathy/nanochat does, to compare with its tables: its
multiple-choice prompt (ARC's "1".."4" labels kept), its -x subset (the first problems after Hugging
Face's seed-42 shuffle), no truncation of categorical prompts. See docs/EVALS.md.
Works on any stage, base included. With --report (speedrun.sh passes it) the result becomes the
"Chat evaluation <stage>" report section; a one-off run leaves the report alone.
"""

import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from nanochat.chat_metrics import categorical_accuracy, generative_pass, nanochat_indices, spread_indices
from nanochat.checkpoint_manager import CheckpointError, find_model_tag, last_step, load_model, stage_dir
from nanochat.common import ScriptParser, compute_cleanup, compute_init, print0, setup_logging
from nanochat.engine import Engine
from nanochat.report import log_section
from nanochat.training import precision
from tasks.arc import ARC
from tasks.common import MC_TEMPLATES, TaskDataError
from tasks.gsm8k import GSM8K
from tasks.humaneval import HumanEval
from tasks.mmlu import MMLU
from tasks.spellingbee import SpellingBee

TASKS = {  # each takes the multiple-choice template
    "ARC-Easy": lambda template: ARC("ARC-Easy", "test", template=template),
    "ARC-Challenge": lambda template: ARC("ARC-Challenge", "test", template=template),
    "MMLU": lambda template: MMLU("all", "test", template=template),
    "GSM8K": lambda template: GSM8K("main", "test"),
    "HumanEval": lambda template: HumanEval(),
    "SpellingBee": lambda template: SpellingBee(size=256, split="test"),
}
GENERATIVE_CHUNK = 64  # generative problems per progress-bar step, sampled together by the scheduler
BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0, "SpellingBee": 0.0}

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "Evaluate a chat model; ChatCORE.")
parser.add_argument("-i", "--source", dest="stage", default="sft", choices=["base", "mid", "sft", "rl"],
                    help="which checkpoints")
parser.add_argument("-a", "--task-name", default="|".join(TASKS), help="tasks to run, separated by |")
parser.add_argument("-b", "--batch-size", type=int, default=8, help="problems per forward pass (categorical tasks)")
parser.add_argument("-x", "--max-problems", type=int, default=-1, help="problems per task, evenly spread (-1 = all)")
parser.add_argument("-n", "--num-samples", type=int, default=1, help="samples per problem (generative: pass@n)")
parser.add_argument("-t", "--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
parser.add_argument("-k", "--top-k", type=int, default=50, help="sample from the k most likely tokens (0 = all)")
parser.add_argument("-m", "--max-new-tokens", type=int, default=512, help="tokens generated per sample at most")
parser.add_argument("-g", "--model-tag", default=None, help="model tag (default: the deepest d<N> of the stage)")
parser.add_argument("-s", "--step", type=int, default=-1, help="checkpoint step (-1 = the last one)")
parser.add_argument("--template", default="ours", choices=MC_TEMPLATES,
                    help="ours, or nanochat: its multiple-choice prompt, -x subset and no truncation (comparable)")
parser.add_argument("--seed", type=int, default=42, help="sampling seed (problem i uses seed + i)")
parser.add_argument("--device-type", default="auto", choices=["auto", "cuda", "cpu", "mps"], help="device")
parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype")
parser.add_argument("--report", action="store_true", help="write the result as the stage's report section")
args = parser.parse_args()
task_names = [name.strip() for name in args.task_name.split("|") if name.strip()]
unknown = [name for name in task_names if name not in TASKS]
if unknown or not task_names:
    parser.error(f"unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {'|'.join(TASKS)}")
for name in ("batch_size", "num_samples", "max_new_tokens"):
    if getattr(args, name) < 1:
        parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
if args.max_problems == 0 or args.max_problems < -1:
    parser.error(f"--max-problems must be positive or -1 (all), got {args.max_problems}")
if args.temperature < 0 or args.top_k < 0:
    parser.error("--temperature and --top-k must be >= 0")
if args.num_samples > 1 and args.temperature == 0:
    print0("note: -n > 1 at temperature 0 gives n identical samples; pass -t 0.8 (say) for pass@n")
setup_logging()

# -------------------------------------------------------------------------------------------------
ddp, rank, local_rank, world_size, device = compute_init(args.device_type, seed=args.seed)
dtype_name, autocast = precision(device.type, args.dtype)
try:
    model_tag = args.model_tag or find_model_tag(stage_dir(args.stage))
    step = last_step(stage_dir(args.stage) / model_tag) if args.step == -1 else args.step
    model, tokenizer, meta = load_model(args.stage, device, phase="eval", model_tag=model_tag, step=step)
except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    compute_cleanup()
    sys.exit(1)
engine = Engine(model, tokenizer)
print0(f"evaluating {args.stage} model {model_tag} step {step} on {device} ({dtype_name}, {world_size} processes)")

# -------------------------------------------------------------------------------------------------
results: dict[str, dict] = {}
for task_name in task_names:
    t0 = time.time()
    try:
        task = TASKS[task_name](args.template)
        if args.template == "nanochat":
            indices = nanochat_indices(len(task), args.max_problems, shuffled=task_name != "SpellingBee")
        else:
            indices = spread_indices(len(task), args.max_problems)
        indices = indices[rank::world_size]
        correct = total = 0
        # progress-bar granularity; within a chunk the engine's scheduler batches generative problems
        chunk = args.batch_size if task.eval_type == "categorical" else GENERATIVE_CHUNK
        for c0 in tqdm(range(0, len(indices), chunk), desc=task_name, unit="chunk", disable=rank != 0):
            part = indices[c0:c0 + chunk]
            if task.eval_type == "categorical":
                c, t = categorical_accuracy(model, tokenizer, task, part, batch_size=args.batch_size, autocast=autocast,
                                            truncate=args.template != "nanochat")
            else:
                with autocast:
                    c, t = generative_pass(engine, tokenizer, task, part, num_samples=args.num_samples,
                                           max_tokens=args.max_new_tokens, temperature=args.temperature,
                                           top_k=args.top_k or None, seed=args.seed)
            correct, total = correct + c, total + t
    except (TaskDataError, ValueError) as e:
        print(f"error: {task_name}: {e}", file=sys.stderr)
        compute_cleanup()
        sys.exit(1)
    counts = torch.tensor([correct, total], dtype=torch.long, device=device)
    if ddp:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    correct, total = counts.tolist()
    accuracy = correct / total if total else float("nan")
    baseline = BASELINES[task_name]
    results[task_name] = {"accuracy": accuracy, "correct": correct, "total": total, "source": task.source,
                          "centered": (accuracy - baseline) / (1.0 - baseline), "seconds": time.time() - t0}
    print0(f"{task_name}: {correct}/{total} = {accuracy:.2%} ({task.eval_type}, {task.source} data, "
           f"{time.time() - t0:.1f}s)")

chatcore = sum(r["centered"] for r in results.values()) / len(results)
label = "ChatCORE" if len(results) == len(TASKS) else f"ChatCORE (partial, {len(results)} of {len(TASKS)} tasks)"
print0(f"{label}: {chatcore:.4f}")

# -------------------------------------------------------------------------------------------------
if not args.report:
    print0("(not written to the report card: pass --report for that)")
    compute_cleanup()
    sys.exit(0)
table = ["| task | correct | total | accuracy | centered | data |", "|---|---|---|---|---|---|"]
table += [f"| {name} | {r['correct']} | {r['total']} | {r['accuracy']:.4f} | {r['centered']:.4f} | {r['source']} |"
          for name, r in results.items()]
log_section(f"Chat evaluation {args.stage}", [
    {"model": f"{args.stage}/{model_tag} step {step}",
     "max problems": "all" if args.max_problems == -1 else args.max_problems,
     "samples per problem": args.num_samples, "temperature": args.temperature, "top-k": args.top_k,
     "template": args.template},
    {name: r["accuracy"] for name, r in results.items()} | {label: chatcore},
    "\n".join(table),
], metrics={name: r["accuracy"] for name, r in results.items()} | {label: chatcore})
compute_cleanup()
