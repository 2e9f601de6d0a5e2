"""Pretrain the base model on the pretraining shards.

    python -m scripts.base_train --depth=4 --max-seq-len=256 --device-batch-size=8 \
        --total-batch-size=8192 --num-iterations=200 --eval-every=50        # CPU, minutes
    torchrun --standalone --nproc_per_node=8 -m scripts.base_train --depth=20   # 8 GPUs
    python -m scripts.base_train --depth=4 ... --resume                     # continue the last run
    python -m scripts.base_train --depth=20 --device-batch-size=auto        # the largest batch that fits

    # two machines, 8 GPUs each: run on both, NODE_RANK=0 on the one at MASTER_ADDR
    torchrun --nnodes=2 --node-rank=$NODE_RANK --nproc_per_node=8 --rdzv-backend=c10d \
        --rdzv-endpoint=$MASTER_ADDR:29500 --rdzv-id=nanochat -m scripts.base_train --depth=20

One dial: --depth sets width (64·depth), heads, and through the tokens:params ratio the horizon.
Checkpoints go to <base>/base_checkpoints/d<depth>/step_NNNNNN/.
"""

import json

import torch

from nanochat.checkpoint_manager import save_checkpoint, stage_dir
from nanochat.common import ScriptParser, compute_cleanup, peak_flops, print0, setup_logging
from nanochat.dataloader import tokenizing_distributed_data_loader
from nanochat.gpt import GPT, GPTConfig
from nanochat.loss_eval import evaluate_bpb
from nanochat.report import log_section
from nanochat.tokenizer import get_token_bytes, get_tokenizer
from nanochat.training import (SAMPLE_PROMPTS, PendingBatches, StepLog, add_lr_flags, add_run_flags,
                               auto_device_batch_size, batch_candidates, batch_size_or_auto, init_run, lr_multiplier,
                               muon_momentum, positive_int, resume, timed, train_step, unit_fraction)

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "Pretrain the base model.")
add_run_flags(parser)
# model
parser.add_argument("--depth", type=positive_int, default=20, help="the one dial: layers; width = 64*depth")
parser.add_argument("--head-dim", type=positive_int, default=128, help="target attention head size")
parser.add_argument("--max-seq-len", type=positive_int, default=2048, help="context length")
parser.add_argument("--activation-checkpointing", action="store_true", help="recompute activations to save memory")
# horizon: the first one set wins
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1 = derive)")
parser.add_argument("--target-flops", type=float, default=-1.0, help="total training FLOPs (-1 = off)")
parser.add_argument("--target-param-data-ratio", type=float, default=20, help="tokens per parameter (-1 = off)")
# batch
parser.add_argument("--device-batch-size", type=batch_size_or_auto, default=32,
                    help="sequences per forward pass per process; auto: the largest that fits (CUDA), 8 elsewhere")
parser.add_argument("--total-batch-size", type=positive_int, default=524288,
                    help="tokens per optimizer step (all processes)")
# optimization
add_lr_flags(parser)
parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
parser.add_argument("--warmup-ratio", type=unit_fraction, default=0.0, help="fraction of steps of linear LR warmup")
parser.add_argument("--warmdown-ratio", type=unit_fraction, default=0.2, help="fraction of steps of linear LR warmdown")
parser.add_argument("--final-lr-frac", type=unit_fraction, default=0.0, help="LR multiplier at the end of warmdown")
# evaluation, sampling, checkpoints
parser.add_argument("--eval-every", type=int, default=250,
                    help="val bits-per-byte every N steps (-1 = only at the end)")
parser.add_argument("--eval-tokens", type=positive_int, default=20 * 524288,
                    help="tokens of validation text per evaluation")
parser.add_argument("--sample-every", type=int, default=2000, help="print samples every N steps (-1 = only at the end)")
parser.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps (always at the end)")
parser.add_argument("-g", "--model-tag", default=None, help="checkpoint directory name (default d<depth>)")
parser.add_argument("--resume", action="store_true",
                    help="continue from the last committed checkpoint of this model tag")
parser.add_argument("--seed", type=int, default=42, help="seed of the initialisation")
args = parser.parse_args()
if args.warmup_ratio + args.warmdown_ratio > 1.0:
    parser.error("--warmup-ratio + --warmdown-ratio must not exceed 1")
