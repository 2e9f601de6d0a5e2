"""Train and val bits-per-byte of a base checkpoint, plus samples from fixed prompts.

    python -m scripts.base_loss                                  # latest base model
    python -m scripts.base_loss --model-tag=d4 --step=200 --eval-tokens=100000
    torchrun --standalone --nproc_per_node=8 -m scripts.base_loss
"""


from nanochat.checkpoint_manager import CheckpointError, load_model
from nanochat.common import ScriptParser, compute_cleanup, compute_init, print0, setup_logging
from nanochat.dataloader import tokenizing_distributed_data_loader
from nanochat.loss_eval import evaluate_bpb
from nanochat.report import log_section
from nanochat.tokenizer import get_token_bytes
from nanochat.training import SAMPLE_PROMPTS, precision


# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "Bits per byte and samples of a base checkpoint.")
parser.add_argument("-g", "--model-tag", default=None, help="checkpoint tag (default: the deepest model)")
parser.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: the last)")
parser.add_argument("--device-batch-size", type=int, default=32, help="sequences per forward pass")
parser.add_argument("--eval-tokens", type=int, default=20 * 524288, help="tokens per split")
parser.add_argument("--device-type", default="auto", choices=["auto", "cuda", "cpu", "mps"], help="device")
parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="autocast dtype")
args = parser.parse_args()
if args.device_batch_size <= 0 or args.eval_tokens <= 0:
    parser.error("--device-batch-size and --eval-tokens must be positive")
setup_logging()

# -------------------------------------------------------------------------------------------------
ddp, rank, local_rank, world_size, device = compute_init(args.device_type)
try:
    model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=args.model_tag, step=args.step)
except CheckpointError as e:
    raise SystemExit(f"base_loss: {e}") from None
dtype_name, autocast = precision(device.type, args.dtype)
token_bytes = get_token_bytes(device)
T = model.config.sequence_len
steps = max(1, args.eval_tokens // (args.device_batch_size * T * world_size))

results = {"step": meta["step"]}
for split in ("train", "val"):
    loader = tokenizing_distributed_data_loader(tokenizer, args.device_batch_size, T, split, device=device)
    results[f"{split}_bpb"] = evaluate_bpb(model, loader, steps, token_bytes, autocast)
    print0(f"{split} bpb: {results[f'{split}_bpb']:.4f}")

samples = []
if rank == 0:
    for prompt in SAMPLE_PROMPTS:
        ids = tokenizer.encode(prompt, prepend="<|bos|>")
        with autocast:
            out = list(model.generate(ids, max_tokens=16, temperature=0))
        samples.append(tokenizer.decode(ids[1:] + out))
        print0(f"sample: {samples[-1]!r}")

log_section("Base model loss", [results, "samples:\n" + "\n".join(f"- {s!r}" for s in samples)])
compute_cleanup()
