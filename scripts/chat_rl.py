"""Reinforcement learning on math word problems: sample, check, push up what worked.

    python -m scripts.chat_rl --num-steps=20 --examples-per-step=4 --num-samples=4
    torchrun --standalone --nproc_per_node=8 -m scripts.chat_rl

On-policy policy gradient (GRPO-like without the trust region): for every problem, sample k
completions with the Engine, reward each with the task's checker, advantage = reward − mean
reward of the k. The loss is −Σ advantage · log p(token) over sampled tokens only (prompt and
forced tool output are masked), divided by the number of those tokens in the step. Problems: GSM8K
train when Hugging Face is reachable, else our synthetic word problems; pass@k on held-out problems
every --eval-every steps. Reads <base>/sft_checkpoints, writes <base>/rl_checkpoints/<tag>/.
"""

import time

import torch
import torch.distributed as dist

from nanochat.chat_metrics import generative_pass, spread_indices
from nanochat.checkpoint_manager import save_checkpoint, stage_dir
from nanochat.common import ScriptParser, compute_cleanup, print0, setup_logging
from nanochat.engine import Engine
from nanochat.report import log_section
from nanochat.rl import policy_gradient_backward
from nanochat.rl import rollouts as rl_rollouts
from nanochat.training import (add_lr_flags, add_run_flags, init_run, load_source_or_exit, lr_multiplier, positive_int,
                               set_lr)
from tasks.common import TaskDataError
from tasks.gsm8k import GSM8K
from tasks.toolmath import SyntheticMath

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "RL on math word problems with the task's checker as reward.")
parser.add_argument("-i", "--source", default="sft", choices=["base", "mid", "sft"], help="stage to start from")
parser.add_argument("-g", "--model-tag", default=None, help="model tag to start from (default: the deepest)")
parser.add_argument("-s", "--step", type=int, default=None, help="checkpoint step to start from (default: the last)")
add_run_flags(parser, compile_default=None)
parser.add_argument("--task", default="auto", choices=["auto", "gsm8k", "synthetic"],
                    help="problems: GSM8K (online) or synthetic word problems; auto = GSM8K if reachable")
parser.add_argument("--num-steps", type=positive_int, default=200, help="optimizer steps")
parser.add_argument("--examples-per-step", type=positive_int, default=16, help="problems per step (all processes)")
parser.add_argument("--num-samples", type=positive_int, default=16, help="completions sampled per problem")
parser.add_argument("--max-new-tokens", type=positive_int, default=256, help="completion length limit")
parser.add_argument("-t", "--temperature", type=float, default=1.0, help="sampling temperature")
parser.add_argument("-k", "--top-k", type=int, default=50, help="sampling top-k (0 = off)")
add_lr_flags(parser, init_lr_frac=0.05)
parser.add_argument("--eval-every", type=int, default=50, help="pass@k on held-out problems every N steps (-1 = end)")
parser.add_argument("--eval-examples", type=positive_int, default=100, help="held-out problems per evaluation")
parser.add_argument("--eval-samples", type=positive_int, default=4, help="k of pass@k")
parser.add_argument("--seed", type=int, default=0, help="sampling seed")
args = parser.parse_args()
if args.num_samples < 2:
    parser.error("--num-samples must be at least 2 (advantages compare samples of the same problem)")
setup_logging()

# -------------------------------------------------------------------------------------------------
# sampling shapes change every step: no torch.compile here
run = init_run(args.device_type, args.dtype, "off", args.run, vars(args), project="nanochat-rl")
device, world_size, rank, autocast = run.device, run.world_size, run.rank, run.autocast
model, tokenizer, src_meta, model_tag = load_source_or_exit(args.source, device, args.model_tag, args.step, "chat_rl")
config = model.config
engine = Engine(model, tokenizer)

train_task = val_task = None
if args.task in ("auto", "gsm8k"):
    try:
        train_task, val_task = GSM8K("main", "train"), GSM8K("main", "test")
    except TaskDataError as e:
        if args.task == "gsm8k":
            raise SystemExit(f"chat_rl: {e}") from None
        print0("chat_rl: GSM8K train is not reachable: RL on synthetic word problems instead")
if train_task is None:
    train_task, val_task = SyntheticMath(50_000, "train", seed=123), SyntheticMath(1000, "test")
