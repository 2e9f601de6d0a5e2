"""Export a checkpoint to the Hugging Face format (stock transformers >= 5 and engines built on it
load it, no custom code), or import such a folder back into nanochat's checkpoints.

    python -m scripts.export_hf -i sft -o nanochat-d20              # the latest SFT model -> ./nanochat-d20
    python -m scripts.export_hf -i base -g d20 -s 21400 -o out --dtype bfloat16   # half the size
    python -m scripts.export_hf --import nanochat-d32 -i sft -g d32   # a folder -> <base>/sft_checkpoints/d32

The export folder holds config.json, model.safetensors, generation_config.json, tokenizer.json,
tokenizer_config.json (with the chat template) and a model card README.md carrying the summary
table of <base>/report/report.md when there is one. The formats and the one sign flip between the
two rotary conventions are described in nanochat/hf_format.py.

Import writes the weights as step -s (default 0) of the stage -i under model tag -g (default
d<layers>), and the folder's tokenizer into <base>/tokenizer; a base dir that already holds a
different tokenizer is refused (set NANOCHAT_BASE_DIR to a fresh folder). Afterwards chat_cli,
chat_web and chat_eval load it like any trained model.
"""

import sys
from pathlib import Path

import torch

from nanochat.checkpoint_manager import (CheckpointError, committed_steps, find_model_tag, load_model,
                                         save_checkpoint, stage_dir)
from nanochat.common import ScriptParser, get_base_dir, print0, setup_logging
from nanochat.gpt import GPT
from nanochat.hf_format import DTYPES, HFFormatError, load_hf, save_hf
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError, get_tokenizer_dir

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "Export a checkpoint to the Hugging Face format, or import one.")
parser.add_argument("-i", "--source", default="sft", choices=["base", "mid", "sft", "rl"],
                    help="stage to export from (with --import: the stage to import into)")
parser.add_argument("-g", "--model-tag", default=None,
                    help="model tag, e.g. d20 (when omitted: the deepest on export, d<layers> on import)")
parser.add_argument("-s", "--step", type=int, default=None,
                    help="checkpoint step (when omitted: the last on export, 0 on import)")
parser.add_argument("-o", "--out", default=None,
                    help="export: the folder to write (replaced if it is an earlier export)")
parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                    help="export: weight dtype (float32 is exact; bfloat16 halves the size)")
parser.add_argument("--import", dest="import_dir", default=None, metavar="DIR",
                    help="import this Hugging Face folder instead of exporting")
args = parser.parse_args()
if (args.out is None) == (args.import_dir is None):
    parser.error("give either -o DIR (export) or --import DIR (import)")
if args.step is not None and args.step < 0:
    parser.error(f"--step must be >= 0, got {args.step}")
setup_logging("WARNING")


def model_card(meta: dict, config: dict, n_params: int, name: str) -> str:
    """README.md for the Hub: what the model is, how to load it, and the report card's numbers."""
    model_tag, stage, step = meta["model_tag"], meta["stage"], meta["step"]
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- nanochat", "---", "",
        f"# nanochat {model_tag} ({stage}, step {step})", "",
        f"A {n_params / 1e6:,.1f}M-parameter {'base' if stage == 'base' else 'chat'} model trained with nanochat: "
        f"{config['n_layer']} layers, width {config['n_embd']}, {config['n_head']} query heads and "
        f"{config['n_kv_head']} key/value heads, context {config['sequence_len']}, "
        f"vocabulary {config['vocab_size']:,}. "
        "Stock `transformers` (>= 5) loads it as `NanoChatForCausalLM`, no custom code; the tokenizer carries "
        "nanochat's chat template.", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'path = "{name}"  # this folder, or its repo id on the Hub',
        "tok = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        *(['ids = tok("The capital of France is", return_tensors="pt")'] if stage == "base" else [
            'ids = tok.apply_chat_template([{"role": "user", "content": "Why is the sky blue?"}],',
            '                              add_generation_prompt=True, return_tensors="pt", return_dict=True)']),
        "out = model.generate(**ids, max_new_tokens=128, do_sample=False)",
        'print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```", "",
    ]
    if stage != "base":
        lines += ["The model was taught to call a calculator between `<|python_start|>` and `<|python_end|>`; "
                  "plain `generate` does not run it.", ""]
    report = get_base_dir() / "report" / "report.md"
    summary = _summary_section(report.read_text(encoding="utf-8")) if report.is_file() else None
    if summary:
        lines += ["## Evaluation (from nanochat's report card)", "", *summary, ""]
    else:
        lines += ["No report card was found (`python -m nanochat.report generate` writes one).", ""]
    return "\n".join(lines)


