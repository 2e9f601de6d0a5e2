"""Training throughput: tokens/s and MFU of full training steps (forward, backward, Muon + AdamW)
against the matmul peak measured on this machine in the same run, for float32 and bf16 autocast,
eager and compiled; optionally the bf16-vs-fp32 loss curve on a fixed real token stream.

    python -m dev.bench_train                                    # CPU: d2, 4 × 128 tokens, seconds
    python -m dev.bench_train --depth 12 --device-batch-size 16 --seq-len 2048 --compile     # one GPU
    torchrun --nproc_per_node=8 -m dev.bench_train --depth 20 --device-batch-size 32 --seq-len 2048

The CPU dtype table in dev/LOG.md (2026-11-23; 5.5 min on 2 idle cores with a warm compile cache):

    python -m dev.bench_train --depths 4 6 --seq-len 512 --vocab-size 32768 --device-batch-size 1 \
        --dtypes float32 bfloat16 --modes eager compile --muon-ns-dtypes default float32 bfloat16 \
        --steps 10 --loss-steps 200 --profile

Rows: every depth × dtype × mode × Muon Newton–Schulz dtype asked for. bfloat16 is
torch.autocast(bf16) around the forward with float32 weights and optimizer state, exactly as
scripts/base_train.py does; modes are eager, activation checkpointing (recompute, so slower) and
torch.compile of the model plus its optimizers (base_train --compile on). Newton–Schulz "default"
is base_train's choice (bf16 when training in bf16, else Muon's default: fp32 on CPU); "NS <dtype>"
rows override it, and an override equal to the default is not timed twice. The reference row is
float32 + compile: the way reference nanochat trains on CPU, except that its Muon runs
Newton–Schulz in bf16 on every device, which is the "float32 compile NS bfloat16" row.

Timing: configurations of one depth take turns, one step each per round, and every round also
re-measures the matmul peaks, so a neighbour stealing a core slows all of them alike; each number
is the median over rounds. MFU = estimate_flops() · tokens/s / (peak of the row's dtype · ranks);
"MFU fwd+bwd" leaves the optimizer out (the limit of long gradient accumulation).

Loss check (--loss-steps N): the first depth's rows in the compiled mode (eager if not timed) -
float32 with the first of --muon-ns-dtypes, and every bfloat16 one - are re-initialised with the
same seed and trained side by side on the same batches of Python stdlib source, BPE-tokenised
in-run to --vocab-size. Criterion: the mean loss of the last 20 steps within 2% of the float32
row's; the max relative gap of EMA(0.9)-smoothed curves is printed too. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sysconfig
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import torch
import torch.distributed as dist
from torch.profiler import record_function

from nanochat.common import autodetect_device_type, print0
from nanochat.gpt import GPT, GPTConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LOSS_GOAL = 0.02  # the issue's tolerance on bf16 vs fp32 loss
SPEED_GOAL = 2.0  # bf16 tokens/s over the reference row
MFU_GOAL = 0.70
LOSS_TAIL = 20  # steps averaged at the end of the loss curves


def row_label(dtype: str, mode: str, ns: str) -> str:
    return f"{dtype} {mode}" + ("" if ns == "default" else f" NS {ns}")


parser = argparse.ArgumentParser(description="training tokens/s and MFU vs the measured matmul peak")
parser.add_argument("--depth", "--depths", dest="depths", type=int, nargs="+", default=[2],
                    help="model depths (width = 64·depth)")
parser.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size")
parser.add_argument("--seq-len", type=int, default=128, help="tokens per row")
parser.add_argument("--device-batch-size", type=int, default=4, help="rows per forward per rank")
parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (rounds)")
parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration (compiles happen here)")
parser.add_argument("--matmul-size", type=int, default=-1, help="side of the peak matmul (-1 = 4096 GPU, 1024 CPU)")
parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES),
                    help="autocast dtypes to time (float32 = no autocast)")
parser.add_argument("--modes", nargs="+", default=["eager", "checkpointing"],
                    choices=["eager", "checkpointing", "compile"], help="execution modes to time")
parser.add_argument("--compile", action="store_true", help="also time the compile mode (same as adding it to --modes)")
parser.add_argument("--muon-ns-dtypes", nargs="+", default=["default"], choices=["default", *DTYPES],
                    help="Muon Newton–Schulz dtypes (default = base_train's: bf16 when training in bf16, "
                         "else Muon's own: bf16 on CUDA, fp32 elsewhere)")
parser.add_argument("--loss-steps", type=int, default=0, help="steps of the bf16-vs-fp32 loss curves (0 = off)")
parser.add_argument("--profile", nargs="?", const="fastest", default=None, metavar="CONFIG",
                    help="torch.profiler table of 2 steps of one row of the last depth, named as in the table "
                         "(e.g. 'bfloat16 eager'); alone: the fastest row with the default Newton–Schulz dtype")
parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation")
args = parser.parse_args()
modes = list(dict.fromkeys(args.modes + (["compile"] if args.compile else [])))
for name in ("seq_len", "device_batch_size", "steps", "vocab_size"):
    if getattr(args, name) <= 0:
        parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
if min(args.depths) <= 0:
    parser.error(f"--depths must be positive, got {args.depths}")
if args.loss_steps and "float32" not in args.dtypes:
    parser.error("--loss-steps compares against float32: add float32 to --dtypes")

# -------------------------------------------------------------------------------------------------
distributed = "RANK" in os.environ
device_type = autodetect_device_type()
if distributed:
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
world = dist.get_world_size() if distributed else 1
device = torch.device(device_type, torch.cuda.current_device()) if device_type == "cuda" else torch.device(device_type)
# one process compiles a model per depth × dtype × NS dtype (each a recompile of GPT.forward) and the
# optimizers' shared kernels once per matrix shape and dtype: more than dynamo's default limit of 8
torch._dynamo.config.recompile_limit = 64
matmul_n = args.matmul_size if args.matmul_size > 0 else (4096 if device_type == "cuda" else 1024)
tokens_per_step = args.device_batch_size * args.seq_len * world


def resolve_ns(dtype: str, ns: str) -> str:
    """The Newton–Schulz dtype a row really uses. "default" is base_train's rule: bf16 when training
    in bf16, else Muon's own default (bf16 on CUDA, fp32 elsewhere)."""
    if ns != "default":
        return ns
    return "bfloat16" if dtype == "bfloat16" or device_type == "cuda" else "float32"


