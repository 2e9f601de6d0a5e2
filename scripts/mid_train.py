"""Midtraining: teach the base model conversations, the special tokens, multiple choice and tool use.

    python -m scripts.mid_train --num-iterations=100 --device-batch-size=4 --total-batch-size=8192
    torchrun --standalone --nproc_per_node=8 -m scripts.mid_train
    python -m scripts.mid_train ... --resume        # continue the last run

Data: a shuffled mixture of chat conversations (SmolTalk; offline chitchat + natural_instructions),
multiple-choice training data (MMLU auxiliary_train; offline ARC/BoolQ/... train splits), math with
calculator calls (GSM8K train when online, plus our synthetic word problems), identity
conversations (dev/gen_identity.py) and spelling tasks. Conversations are rendered with
render_conversation and packed into one token stream, as in pretraining. One epoch by default.
Reads <base>/base_checkpoints/<tag>/, writes <base>/mid_checkpoints/<tag>/.
"""

import json
import math
import os

import torch

from nanochat.checkpoint_manager import save_checkpoint, stage_dir
from nanochat.common import ScriptParser, compute_cleanup, get_base_dir, peak_flops, print0, setup_logging
from nanochat.dataloader import conversation_data_loader
from nanochat.loss_eval import evaluate_bpb
from nanochat.report import log_section
from nanochat.tokenizer import get_token_bytes
from nanochat.training import (PendingBatches, StepLog, add_lr_flags, add_run_flags, auto_device_batch_size,
                               batch_candidates, batch_size_or_auto, init_run, load_source_or_exit, lr_multiplier,
                               positive_int, resume, timed, train_step, unit_fraction)
from tasks.common import TaskDataError, TaskMixture
from tasks.customjson import CustomJSON
from tasks.gsm8k import GSM8K
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SimpleSpelling, SpellingBee
from tasks.toolmath import SyntheticMath

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "Midtrain the base model on conversations.")
add_run_flags(parser)
parser.add_argument("-g", "--model-tag", default=None, help="base model tag to start from (default: the deepest)")
parser.add_argument("-s", "--step", type=int, default=None, help="base checkpoint step (default: the last)")
parser.add_argument("--device-batch-size", type=batch_size_or_auto, default=32,
                    help="sequences per forward pass per process; auto: the largest that fits (CUDA), 8 elsewhere")
parser.add_argument("--total-batch-size", type=positive_int, default=524288, help="tokens per optimizer step")
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1 = one epoch of the mixture)")
add_lr_flags(parser, init_lr_frac=1.0)
parser.add_argument("--warmdown-ratio", type=unit_fraction, default=0.2, help="fraction of steps of linear LR warmdown")
parser.add_argument("--eval-every", type=int, default=150,
                    help="val bits-per-byte every N steps (-1 = only at the end)")
parser.add_argument("--eval-tokens", type=positive_int, default=20 * 524288,
                    help="tokens of validation conversations per eval")
parser.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (always at the end)")
parser.add_argument("--identity-path", default=None,
                    help="identity conversations jsonl (default <base>/identity_conversations.jsonl)")
parser.add_argument("--resume", action="store_true", help="continue from the last committed mid checkpoint")
args = parser.parse_args()
setup_logging()

# -------------------------------------------------------------------------------------------------
run = init_run(args.device_type, args.dtype, args.compile, args.run, vars(args), project="nanochat-mid")
device, world_size, rank, autocast, dtype_name = run.device, run.world_size, run.rank, run.autocast, run.dtype_name
model, tokenizer, base_meta, model_tag = load_source_or_exit("base", device, args.model_tag, args.step, "mid_train")
config = model.config
T = config.sequence_len
checkpoint_dir = stage_dir("mid") / model_tag
token_bytes = get_token_bytes(device)

# -------------------------------------------------------------------------------------------------
# the mixture
identity_path = args.identity_path or os.path.join(get_base_dir(), "identity_conversations.jsonl")
train_tasks = [SmolTalk("train"), MMLU("auxiliary_train", "train"), SyntheticMath(20000, "train"),
               SimpleSpelling(20000, "train"), SpellingBee(20000, "train")]
try:
    train_tasks.append(GSM8K("main", "train"))
except TaskDataError as e:
    print0(f"mid_train: GSM8K train unavailable ({str(e)[:120]}...): synthetic word problems teach the tool instead")
if os.path.isfile(identity_path):
    train_tasks += [CustomJSON(identity_path), CustomJSON(identity_path)]  # listed twice: oversampled
else:
    print0(f"mid_train: no identity conversations at {identity_path} (make them with `python -m dev.gen_identity`)")
train_mix = TaskMixture(train_tasks)
val_mix = TaskMixture([SmolTalk("test", stop=2000), MMLU("all", "test", stop=1000), SyntheticMath(500, "test"),
                       SpellingBee(200, "test")])
print0(f"mixture: {len(train_mix):,} train and {len(val_mix):,} val conversations from {len(train_tasks)} tasks")

if args.num_iterations > 0:
    num_iterations = args.num_iterations
