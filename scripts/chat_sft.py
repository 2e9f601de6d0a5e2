"""Supervised finetuning: whole conversations, loss only on the tokens the assistant must produce.

    python -m scripts.chat_sft --device-batch-size=4 --num-iterations=50
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_sft
    python -m scripts.chat_sft -i base ...          # finetune straight from the base model
    python -m scripts.chat_sft ... --save-every=50 --resume   # continue from the last checkpoint

Batches are padded conversations (render_conversation's mask 1 = supervised); the loss is summed
over supervised tokens and divided by their count over the whole optimizer step (all micro-batches
and processes), so a micro-batch with nothing supervised contributes zero, never NaN. Gradient
accumulation reaches --target-examples-per-step. Reads <base>/mid_checkpoints (or base), writes
<base>/sft_checkpoints/<tag>/.
"""

import json
import os

import torch
import torch.distributed as dist

from nanochat.checkpoint_manager import save_checkpoint, stage_dir
from nanochat.chat_metrics import categorical_accuracy, spread_indices
from nanochat.common import ScriptParser, compute_cleanup, get_base_dir, peak_flops, print0, setup_logging
from nanochat.dataloader import padded_batch
from nanochat.report import log_section
from nanochat.training import (StepLog, add_lr_flags, add_run_flags, auto_device_batch_size, batch_candidates,
                               batch_size_or_auto, init_run, load_source_or_exit, lr_multiplier, positive_int, resume,
                               timed, train_step)
from tasks.arc import ARC
from tasks.common import TaskDataError, TaskMixture
from tasks.customjson import CustomJSON
from tasks.gsm8k import GSM8K
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SimpleSpelling, SpellingBee
from tasks.toolmath import SyntheticMath

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "Supervised finetuning on conversations.")
parser.add_argument("-i", "--source", default="mid", choices=["base", "mid"], help="stage to start from")
parser.add_argument("-g", "--model-tag", default=None, help="model tag to start from (default: the deepest)")
parser.add_argument("-s", "--step", type=int, default=None, help="checkpoint step to start from (default: the last)")
add_run_flags(parser, compile_default="off", compile_help="torch.compile (auto: on for CUDA; off by default: "
                                                         "every new conversation length recompiles)")
parser.add_argument("--device-batch-size", type=batch_size_or_auto, default=4,
                    help="conversations per forward pass per process; auto: the largest that fits (CUDA), 8 elsewhere")
parser.add_argument("--target-examples-per-step", type=positive_int, default=32,
                    help="conversations per optimizer step")
parser.add_argument("--num-epochs", type=positive_int, default=1, help="passes over the mixture")
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1 = from --num-epochs)")
add_lr_flags(parser, init_lr_frac=0.02)
parser.add_argument("--eval-every", type=int, default=100, help="val loss every N steps (-1 = only at the end)")
parser.add_argument("--eval-examples", type=positive_int, default=256, help="validation conversations per val loss")
parser.add_argument("--metrics-every", type=int, default=200, help="quick ARC/MMLU accuracy every N steps (-1 = end)")
parser.add_argument("--metrics-max-problems", type=positive_int, default=256,
                    help="problems per task in the quick eval")
parser.add_argument("--identity-path", default=None,
                    help="identity conversations jsonl (default <base>/identity_conversations.jsonl)")
parser.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (always at the end)")
parser.add_argument("--resume", action="store_true", help="continue from the last committed SFT checkpoint")
args = parser.parse_args()
setup_logging()

# -------------------------------------------------------------------------------------------------
run = init_run(args.device_type, args.dtype, args.compile, args.run, vars(args), project="nanochat-sft")
device, world_size, rank, autocast, dtype_name = run.device, run.world_size, run.rank, run.autocast, run.dtype_name
model, tokenizer, src_meta, model_tag = load_source_or_exit(args.source, device, args.model_tag, args.step, "chat_sft")
config = model.config
checkpoint_dir = stage_dir("sft") / model_tag
pad_id = tokenizer.get_bos_token_id()  # any id: padded positions have target -1

identity_path = args.identity_path or os.path.join(get_base_dir(), "identity_conversations.jsonl")
train_tasks = [ARC("ARC-Easy", "train"), ARC("ARC-Challenge", "train"), SmolTalk("train", stop=10_000),
               SyntheticMath(2000, "train", seed=7), SimpleSpelling(300, "train", seed=7),
               SpellingBee(300, "train", seed=7)]
try:
    train_tasks.append(GSM8K("main", "train"))
except TaskDataError:
    print0("chat_sft: GSM8K train unavailable: synthetic word problems teach the tool instead")
if os.path.isfile(identity_path):
    train_tasks.append(CustomJSON(identity_path))
