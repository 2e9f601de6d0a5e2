"""Chat with a trained model in the terminal.

    python -m scripts.chat_cli                          # latest SFT model, interactive
    python -m scripts.chat_cli -i mid -g d20 -s 800     # a given stage / model tag / step
    python -m scripts.chat_cli -p "Why is the sky blue?"  # one reply, then exit
    python -m scripts.chat_cli -i base -p "The capital of France is"   # a base model continues text

Interactive commands (never sent to the model): /help, /clear starts a new conversation, /exit
leaves (so do 'exit', 'quit' and Ctrl-D); Ctrl-C stops a reply. In a terminal the line is edited
with readline (arrows, Ctrl-A/E, Ctrl-R) and the history is kept in $NANOCHAT_BASE_DIR/chat_history.
Replies stream as they are sampled and never split a multi-byte character; calculator calls show
as [calculator: 2+3 = 5]. A base model was never taught the chat template, so with -i base every
line is a text prompt that the model continues (no conversation history).
"""

import contextlib
import re
import sys

import torch

from nanochat.checkpoint_manager import CheckpointError, load_model
from nanochat.common import ScriptParser, autodetect_device_type, get_base_dir, setup_logging
from nanochat.engine import Engine, StreamDecoder, ToolCallReader
from nanochat.tokenizer import TokenizerError
from nanochat.training import precision

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "Chat with a model in the terminal.")
parser.add_argument("-i", "--source", default="sft", choices=["base", "mid", "sft", "rl"], help="which stage's model")
parser.add_argument("-g", "--model-tag", default=None, help="model tag, e.g. d20 (default: the deepest)")
parser.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: the last)")
parser.add_argument("-p", "--prompt", default=None, help="one-shot: print the reply to this prompt and exit")
parser.add_argument("-t", "--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy)")
parser.add_argument("-k", "--top-k", type=int, default=50, help="sample among the k likeliest tokens (0 = off)")
parser.add_argument("--max-tokens", type=int, default=512, help="reply length limit in tokens")
parser.add_argument("--seed", type=int, default=42, help="sampling seed (turn n uses seed + n)")
parser.add_argument("--device-type", default="auto", choices=["auto", "cuda", "cpu", "mps"], help="device")
args = parser.parse_args()
if args.prompt is not None and not args.prompt.strip():
    parser.error("-p/--prompt is empty: give the text to answer, or leave -p out to chat")
if args.temperature < 0:
    parser.error(f"--temperature must be >= 0, got {args.temperature}")
if args.top_k < 0:
    parser.error(f"--top-k must be >= 0, got {args.top_k}")
if args.max_tokens < 1:
    parser.error(f"--max-tokens must be >= 1, got {args.max_tokens}")
device_type = autodetect_device_type() if args.device_type == "auto" else args.device_type
if device_type == "cuda" and not torch.cuda.is_available():
    parser.error("--device-type=cuda but no CUDA device is available; use --device-type=cpu")
setup_logging("WARNING")
sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets '?', not a crash

# -------------------------------------------------------------------------------------------------
try:
    model, tokenizer, meta = load_model(args.source, torch.device(device_type), phase="eval",
                                        model_tag=args.model_tag, step=args.step)
except CheckpointError as e:
    raise SystemExit(f"chat_cli: {e} (pick another with -i/-g/-s)") from None
except TokenizerError as e:
    raise SystemExit(f"chat_cli: {e}") from None
# bf16 matmuls on GPUs that have them (SM80+); CPU ("auto" would time its matmuls first) and older GPUs float32
dtype_name, _ = precision(device_type, "auto" if device_type == "cuda" else "float32")
engine = Engine(model, tokenizer, dtype=getattr(torch, dtype_name))
context = model.config.sequence_len
chat = args.source != "base"


