"""Decode throughput: our Engine before and after the static cache, and karpathy/nanochat's Engine.

    python -m dev.bench_decode --depth 6 --vocab-size 65536 --dtype bfloat16 --batch-sizes 1 8 \\
        --max-new-tokens 128 --nanochat-path PATH/TO/nanochat             # CPU, random weights
    python -m dev.bench_decode --source base --model-tag d20 --batch-sizes 1 8 --max-new-tokens 256 --device cuda

Variants, timed round by round in the same process (so a loaded machine slows all of them alike):
- before:   the engine as it was: GPT.forward with the growing gpt.KVCache, batch-1 prefill copied
            into the rows, gpt.sample_next_token, one Python loop step per token;
- after:    nanochat.engine.Engine (static cache, fixed-shape decode step, device sampling), eager;
- compiled: the same Engine with compile=True (CUDA: CUDA graphs); compile time is left out by a
            warm-up run of every batch size first (--no-compile skips it: minutes on a CPU);
- nanochat: karpathy/nanochat's Engine imported from --nanochat-path at run time (skipped without it).

Weights: a --source checkpoint (nanochat gets the same weights, its rotary sign mapped: it rotates
by -theta, so the second half of each head's rows of c_q and c_k is negated), or a random --depth
model (same random weights in both; the head's special-token rows are zeroed so no row stops early).
Every engine samples with top-k 50 at temperature 1 from a 16-token prompt; tok/s = tokens
generated / seconds. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig, sample_next_token

parser = argparse.ArgumentParser(description="Decode tok/s: before/after the static-cache engine, and nanochat's.")
parser.add_argument("--source", default=None, choices=["base", "mid", "sft", "rl"], help="a checkpoint stage")
parser.add_argument("--model-tag", default=None, help="model tag with --source (default: the deepest)")
parser.add_argument("--depth", type=int, default=6, help="depth of the random model (without --source)")
parser.add_argument("--vocab-size", type=int, default=65536, help="vocabulary of the random model")
parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="rows decoded together")
parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per row")
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device")
parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype")
parser.add_argument("--rounds", type=int, default=3, help="timed rounds (the median is reported)")
parser.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
parser.add_argument("--nanochat-path", default=None, help="a karpathy/nanochat checkout to compare with")
parser.add_argument("--top-k", type=int, default=50, help="top-k of every engine")
args = parser.parse_args()
if args.device == "cuda" and not torch.cuda.is_available():
    parser.error("--device cuda but no CUDA device is available")
if min(args.batch_sizes) < 1 or args.max_new_tokens < 2 or args.rounds < 1:
    parser.error("--batch-sizes must be >= 1, --max-new-tokens >= 2, --rounds >= 1")

# -------------------------------------------------------------------------------------------------
from nanochat.training import precision  # noqa: E402

device = torch.device(args.device)
dtype_name, autocast = precision(device.type, args.dtype)
torch.manual_seed(0)
if args.source:
    from nanochat.checkpoint_manager import CheckpointError, load_model

    try:
        model, tokenizer, _ = load_model(args.source, device, phase="eval", model_tag=args.model_tag)
    except CheckpointError as e:
        raise SystemExit(f"bench_decode: {e}") from None
else:
    from nanochat.tokenizer import Tokenizer

    # a byte-level tokenizer padded out to the vocabulary: decoding speed does not depend on merges
    n_special = len(Tokenizer.from_ranks({bytes([i]): i for i in range(256)}).get_special_tokens())
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({i.to_bytes(3, "big"): i for i in range(256, args.vocab_size - n_special)})
    tokenizer = Tokenizer.from_ranks(ranks)
    with torch.device("meta"):
        model = GPT(GPTConfig.from_depth(args.depth, vocab_size=tokenizer.vocab_size))
    model.to_empty(device=device)
    model.init_weights()
    with torch.no_grad():  # the zero-initialised projections and head made random, so logits differ
        for block in model.transformer.h:
            for w in (block.attn.c_proj.weight, block.mlp.c_proj.weight):
                w.normal_(0, 0.02)
        model.lm_head.weight.normal_(0, 0.02)
        special = [tokenizer.encode_special(s) for s in tokenizer.get_special_tokens()]
        model.lm_head.weight[special] = 0.0  # logit 0: never among the top 50 of 65k, so no row stops
model.eval()
cfg = model.config
prompt = list(range(100, 116))

# -------------------------------------------------------------------------------------------------
# The variants: each a function (batch) -> tokens generated


@torch.inference_mode()
def before(batch: int) -> int:
    """The engine before the static cache, reduced to its decode loop (no tool state)."""
    kv = model.new_kv_cache(1, max_seq_len=len(prompt) + args.max_new_tokens)
    rng = torch.Generator(device=device).manual_seed(0)
    with autocast:
        logits = model(torch.tensor([prompt], device=device), kv_cache=kv)[:, -1, :]
        kv.expand_batch(batch)
        logits = logits.expand(batch, -1)
        for step in range(args.max_new_tokens):
            column = sample_next_token(logits, rng, 1.0, args.top_k)[:, 0].tolist()
            if step == args.max_new_tokens - 1:
                break
            logits = model(torch.tensor(column, device=device).view(batch, 1), kv_cache=kv)[:, -1, :]
    return batch * args.max_new_tokens


def engine_variant(engine) -> callable:
    def run(batch: int) -> int:
        n = 0
        with autocast:
            for _, masks in engine.generate(prompt, num_samples=batch, max_tokens=args.max_new_tokens,
                                                 temperature=1.0, top_k=args.top_k):
                n += sum(masks)
        return n
    return run


engines = {"after": Engine(model, tokenizer)}
if not args.no_compile:
    engines["compiled"] = Engine(model, tokenizer, compile=True)
with autocast:  # the largest cache first: a cache that grows later would recompile every graph
    for engine in engines.values():
        engine.reserve(max(args.batch_sizes), len(prompt) + args.max_new_tokens)
variants = {"before": before, **{name: engine_variant(engine) for name, engine in engines.items()}}


def load_nanochat(path: str):
    """karpathy/nanochat's GPT and Engine, imported from `path` beside our own `nanochat` package."""
    ours = {name: mod for name, mod in sys.modules.items() if name == "nanochat" or name.startswith("nanochat.")}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        import nanochat.engine as their_engine
        import nanochat.gpt as their_gpt
    finally:
        sys.path.pop(0)
        for name in [n for n in sys.modules if n == "nanochat" or n.startswith("nanochat.")]:
            del sys.modules[name]
        sys.modules.update(ours)
    return their_gpt, their_engine