combos: list[tuple[str, str, str]] = []  # (mode, dtype, ns); an override equal to the default is dropped
for mode in modes:
    for dtype in args.dtypes:
        for ns in args.muon_ns_dtypes:
            if all((m, d, resolve_ns(d, n)) != (mode, dtype, resolve_ns(dtype, ns)) for m, d, n in combos):
                combos.append((mode, dtype, ns))
labels = [row_label(dtype, mode, ns) for mode, dtype, ns in combos]
if args.profile not in (None, "fastest", *labels):
    parser.error(f"--profile {args.profile!r} names no row; one of: " + ", ".join(map(repr, labels)))


def sync() -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def matmul_flops(dtype: torch.dtype, seconds: float = 0.25) -> float:
    """FLOP/s of a square matmul in `dtype`: the denominator of MFU for rows of that dtype."""
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(5):
            a @ b
        sync()
        reps += 5
    return 2 * matmul_n**3 * reps / (time.perf_counter() - t0)


@dataclass
class Run:
    """One configuration: a model with its optimizers, and the times of its timed steps."""

    depth: int
    dtype: str
    mode: str
    ns: str  # Muon Newton–Schulz dtype: "default" or an override
    model: GPT
    forward: torch.nn.Module
    optimizers: list
    flops_per_token: int
    fwdbwd_s: list[float] = field(default_factory=list)
    opt_s: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return row_label(self.dtype, self.mode, self.ns)

    def reset(self, seed: int) -> None:
        """Same weights as a fresh build with `seed`, empty optimizer state."""
        torch.manual_seed(seed)
        self.model.init_weights()
        for opt in self.optimizers:
            opt.state.clear()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
        """One optimizer step on one micro-batch: (loss, forward+backward seconds, optimizer seconds)."""
        autocast = torch.autocast(device_type, dtype=torch.bfloat16) if self.dtype == "bfloat16" else nullcontext()
        sync()
        t0 = time.perf_counter()
        with record_function("## forward+backward"):  # phase labels for --profile
            with autocast:
                loss = self.forward(x, y)
            loss.backward()
            sync()
        t1 = time.perf_counter()
        with record_function("## optimizer"):
            for opt in self.optimizers:
                opt.step()
            self.model.zero_grad(set_to_none=True)
            sync()
        return loss.item(), t1 - t0, time.perf_counter() - t1