def reply(prompt_ids: list[int], seed: int) -> list[dict] | None:
    """Stream one reply to stdout; return it as assistant content parts (text / python /
    python_output), or None when the prompt leaves no room in the model's context."""
    max_tokens = min(args.max_tokens, context - len(prompt_ids))
    if max_tokens <= 0:
        print(f"[the conversation ({len(prompt_ids)} tokens) fills the model's context of {context}: "
              "type /clear to start a new one]", flush=True)
        return None
    parts: list[dict] = []
    decoder = StreamDecoder(tokenizer)
    reader = ToolCallReader(tokenizer)  # tells text from <|python_start|> expr ... <|output_end|>
    text: list[str] = []  # the current text part
    expr = ""

    def end_text() -> None:
        text.append(decoder.flush())
        print(text[-1], end="", flush=True)
        if "".join(text):
            parts.append({"type": "text", "text": "".join(text)})
        text.clear()

    gen = engine.generate(prompt_ids, num_samples=1, max_tokens=max_tokens, temperature=args.temperature,
                          top_k=args.top_k, seed=seed)
    try:
        for column, _ in gen:
            token = column[0]
            kind = reader.read(token)
            if kind == "end":
                break
            if kind == "call_start":
                end_text()
            elif kind == "call_end":
                expr = tokenizer.decode(reader.expr_ids)
                parts.append({"type": "python", "text": expr})
            elif kind == "output_end":
                result = tokenizer.decode(reader.result_ids)
                parts.append({"type": "python_output", "text": result})
                print(f"[calculator: {expr} = {result}]", end="", flush=True)
            elif kind == "text":  # stray specials are not text
                piece = decoder.feed(token)
                text.append(piece)
                print(piece, end="", flush=True)
    except KeyboardInterrupt:
        print(" [stopped]", end="")
    finally:
        gen.close()
    if reader.call is not None:  # cut off inside a tool call
        print(f"[calculator: {tokenizer.decode(reader.call)} ...]", end="")
    elif reader.output is not None or (parts and parts[-1]["type"] == "python"):  # ... or inside its result
        print(f"[calculator: {expr} = {tokenizer.decode(reader.output or [])} ...]", end="")
    end_text()
    print(flush=True)
    return parts


# -------------------------------------------------------------------------------------------------
if args.prompt is not None:
    if chat:
        ids = tokenizer.render_for_completion({"messages": [{"role": "user", "content": args.prompt}]})
    else:
        ids = tokenizer.encode(args.prompt, prepend="<|bos|>")
    reply(ids, args.seed)
    raise SystemExit(0)

HELP = """/help   this list
/clear  start a new conversation
/exit   leave (also: exit, quit, Ctrl-D)
Ctrl-C stops a reply; arrows and Ctrl-R edit and recall lines."""
interactive = sys.stdin.isatty()
history_file = get_base_dir() / "chat_history"
if interactive:
    import readline  # input() gets line editing and history once this module is loaded

    readline.set_history_length(1000)
    with contextlib.suppress(OSError):
        readline.read_history_file(history_file)
print(f"nanochat: {args.source} model, step {meta['step']}, on {device_type}. /help lists the commands.")
if not chat:
    print("(a base model: each line is a text prompt that the model continues)")
messages: list[dict] = []
turn = 0
while True:
    try:
        line = input("\nUser: ")
    except (EOFError, KeyboardInterrupt):
        print()
        break
    if not interactive:  # piped input: show it, so the transcript reads like a conversation
        print(line)
    command = line.strip().lower()
    if command in ("/exit", "/quit", "exit", "quit"):
        break
    if command in ("/clear", "clear"):
        messages = []
        print("(new conversation)")
        continue
    if command == "/help":
        print(HELP)
        continue
    if re.fullmatch(r"/[a-z]+", command):
        print(f"unknown command {command}: /help lists the commands")
        continue
    if not line.strip():
        continue
    if chat:
        messages.append({"role": "user", "content": line})
        ids = tokenizer.render_for_completion({"messages": messages})
    else:
        ids = tokenizer.encode(line, prepend="<|bos|>")
    print("Assistant: ", end="", flush=True)
    parts = reply(ids, args.seed + turn)
    turn += 1
    if chat and parts is None:
        messages.pop()  # it did not fit: forget it, so /clear is not the only way on
    elif chat:
        messages.append({"role": "assistant", "content": parts})
if interactive:
    with contextlib.suppress(OSError):
        readline.write_history_file(history_file)