def _summary_section(report: str) -> list[str] | None:
    """The table under '## Summary' in report.md (without the heading), or None."""
    lines = report.splitlines()
    if "## Summary" not in lines:
        return None
    body = []
    for line in lines[lines.index("## Summary") + 1:]:
        if line.startswith("## "):
            break
        body.append(line)
    table = [line for line in body if line.startswith("|")]
    return table or None


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    n = a.vocab_size - len(SPECIAL_TOKENS)
    return (a.vocab_size == b.vocab_size and a.get_pattern() == b.get_pattern()
            and all(a.id_to_token(i) == b.id_to_token(i) for i in range(n)))


# -------------------------------------------------------------------------------------------------
if args.out is not None:
    try:
        model, tokenizer, meta = load_model(args.source, "cpu", phase="eval", model_tag=args.model_tag, step=args.step)
    except (CheckpointError, TokenizerError) as e:
        sys.exit(f"export_hf: {e} (pick another with -i/-g/-s)")
    model_tag = args.model_tag or find_model_tag(stage_dir(args.source))
    card = model_card({"model_tag": model_tag, "stage": args.source, "step": meta["step"]},
                      meta["model_config"], model.num_scaling_params(), Path(args.out).name)
    try:
        out = save_hf(args.out, model.state_dict(), model.config, tokenizer, dtype=args.dtype, readme=card)
    except (HFFormatError, OSError) as e:
        sys.exit(f"export_hf: {e}")
    print0(f"exported {args.source} {model_tag} step {meta['step']} ({args.dtype}) to {out}")
    print0(f"load it with AutoModelForCausalLM.from_pretrained({str(out)!r}); serve it with `vllm serve {out}`")

# -------------------------------------------------------------------------------------------------
else:
    try:
        state, config, tokenizer = load_hf(args.import_dir)
    except HFFormatError as e:
        sys.exit(f"export_hf: {e}")
    model_tag = args.model_tag or f"d{config.n_layer}"
    step = args.step or 0
    checkpoint_dir = stage_dir(args.source) / model_tag
    if step in committed_steps(checkpoint_dir):
        sys.exit(f"export_hf: {checkpoint_dir}/step_{step:06d} already exists; import under another -g or -s")
    tok_dir = get_tokenizer_dir()
    try:
        existing = Tokenizer.load(tok_dir) if (tok_dir / "tokenizer.json").is_file() else None
    except TokenizerError as e:
        sys.exit(f"export_hf: {e}")
    if existing is not None and not same_tokenizer(existing, tokenizer):
        sys.exit(f"export_hf: {tok_dir} holds a different tokenizer, which the other checkpoints of this base dir "
                 f"need; import into a fresh one: NANOCHAT_BASE_DIR=<new folder> python -m scripts.export_hf "
                 f"--import {args.import_dir}")
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_rotary()
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        sys.exit(f"export_hf: the weights in {args.import_dir} do not fit the model their config.json describes: {e}")
    if existing is None:
        tokenizer.save(tok_dir)
    meta = {"model_config": config.to_dict(), "args": {"model_tag": model_tag, "imported_from": str(args.import_dir)},
            "loop_state": {}}
    path = save_checkpoint(checkpoint_dir, step, model, None, meta)
    print0(f"imported {args.import_dir} as {path}; talk to it with `python -m scripts.chat_cli -i {args.source} "
           f"-g {model_tag}`")