def build(depth: int, dtype: str, mode: str, ns: str) -> Run:
    torch.manual_seed(args.seed)
    cfg = GPTConfig.from_depth(depth, vocab_size=args.vocab_size, sequence_len=args.seq_len)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.init_weights()
    model.set_activation_checkpointing(mode == "checkpointing")
    compiled = mode == "compile"
    muon_ns_dtype = DTYPES[ns] if ns != "default" else (torch.bfloat16 if dtype == "bfloat16" else None)
    optimizers = model.setup_optimizers(compile=compiled, muon_ns_dtype=muon_ns_dtype)  # [DistAdamW, Muon]
    forward = torch.compile(model, dynamic=False) if compiled else model
    return Run(depth, dtype, mode, ns, model, forward, optimizers, model.estimate_flops())


def stdlib_tokens(n: int) -> torch.Tensor:
    """The first n tokens of the Python stdlib's top-level modules (sorted, BOS per file), with a
    BPE of --vocab-size trained on them here: real text, identical on every run of one Python."""
    from nanochat.tokenizer import Tokenizer

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    tokenizer = Tokenizer.train_from_iterator(texts, args.vocab_size)
    ids: list[int] = []
    for doc in tokenizer.encode(texts, prepend="<|bos|>"):
        ids.extend(doc)
        if len(ids) >= n:
            break
    if len(ids) < n:
        raise SystemExit(f"the stdlib gives {len(ids):,} tokens, fewer than the {n:,} that --loss-steps "
                         f"needs; lower --loss-steps or --device-batch-size")
    return torch.tensor(ids[:n], dtype=torch.long, device=device)


def smooth(xs: list[float], beta: float = 0.9) -> list[float]:
    out, avg = [], 0.0
    for i, v in enumerate(xs):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))  # debiased EMA, like the training log's loss
    return out


# -------------------------------------------------------------------------------------------------
# time every configuration, depth by depth, interleaved; the loss curves on the first depth
peak_samples: dict[str, list[float]] = {d: [] for d in args.dtypes}
runs: list[Run] = []
loss_result = None
x = torch.randint(0, args.vocab_size, (args.device_batch_size, args.seq_len), device=device)
y = torch.randint(0, args.vocab_size, (args.device_batch_size, args.seq_len), device=device)
t_start = time.perf_counter()
for depth in args.depths:
    group = [build(depth, dtype, mode, ns) for mode, dtype, ns in combos]
    for run in group:
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            run.step(x, y)
        print0(f"d{depth} {run.label}: warm-up {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    for _ in range(args.steps):
        for run in group:
            _, fwdbwd, opt = run.step(x, y)
            run.fwdbwd_s.append(fwdbwd)
            run.opt_s.append(opt)
        for dtype in args.dtypes:
            peak_samples[dtype].append(matmul_flops(DTYPES[dtype]))
    print0(f"d{depth}: {args.steps} timed rounds {time.perf_counter() - t0:.1f}s")
    runs += group

    if args.loss_steps and depth == args.depths[0]:
        loss_mode = "compile" if "compile" in modes else modes[0]
        curves = [run for run in group if run.mode == loss_mode  # float32 as base_train runs it, every bf16
                  and (run.dtype == "bfloat16" or run.ns == args.muon_ns_dtypes[0])]
        stream = stdlib_tokens(args.loss_steps * args.device_batch_size * args.seq_len + 1)
        losses: dict[str, list[float]] = {run.label: [] for run in curves}
        step_s: dict[str, list[float]] = {run.label: [] for run in curves}
        for run in curves:
            run.reset(args.seed)
        for step in range(args.loss_steps):
            start = step * args.device_batch_size * args.seq_len
            chunk = stream[start : start + args.device_batch_size * args.seq_len + 1]
            bx = chunk[:-1].view(args.device_batch_size, args.seq_len)  # (B, T)
            by = chunk[1:].view(args.device_batch_size, args.seq_len)  # (B, T), next tokens
            for run in curves:
                loss, fwdbwd, opt = run.step(bx, by)
                losses[run.label].append(loss)
                step_s[run.label].append(fwdbwd + opt)
            if (step + 1) % 50 == 0 or step + 1 == args.loss_steps:
                print0(f"d{depth} loss curves: step {step + 1}/{args.loss_steps}, "
                       + ", ".join(f"{label} {curve[-1]:.3f}" for label, curve in losses.items()))
        ref = next(run.label for run in curves if run.dtype == "float32" and run.ns == args.muon_ns_dtypes[0])
        tail = min(LOSS_TAIL, args.loss_steps)
        tail_mean = {label: sum(curve[-tail:]) / tail for label, curve in losses.items()}
        smoothed = {label: smooth(curve) for label, curve in losses.items()}
        loss_result = dict(depth=depth, mode=loss_mode, steps=args.loss_steps, tail=tail, reference=ref,
                           tail_mean=tail_mean,
                           rel_diff_tail={k: abs(v - tail_mean[ref]) / tail_mean[ref] for k, v in tail_mean.items()},
                           max_rel_diff_smoothed={k: max(abs(a - b) / b for a, b in zip(v, smoothed[ref]))
                                                  for k, v in smoothed.items()},
                           tokens_per_s={k: tokens_per_step / median(v) for k, v in step_s.items()},
                           curves={k: [round(v, 4) for v in curve] for k, curve in losses.items()})
    if depth != args.depths[-1]:
        for run in group:  # keep the timings, free the models
            run.model = run.forward = run.optimizers = None
wall_s = time.perf_counter() - t_start

# -------------------------------------------------------------------------------------------------
# profile: where the time of one row of the last depth goes
profile_table = None
if args.profile:
    from torch.profiler import ProfilerActivity, profile

    last = [run for run in runs if run.depth == args.depths[-1]]
    if args.profile == "fastest":
        target = min([run for run in last if run.ns == "default"] or last,
                     key=lambda r: median([a + b for a, b in zip(r.fwdbwd_s, r.opt_s)]))
    else:
        target = next(run for run in last if run.label == args.profile)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            target.step(x, y)
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total for e in events if e.key in ("## forward+backward", "## optimizer")}
    total = sum(phases.values())
    sort_by = "self_cuda_time_total" if device_type == "cuda" else "self_cpu_time_total"
    profile_table = (f"profile: d{target.depth} {target.label}, 2 steps; "
                     + ", ".join(f"{k[3:]} {v / total:.0%}" for k, v in phases.items()) + "\n"
                     + events.table(sort_by=sort_by, row_limit=15, max_name_column_width=48))