if args.nanochat_path:
    their_gpt, their_engine = load_nanochat(args.nanochat_path)
    with torch.device("meta"):
        theirs = their_gpt.GPT(their_gpt.GPTConfig(sequence_len=cfg.sequence_len, vocab_size=cfg.vocab_size,
                                                   n_layer=cfg.n_layer, n_head=cfg.n_head, n_kv_head=cfg.n_kv_head,
                                                   n_embd=cfg.n_embd))
    theirs.to_empty(device=device)
    theirs.init_weights()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    D = cfg.head_dim
    for key, value in state.items():
        if key.endswith(("attn.c_q.weight", "attn.c_k.weight")):  # -theta rotary: negate each head's 2nd half
            value.view(-1, D, value.size(-1))[:, D // 2:] *= -1
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k and "cos" not in k and "sin" not in k]:
        raise SystemExit(f"bench_decode: nanochat's model does not take our weights ({missing}, {unexpected})")
    theirs.eval()
    variants["nanochat"] = engine_variant(their_engine.Engine(theirs, tokenizer))

# -------------------------------------------------------------------------------------------------
# Warm up (compiles), then interleaved rounds

print(f"model d{cfg.n_layer} ({cfg.n_embd} wide, vocab {cfg.vocab_size}), {device}, {dtype_name}, "
      f"{args.max_new_tokens} new tokens, top-k {args.top_k}, {torch.get_num_threads()} threads")
for batch in args.batch_sizes:
    for name, run in variants.items():
        t0 = time.perf_counter()
        run(batch)
        if name == "compiled":
            print(f"  warm-up {name} batch {batch}: {time.perf_counter() - t0:.1f}s")

times = {(name, b): [] for name in variants for b in args.batch_sizes}
tokens = {}
for _ in range(args.rounds):
    for batch in args.batch_sizes:
        for name, run in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tokens[name, batch] = run(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name, batch].append(time.perf_counter() - t0)

results = {}
print(f"\n{'batch':>5} " + " ".join(f"{name + ' tok/s':>16}" for name in variants) +
      ("   after/nanochat   compiled/nanochat" if "nanochat" in variants else ""))
for batch in args.batch_sizes:
    rates = {name: tokens[name, batch] / statistics.median(times[name, batch]) for name in variants}
    results[batch] = rates
    line = f"{batch:>5} " + " ".join(f"{rates[name]:>16.1f}" for name in variants)
    if "nanochat" in variants:
        line += f"   {rates['after'] / rates['nanochat']:>14.2f}x"
        if "compiled" in rates:
            line += f"   {rates['compiled'] / rates['nanochat']:>16.2f}x"
    print(line)
print(json.dumps({"bench": "decode", "device": str(device), "dtype": dtype_name, "depth": cfg.n_layer,
                  "vocab_size": cfg.vocab_size, "max_new_tokens": args.max_new_tokens,
                  "tok_per_s": {str(b): {k: round(v, 1) for k, v in r.items()} for b, r in results.items()}}))