setup_logging()

# -------------------------------------------------------------------------------------------------
run = init_run(args.device_type, args.dtype, args.compile, args.run, vars(args), seed=args.seed)
device, world_size, rank, autocast, dtype_name = run.device, run.world_size, run.rank, run.autocast, run.dtype_name

# -------------------------------------------------------------------------------------------------
# model, derived from --depth and the tokenizer
tokenizer = get_tokenizer()
token_bytes = get_token_bytes(device)
config = GPTConfig.from_depth(args.depth, tokenizer.vocab_size, sequence_len=args.max_seq_len, head_dim=args.head_dim)
with torch.device("meta"):
    model = GPT(config)
model.to_empty(device=device)
model.init_weights()
model.set_activation_checkpointing(args.activation_checkpointing)
num_params = model.num_scaling_params()
flops_per_token = model.estimate_flops()
print0(f"model: depth {config.n_layer}, width {config.n_embd}, {config.n_head} heads of {config.head_dim}, "
       f"seq {config.sequence_len}, vocab {config.vocab_size:,}: {num_params:,} parameters, "
       f"{flops_per_token:.3e} FLOPs/token")

# horizon: --num-iterations, else --target-flops, else --target-param-data-ratio
if args.num_iterations > 0:
    num_iterations, horizon_from = args.num_iterations, "--num-iterations"
elif args.target_flops > 0:
    num_iterations = round(args.target_flops / (flops_per_token * args.total_batch_size))
    horizon_from = f"--target-flops={args.target_flops:.3e}"
elif args.target_param_data_ratio > 0:
    num_iterations = int(args.target_param_data_ratio * num_params) // args.total_batch_size
    horizon_from = f"--target-param-data-ratio={args.target_param_data_ratio}"
else:
    parser.error("set one of --num-iterations, --target-flops or --target-param-data-ratio")
num_iterations = max(1, num_iterations)
total_tokens = num_iterations * args.total_batch_size
print0(f"horizon: {num_iterations:,} steps from {horizon_from}; {total_tokens:,} tokens "
       f"({total_tokens / num_params:.1f} per parameter), {flops_per_token * total_tokens:.3e} FLOPs")
print0(f"device {device}, dtype {dtype_name}, compile {run.use_compile}, distributed {run.ddp}")

optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                    matrix_lr=args.matrix_lr, weight_decay=args.weight_decay, compile=run.use_compile,
                                    muon_ns_dtype=run.ns_dtype)
orig_model = model
if run.use_compile:
    model = torch.compile(model, dynamic=False)

# batch: the device batch (probed when auto), then accumulation up to --total-batch-size
device_batch_size = args.device_batch_size
if device_batch_size == "auto":
    device_batch_size = auto_device_batch_size(orig_model, optimizers, autocast, args.max_seq_len, config.vocab_size,
                                               batch_candidates(args.total_batch_size, args.max_seq_len, world_size),
                                               forward=model)
tokens_per_fwdbwd = device_batch_size * args.max_seq_len * world_size
if args.total_batch_size % tokens_per_fwdbwd != 0:
    parser.error(f"--total-batch-size={args.total_batch_size:,} is not divisible by device_batch_size × max_seq_len × "
                 f"processes = {device_batch_size} × {args.max_seq_len} × {world_size} = {tokens_per_fwdbwd:,}; "
                 f"use a multiple of {tokens_per_fwdbwd:,}")
grad_accum_steps = args.total_batch_size // tokens_per_fwdbwd
print0(f"batch: {args.total_batch_size:,} tokens/step = {device_batch_size} seqs × {args.max_seq_len} × "
       f"{world_size} processes × {grad_accum_steps} accumulation steps")

# -------------------------------------------------------------------------------------------------
# resume
model_tag = args.model_tag or f"d{args.depth}"
checkpoint_dir = stage_dir("base") / model_tag
start_step, loop_state, loader_cursor = 0, {}, None
if args.resume:
    start_step, loop_state, rank_state = resume(checkpoint_dir, orig_model, optimizers, config.to_dict(), world_size,
                                                rank, device)
    loader_cursor = rank_state.get("dataloader")