# -------------------------------------------------------------------------------------------------
# report
peak = {d: median(v) for d, v in peak_samples.items()}
rows = []
for run in runs:
    step_s = median([a + b for a, b in zip(run.fwdbwd_s, run.opt_s)])
    fwdbwd_s, opt_s = median(run.fwdbwd_s), median(run.opt_s)
    achieved = run.flops_per_token * tokens_per_step / step_s
    rows.append(dict(depth=run.depth, dtype=run.dtype, mode=run.mode, label=run.label,
                     muon_ns_dtype=resolve_ns(run.dtype, run.ns), muon_ns_default=run.ns == "default",
                     flops_per_token=run.flops_per_token, step_s=step_s, fwdbwd_s=fwdbwd_s, optimizer_s=opt_s,
                     tokens_per_s=tokens_per_step / step_s, flops_per_s=achieved,
                     mfu=achieved / (peak[run.dtype] * world),
                     mfu_fwdbwd=run.flops_per_token * tokens_per_step / fwdbwd_s / (peak[run.dtype] * world)))
for depth in args.depths:
    group = [row for row in rows if row["depth"] == depth]
    ref = next((row for row in group if row["label"] == "float32 compile"), group[0])
    for row in group:
        row["vs_reference"] = row["tokens_per_s"] / ref["tokens_per_s"]
        row["reference"] = ref["label"]

print0(f"{device_type} ×{world} | {tokens_per_step:,} tokens/step = {args.device_batch_size} × {args.seq_len} × "
       f"{world} ranks | vocab {args.vocab_size:,} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
       f"{wall_s / 60:.1f} min")
print0("matmul peak (" + f"{matmul_n}³, median of {args.steps * len(args.depths)} interleaved samples): "
       + ", ".join(f"{d} {v / 1e12:.3f} TFLOP/s" for d, v in peak.items()))
for depth in args.depths:
    group = [row for row in rows if row["depth"] == depth]
    print0(f"\nd{depth}: {group[0]['flops_per_token'] / 1e6:.1f} MFLOP/token; ratios vs {group[0]['reference']}")
    print0(f"{'config':<34}{'step s':>8}{'fwd+bwd':>9}{'optim':>8}{'tokens/s':>10}{'TFLOP/s':>9}"
           f"{'MFU':>7}{'MFU f+b':>9}{'vs ref':>8}")
    for row in group:
        print0(f"{row['label']:<34}{row['step_s']:>8.3f}{row['fwdbwd_s']:>9.3f}{row['optimizer_s']:>8.3f}"
               f"{row['tokens_per_s']:>10,.0f}{row['flops_per_s'] / 1e12:>9.3f}{row['mfu']:>7.1%}"
               f"{row['mfu_fwdbwd']:>9.1%}{row['vs_reference']:>8.2f}")