else:  # one epoch, from the mean rendered length of a sample of conversations
    sample = [train_mix[i] for i in range(0, len(train_mix), max(1, len(train_mix) // 500))]
    mean_len = sum(len(tokenizer.render_conversation(c)[0]) for c in sample) / len(sample)
    num_iterations = max(1, math.ceil(mean_len * len(train_mix) / args.total_batch_size))
    print0(f"one epoch ≈ {mean_len:.0f} tokens × {len(train_mix):,} conversations → {num_iterations:,} steps")

optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr * args.init_lr_frac,
                                    embedding_lr=args.embedding_lr * args.init_lr_frac,
                                    matrix_lr=args.matrix_lr * args.init_lr_frac, compile=run.use_compile,
                                    muon_ns_dtype=run.ns_dtype)
orig_model = model
if run.use_compile:
    model = torch.compile(model, dynamic=False)

device_batch_size = args.device_batch_size
if device_batch_size == "auto":
    device_batch_size = auto_device_batch_size(orig_model, optimizers, autocast, T, config.vocab_size,
                                               batch_candidates(args.total_batch_size, T, world_size), forward=model)
tokens_per_fwdbwd = device_batch_size * T * world_size
if args.total_batch_size % tokens_per_fwdbwd != 0:
    parser.error(f"--total-batch-size={args.total_batch_size:,} is not divisible by device_batch_size × seq_len × "
                 f"processes = {tokens_per_fwdbwd:,}")
grad_accum_steps = args.total_batch_size // tokens_per_fwdbwd
print0(f"batch: {args.total_batch_size:,} tokens/step = {device_batch_size} × {T} × {world_size} processes × "
       f"{grad_accum_steps} accumulation steps; dtype {dtype_name}")

start_step, loop_state, loader_cursor = 0, {}, None
if args.resume:
    start_step, loop_state, rank_state = resume(checkpoint_dir, orig_model, optimizers, config.to_dict(), world_size,
                                                rank, device)
    loader_cursor = rank_state.get("dataloader")
train_loader = conversation_data_loader(tokenizer, train_mix, device_batch_size, T, device=device,
                                        resume_state=loader_cursor)
train_batches = PendingBatches(train_loader, loader_cursor)
eval_steps = max(1, args.eval_tokens // tokens_per_fwdbwd)
steplog = StepLog(num_iterations, orig_model.estimate_flops(), peak_flops(device.type, dtype_name), world_size,
                  loop_state.get("log"))
history = loop_state.get("history", {"step": [], "train_loss": [], "val_step": [], "val_bpb": []})
val_bpb = loop_state.get("val_bpb")

# -------------------------------------------------------------------------------------------------
step = start_step
while True:
    last_step = step == num_iterations
    if last_step or (args.eval_every > 0 and step % args.eval_every == 0):
        model.eval()
        val_loader = conversation_data_loader(tokenizer, val_mix, device_batch_size, T, device=device)
        val_bpb = evaluate_bpb(model, val_loader, eval_steps, token_bytes, autocast)
        history["val_step"].append(step)
        history["val_bpb"].append(val_bpb)
        print0(f"step {step:05d}/{num_iterations:05d} | val bpb {val_bpb:.4f}")
        if run.wandb:
            run.wandb.log({"step": step, "val/bpb": val_bpb})
        model.train()

    if last_step or (args.save_every > 0 and step % args.save_every == 0 and step != start_step):
        save_checkpoint(checkpoint_dir, step, orig_model, optimizers,
                        {"model_config": config.to_dict(), "args": vars(args), "source": "base",
                         "loop_state": {"log": steplog.state(), "val_bpb": val_bpb, "history": history}},
                        rank_state={"dataloader": train_batches.cursor}, rank=rank, world_size=world_size)
    if last_step:
        break

    lrm = lr_multiplier(step, num_iterations, 0.0, args.warmdown_ratio, 0.0)
    losses, dt = timed(run, train_step, model, optimizers, train_batches.take(grad_accum_steps), autocast, lrm,
                       loss_scale=1 / grad_accum_steps)
    train_loss = losses[-1]
    step += 1
    line, numbers = steplog.update(step, train_loss.item(), lrm, dt, args.total_batch_size)
    history["step"].append(step)
    history["train_loss"].append(numbers["loss"])
    print0(line)
    if run.wandb:
        run.wandb.log({"step": step, **{f"train/{k}": v for k, v in numbers.items()}})

# -------------------------------------------------------------------------------------------------
print0(f"done: val bpb {val_bpb:.4f}, training time {steplog.total_time / 60:.2f} min")
log_section("Midtraining", [{"model_tag": model_tag, "iterations": num_iterations, "conversations": len(train_mix),
                             "total_batch_size": args.total_batch_size, "dtype": dtype_name, "processes": world_size,
                             "final_val_bpb": val_bpb, "training_time_min": steplog.total_time / 60}])
if run.master:
    (checkpoint_dir / "history.json").write_text(json.dumps(history))
if run.wandb:
    run.wandb.finish()
compute_cleanup()