train_mix = TaskMixture(train_tasks)
val_mix = TaskMixture([SmolTalk("test")])
num_iterations = (args.num_iterations if args.num_iterations > 0
                  else max(1, args.num_epochs * len(train_mix) // args.target_examples_per_step))

optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr * args.init_lr_frac,
                                    embedding_lr=args.embedding_lr * args.init_lr_frac,
                                    matrix_lr=args.matrix_lr * args.init_lr_frac, compile=run.use_compile,
                                    muon_ns_dtype=run.ns_dtype)
orig_model = model
if run.use_compile:
    model = torch.compile(model)  # dynamic: conversation lengths vary

# batch: the device batch (probed at the longest conversation when auto), then accumulation
device_batch_size = args.device_batch_size
if device_batch_size == "auto":
    device_batch_size = auto_device_batch_size(orig_model, optimizers, autocast, config.sequence_len, config.vocab_size,
                                               batch_candidates(args.target_examples_per_step, 1, world_size),
                                               forward=model)
examples_per_fwdbwd = device_batch_size * world_size
if args.target_examples_per_step % examples_per_fwdbwd != 0:
    parser.error(f"--target-examples-per-step={args.target_examples_per_step} is not divisible by device_batch_size × "
                 f"processes = {examples_per_fwdbwd}")
grad_accum_steps = args.target_examples_per_step // examples_per_fwdbwd
print0(f"sft: {len(train_mix):,} conversations, {args.target_examples_per_step} per step = {device_batch_size} × "
       f"{world_size} processes × {grad_accum_steps} accumulation; {num_iterations:,} steps; dtype {dtype_name}")

start_step, loop_state = 0, {}
if args.resume:
    start_step, loop_state, _ = resume(checkpoint_dir, orig_model, optimizers, config.to_dict(), world_size, rank,
                                       device)


def batches(task, start: int = 0):
    """Forever: this rank's micro-batches of the task from conversation `start` on, in order (rank r
    takes every W-th batch)."""
    i = start
    while True:
        idx = [(i + rank * device_batch_size + b) % len(task) for b in range(device_batch_size)]
        rows = [tokenizer.render_conversation(task[j], max_tokens=config.sequence_len + 1) for j in idx]
        yield padded_batch(rows, pad_id, device)
        i += device_batch_size * world_size


def reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if run.ddp:
        dist.all_reduce(t)
    return t


@torch.no_grad()
def val_loss() -> float:
    """Mean loss per supervised token over the first --eval-examples validation conversations."""
    model.eval()
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    it = batches(val_mix)
    for _ in range(max(1, args.eval_examples // examples_per_fwdbwd)):
        x, y = next(it)
        with autocast:
            total += model(x, y, loss_reduction="none").float().sum()
        count += (y >= 0).sum()
    model.train()
    return (reduce_sum(total) / reduce_sum(count).clamp(min=1)).item()


def quick_metrics() -> dict[str, float]:
    model.eval()
    out = {}
    for name, task in (("ARC-Easy", ARC("ARC-Easy", "test")), ("MMLU", MMLU("all", "test"))):
        indices = spread_indices(len(task), args.metrics_max_problems)[rank::world_size]
        counts = torch.tensor(categorical_accuracy(model, tokenizer, task, indices, device_batch_size, autocast),
                              device=device)
        correct, total = reduce_sum(counts).tolist()
        out[name] = correct / max(1, total)
    model.train()
    return out


# -------------------------------------------------------------------------------------------------
train_iter = batches(train_mix, start=start_step * args.target_examples_per_step)  # resumes where the step left off
steplog = StepLog(num_iterations, orig_model.estimate_flops(), peak_flops(device.type, dtype_name), world_size,
                  loop_state.get("log"))
history = loop_state.get("history", {"step": [], "train_loss": [], "val_step": [], "val_loss": []})
val, metrics = loop_state.get("val_loss", float("nan")), loop_state.get("metrics", {})
step = start_step
while True:
    last_step = step == num_iterations
    if last_step or (args.eval_every > 0 and step % args.eval_every == 0):
        val = val_loss()
        history["val_step"].append(step)
        history["val_loss"].append(val)
        print0(f"step {step:05d}/{num_iterations:05d} | val loss {val:.4f}")
    if last_step or (args.metrics_every > 0 and step > 0 and step % args.metrics_every == 0):
        metrics = quick_metrics()
        print0(f"step {step:05d}/{num_iterations:05d} | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if run.wandb and (last_step or step % max(1, args.eval_every) == 0):
        run.wandb.log({"step": step, "val/loss": val, **{f"val/{k}": v for k, v in metrics.items()}})
    if last_step or (args.save_every > 0 and step % args.save_every == 0 and step != start_step):
        loop = {"log": steplog.state(), "val_loss": val, "metrics": metrics, "history": history}
        save_checkpoint(checkpoint_dir, step, orig_model, optimizers,
                        {"model_config": config.to_dict(), "args": vars(args), "source": args.source,
                         "loop_state": loop}, rank=rank, world_size=world_size)
    if last_step:
        break

    micro = [next(train_iter) for _ in range(grad_accum_steps)]
    # normalise by the supervised tokens of the whole step, over every process; the optimizer
    # averages gradients over processes, hence × world_size
    num_tokens = reduce_sum(sum((y >= 0).sum() for _, y in micro).float()).clamp(min=1)
    lrm = lr_multiplier(step, num_iterations, 0.0, 1.0, 0.0)  # linear decay to zero
    losses, dt = timed(run, train_step, model, optimizers, micro, autocast, lrm, reduction="sum",
                       loss_scale=world_size / num_tokens)
    step += 1
    train_loss = (reduce_sum(torch.stack(losses).sum()) / num_tokens).item()
    line, numbers = steplog.update(step, train_loss, lrm, dt, int(num_tokens.item()))
    history["step"].append(step)
    history["train_loss"].append(numbers["loss"])
    print0(line)
    if run.wandb:
        run.wandb.log({"step": step, **{f"train/{k}": v for k, v in numbers.items()}})

# -------------------------------------------------------------------------------------------------
if run.master:
    (checkpoint_dir / "history.json").write_text(json.dumps(history))
log_section("Chat SFT", [{"source": args.source, "model_tag": model_tag, "iterations": num_iterations,
                          "conversations": len(train_mix), "examples_per_step": args.target_examples_per_step,
                          "device_batch_size": device_batch_size, "final_val_loss": val,
                          **{f"quick_{k}": v for k, v in metrics.items()},
                          "training_time_min": steplog.total_time / 60}])
print0(f"done: val loss {val:.4f}; saved {checkpoint_dir}")
if run.wandb:
    run.wandb.finish()
compute_cleanup()