if loss_result:
    lr_ = loss_result
    print0(f"\nloss curves: d{lr_['depth']} {lr_['mode']}, {lr_['steps']} steps on stdlib text, same init and batches; "
           f"vs {lr_['reference']}")
    marks = sorted({0, lr_["steps"] // 4, lr_["steps"] // 2, 3 * lr_["steps"] // 4, lr_["steps"] - 1})
    print0(f"{'config':<34}" + "".join(f"{'step ' + str(m):>10}" for m in marks)
           + f"{'last ' + str(lr_['tail']):>10}{'rel diff':>10}{'max smooth':>11}{'tokens/s':>10}")
    for label, curve in lr_["curves"].items():
        print0(f"{label:<34}" + "".join(f"{curve[m]:>10.4f}" for m in marks)
               + f"{lr_['tail_mean'][label]:>10.4f}{lr_['rel_diff_tail'][label]:>10.2%}"
               f"{lr_['max_rel_diff_smoothed'][label]:>11.2%}{lr_['tokens_per_s'][label]:>10,.0f}")

# the issue's goals, judged on the fastest bf16 row of each depth
goals = {}
for depth in args.depths:
    by_label = {row["label"]: row for row in rows if row["depth"] == depth}
    bf16 = [row for row in by_label.values() if row["dtype"] == "bfloat16"]
    if not bf16 or "float32 compile" not in by_label:
        continue
    best = max(bf16, key=lambda r: r["tokens_per_s"])
    g = dict(fastest_bf16=best["label"], speedup=best["vs_reference"], mfu=best["mfu"])
    base = max((r for r in bf16 if r["muon_ns_default"]), key=lambda r: r["tokens_per_s"], default=None)
    if base is not None and base is not best:  # the Newton–Schulz dtype base_train would use
        g.update(fastest_bf16_base_train=base["label"], speedup_base_train=base["vs_reference"])
    literal = by_label.get("float32 compile NS bfloat16")  # reference nanochat's Muon: bf16 Newton–Schulz everywhere
    if literal is not None:
        g["speedup_vs_" + literal["label"].replace(" ", "_")] = best["tokens_per_s"] / literal["tokens_per_s"]
    goals[f"d{depth}"] = g
if goals:
    print0(f"\ngoals: bf16 tokens/s >= {SPEED_GOAL:.0f}x float32 compile, "
           f"MFU >= {MFU_GOAL:.0%} of the row dtype's peak")
    for name, g in goals.items():
        line = (f"{name}: {g['fastest_bf16']} {g['speedup']:.2f}x (speed goal "
                + ("met" if g["speedup"] >= SPEED_GOAL else "MISSED") + f"), MFU {g['mfu']:.1%} (MFU goal "
                + ("met" if g["mfu"] >= MFU_GOAL else "MISSED") + ")")
        if "speedup_base_train" in g:
            line += f"; as base_train runs it: {g['fastest_bf16_base_train']} {g['speedup_base_train']:.2f}x"
        if "speedup_vs_float32_compile_NS_bfloat16" in g:
            line += f"; vs float32 compile NS bfloat16: {g['speedup_vs_float32_compile_NS_bfloat16']:.2f}x"
        print0(line)
if loss_result:
    worst = max(v for k, v in loss_result["rel_diff_tail"].items() if k.startswith("bfloat16"))
    goals["loss_rel_diff_tail_worst_bf16"] = worst
    print0(f"loss: worst bf16 row within {worst:.2%} of float32 over the last {loss_result['tail']} steps "
           f"(goal <= {LOSS_GOAL:.0%}): " + ("met" if worst <= LOSS_GOAL else "MISSED"))
if profile_table:
    print0("\n" + profile_table)

print0(json.dumps(dict(bench="train", device=device_type, world_size=world, seq_len=args.seq_len,
                       device_batch_size=args.device_batch_size, vocab_size=args.vocab_size,
                       tokens_per_step=tokens_per_step, torch=torch.__version__, threads=torch.get_num_threads(),
                       matmul_peak_flops=peak, wall_s=wall_s, results=rows, loss=loss_result, goals=goals)))
if distributed:
    dist.barrier()
    dist.destroy_process_group()