if args.examples_per_step % world_size != 0:
    parser.error(f"--examples-per-step={args.examples_per_step} must divide by the {world_size} processes")
per_rank = args.examples_per_step // world_size

optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr * args.init_lr_frac,
                                    embedding_lr=args.embedding_lr * args.init_lr_frac,
                                    matrix_lr=args.matrix_lr * args.init_lr_frac, muon_ns_dtype=run.ns_dtype)


def reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if run.ddp:
        dist.all_reduce(t)
    return t


def pass_at_k() -> float:
    model.eval()
    indices = spread_indices(len(val_task), args.eval_examples)[rank::world_size]
    with autocast:
        solved, total = generative_pass(engine, tokenizer, val_task, indices, num_samples=args.eval_samples,
                                        max_tokens=args.max_new_tokens, temperature=1.0, top_k=args.top_k or None,
                                        seed=10_000)
    model.train()
    solved, total = reduce_sum(torch.tensor([solved, total], device=device)).tolist()
    return solved / max(1, total)


# -------------------------------------------------------------------------------------------------
history = {"step": [], "mean_reward": [], "eval_step": [], "pass_at_k": []}
passk = float("nan")
step = 0
while True:
    last_step = step == args.num_steps
    if last_step or (args.eval_every > 0 and step % args.eval_every == 0):
        passk = pass_at_k()
        history["eval_step"].append(step)
        history["pass_at_k"].append(passk)
        print0(f"step {step:05d}/{args.num_steps:05d} | pass@{args.eval_samples} {passk:.4f}")
        if run.wandb:
            run.wandb.log({"step": step, f"val/pass@{args.eval_samples}": passk})
    if last_step:
        break

    t0 = time.time()
    # --- rollouts: k samples for each of this rank's problems, then the policy gradient ---------
    model.eval()
    indices = [(step * args.examples_per_step + rank * per_rank + j) % len(train_task) for j in range(per_rank)]
    rollouts = rl_rollouts(engine, tokenizer, train_task, indices, args.num_samples, args.max_new_tokens,
                           args.temperature, args.top_k or None, [args.seed + 7919 * i for i in indices], autocast)
    model.train()
    num_tokens = reduce_sum(torch.tensor(float(sum(r.num_sampled() for r in rollouts)), device=device)).item()
    for r in rollouts:
        policy_gradient_backward(model, r, num_tokens, scale=world_size, autocast=autocast)
    lrm = lr_multiplier(step, args.num_steps, 0.0, 1.0, 0.0)
    set_lr(optimizers, lrm)
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    step += 1

    rewards_sum = torch.stack([r.rewards.sum() for r in rollouts]).sum().to(device)
    mean_reward = reduce_sum(rewards_sum).item() / (args.examples_per_step * args.num_samples)
    history["step"].append(step)
    history["mean_reward"].append(mean_reward)
    print0(f"step {step:05d}/{args.num_steps:05d} | mean reward {mean_reward:.4f} | lrm {lrm:.2f} | "
           f"sampled tokens {int(num_tokens):,} | dt {(time.time() - t0) * 1000:.0f}ms")
    if run.wandb:
        run.wandb.log({"step": step, "train/mean_reward": mean_reward, "train/lrm": lrm})

# -------------------------------------------------------------------------------------------------
checkpoint_dir = stage_dir("rl") / model_tag
save_checkpoint(checkpoint_dir, step, model, optimizers,
                {"model_config": config.to_dict(), "args": vars(args), "source": args.source,
                 "loop_state": {"history": history}}, rank=rank, world_size=world_size)
log_section("Chat RL", [{"source": args.source, "model_tag": model_tag, "task": type(train_task).__name__,
                         "steps": args.num_steps, "examples_per_step": args.examples_per_step,
                         "samples_per_example": args.num_samples, f"final_pass@{args.eval_samples}": passk,
                         "first_mean_reward": history["mean_reward"][0] if history["mean_reward"] else float("nan"),
                         "last_mean_reward": history["mean_reward"][-1] if history["mean_reward"] else float("nan")}])
print0(f"done: pass@{args.eval_samples} {passk:.4f}; saved {checkpoint_dir}")
if run.wandb:
    run.wandb.finish()
compute_cleanup()