# -------------------------------------------------------------------------------------------------
# data
train_loader = tokenizing_distributed_data_loader(tokenizer, device_batch_size, args.max_seq_len, "train",
                                                  device=device, resume_state=loader_cursor)
train_batches = PendingBatches(train_loader, loader_cursor)
eval_steps = max(1, args.eval_tokens // tokens_per_fwdbwd)
peak = peak_flops(device.type, dtype_name)

# -------------------------------------------------------------------------------------------------
# the loop: one exit, evaluation and saving on the last step like any other
step = start_step
steplog = StepLog(num_iterations, flops_per_token, peak, world_size, loop_state.get("log"))
val_bpb = loop_state.get("val_bpb")
min_val_bpb = loop_state.get("min_val_bpb", float("inf"))
history = loop_state.get("history", {"step": [], "train_loss": [], "val_step": [], "val_bpb": []})
while True:
    last_step = step == num_iterations
    if last_step or (args.eval_every > 0 and step % args.eval_every == 0):
        model.eval()
        val_loader = tokenizing_distributed_data_loader(tokenizer, device_batch_size, args.max_seq_len, "val",
                                                        device=device)
        val_bpb = evaluate_bpb(model, val_loader, eval_steps, token_bytes, autocast)
        min_val_bpb = min(min_val_bpb, val_bpb)
        history["val_step"].append(step)
        history["val_bpb"].append(val_bpb)
        print0(f"step {step:05d}/{num_iterations:05d} | val bpb {val_bpb:.4f}")
        if run.wandb:
            run.wandb.log({"step": step, "val/bpb": val_bpb})
        model.train()

    if run.master and (last_step or (args.sample_every > 0 and step > 0 and step % args.sample_every == 0)):
        orig_model.eval()
        for prompt in SAMPLE_PROMPTS:
            ids = tokenizer.encode(prompt, prepend="<|bos|>")
            with autocast:
                out = list(orig_model.generate(ids, max_tokens=16, temperature=0))
            print0(f"sample: {tokenizer.decode(ids[1:] + out)!r}")
        orig_model.train()

    if last_step or (args.save_every > 0 and step % args.save_every == 0 and step != start_step):
        loop = {"log": steplog.state(), "val_bpb": val_bpb, "min_val_bpb": min_val_bpb, "history": history}
        save_checkpoint(checkpoint_dir, step, orig_model, optimizers,
                        {"model_config": config.to_dict(), "args": vars(args), "loop_state": loop,
                         "num_iterations": num_iterations},
                        rank_state={"dataloader": train_batches.cursor}, rank=rank, world_size=world_size)

    if last_step:
        break

    # --- one optimizer step -------------------------------------------------------------------
    lrm = lr_multiplier(step, num_iterations, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)
    losses, dt = timed(run, train_step, model, optimizers, train_batches.take(grad_accum_steps), autocast, lrm,
                       momentum=muon_momentum(step), loss_scale=1 / grad_accum_steps)
    train_loss = losses[-1]
    step += 1

    # --- logging ------------------------------------------------------------------------------
    line, numbers = steplog.update(step, train_loss.item(), lrm, dt, args.total_batch_size)
    history["step"].append(step)
    history["train_loss"].append(numbers["loss"])
    print0(line)
    if run.wandb:
        run.wandb.log({"step": step, **{f"train/{k}": v for k, v in numbers.items()}})

# -------------------------------------------------------------------------------------------------
print0(f"done: min val bpb {min_val_bpb:.4f}, training time {steplog.total_time / 60:.2f} min")
log_section("Base model training", [
    {"depth": args.depth, "parameters": num_params, "flops_per_token": f"{flops_per_token:.3e}",
     "iterations": num_iterations, "total_batch_size": args.total_batch_size, "tokens": total_tokens,
     "tokens_per_param": total_tokens / num_params, "dtype": dtype_name, "processes": world_size,
     "device_batch_size": device_batch_size,
     "min_val_bpb": min_val_bpb, "final_val_bpb": val_bpb, "training_time_min": steplog.total_time / 60},
])
if run.master:
    # the curves for the report card's plots
    (stage_dir("base") / model_tag / "history.json").write_text(json.dumps(history))
if run.wandb:
    run.wandb.finish()
compute_cleanup()
