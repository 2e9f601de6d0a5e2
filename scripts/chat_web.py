"""Web chat: the browser UI and an OpenAI-compatible API over the inference engine.

    python -m scripts.chat_web                              # latest SFT model, http://127.0.0.1:8000/
    python -m scripts.chat_web -i base --device-type=cpu    # talk to a base checkpoint on CPU
    python -m scripts.chat_web --num-gpus=8 --host=0.0.0.0 --api-key=SECRET   # 8 replicas, exposed

    curl -N http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hi!"}], "stream": true}'

Any OpenAI client works: base_url=http://127.0.0.1:8000/v1 (api_key = --api-key, or anything).
Fields: messages (system first, then user/assistant alternating, ending with user), temperature
[0, 2], top_k [0, 200] (0 = off), max_tokens (or max_completion_tokens), seed, stop (up to 4
strings), stream, stream_options.include_usage, model (the id /v1/models lists, or left out;
another id gets 404), top_p [0, 1]. logprobs, tools,
response_format and the penalties are refused with a 400 naming the field. Tool calls appear in
the text as "[calculator: 2+3 = 5]". /v1/completions takes a `prompt` instead of messages and
continues it (what a base model does); the other fields are the same.

Without max_tokens, a reply always gets room: when the conversation leaves less than
min(--max-tokens, half the context), its oldest turns are left out (the system message and the
last user turn stay) and the X-Nanochat-Dropped-Messages header says how many.

Each request logs one line (method, path, status, prompt and completion tokens, time to first
token, total time); --log-level=debug adds the /health and /metrics polls.

One engine replica per GPU (one on CPU/MPS), each batching up to --slots requests at once on a
thread of its own (continuous batching: a request joins at the next decode step and leaves as soon
as it ends), behind a bounded queue: a request that finds every slot busy and the queue full, or
waits longer than --queue-timeout, gets 503 with Retry-After. On CUDA the decode step is compiled
and captured in CUDA graphs. POST bodies must be sent as application/json (415 otherwise). Bound to
loopback (the default), the server answers only requests whose Host is localhost, 127.0.0.1 or
[::1]; with --host=0.0.0.0 or a network address it answers any. The machinery lives in
nanochat/serving.py (the app), nanochat/worker_pool.py and nanochat/openai_api.py; this
script loads and runs it.
"""

import os
import socket

import torch
import uvicorn

from nanochat.checkpoint_manager import (CheckpointError, find_model_tag, last_step, load_model, read_meta, stage_dir,
                                         step_dir)
from nanochat.common import ScriptParser, autodetect_device_type, print0, setup_logging
from nanochat.openai_api import TEMPERATURE_MAX, TOP_K_MAX, SamplingDefaults
from nanochat.serving import LOOPBACK_HOSTS, ServerSettings, create_app, host_name
from nanochat.training import precision

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "Serve the chat UI and an OpenAI-compatible API.")
parser.add_argument("-i", "--source", default="sft", choices=["base", "mid", "sft", "rl"], help="which stage's model")
parser.add_argument("-g", "--model-tag", default=None, help="model tag, e.g. d20 (default: the deepest)")
parser.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: the last)")
parser.add_argument("--device-type", default="auto", choices=["auto", "cuda", "cpu", "mps"], help="device")
parser.add_argument("--num-gpus", type=int, default=1, help="engine replicas, one per GPU (CPU/MPS: 1)")
parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)")
parser.add_argument("--port", type=int, default=8000, help="port to listen on")
parser.add_argument("--api-key", default=os.environ.get("NANOCHAT_API_KEY"),
                    help="require 'Authorization: Bearer KEY' on /v1/* (default: $NANOCHAT_API_KEY, else none)")
parser.add_argument("--cors-origin", action="append", default=[],
                    help="an origin allowed to call the API from a browser (repeatable; default: same origin only)")
parser.add_argument("-t", "--temperature", type=float, default=0.6, help="default sampling temperature")
parser.add_argument("-k", "--top-k", type=int, default=50, help="default top-k (0 = off)")
parser.add_argument("--max-tokens", type=int, default=512, help="default reply length limit in tokens")
parser.add_argument("--slots", type=int, default=16, help="requests one replica generates at once (KV cache rows)")
parser.add_argument("--queue-size", type=int, default=16, help="requests that may wait for a free slot")
parser.add_argument("--queue-timeout", type=float, default=30.0, help="seconds a request may wait before a 503")
parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="server log level (info: one line per request)")
args = parser.parse_args()
if not 0 <= args.temperature <= TEMPERATURE_MAX:
    parser.error(f"--temperature must be in [0, {TEMPERATURE_MAX:g}], got {args.temperature}")
if not 0 <= args.top_k <= TOP_K_MAX:
    parser.error(f"--top-k must be in [0, {TOP_K_MAX}], got {args.top_k}")
if args.max_tokens < 1 or args.slots < 1 or args.queue_size < 0 or args.queue_timeout <= 0:
    parser.error("--max-tokens and --slots must be >= 1, --queue-size >= 0 and --queue-timeout > 0")
device_type = autodetect_device_type() if args.device_type == "auto" else args.device_type
if device_type == "cuda":
    if not torch.cuda.is_available():
        parser.error("--device-type=cuda but no CUDA device is available; use --device-type=cpu")
    if not 1 <= args.num_gpus <= torch.cuda.device_count():
        parser.error(f"--num-gpus must be between 1 and {torch.cuda.device_count()} (the GPUs on this machine)")
    devices = [torch.device("cuda", i) for i in range(args.num_gpus)]
else:
    if args.num_gpus != 1:
        parser.error(f"--num-gpus={args.num_gpus} needs CUDA; on {device_type} there is one replica")
    devices = [torch.device(device_type)]
setup_logging(args.log_level.upper())

# Bind the port first: one in use is one sentence before anything loads, and "serving at" below is
# printed only once the socket listens.
sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    sock.bind((args.host, args.port))
    sock.listen(2048)
except OSError as e:
    raise SystemExit(f"chat_web: cannot listen on {args.host}:{args.port} ({e.strerror or e}): "
                     "stop whatever uses that port or pick another with --port") from None

# -------------------------------------------------------------------------------------------------
# Resolve the checkpoint now, so a missing one is reported before the server starts; the weights
# load after start-up, while /health answers 503.
try:
    model_tag = args.model_tag or find_model_tag(stage_dir(args.source))
    step = last_step(stage_dir(args.source) / model_tag) if args.step is None else args.step
    read_meta(stage_dir(args.source) / model_tag, step)
    created = int((step_dir(stage_dir(args.source) / model_tag, step) / "meta.json").stat().st_mtime)
except CheckpointError as e:
    raise SystemExit(f"chat_web: {e} (pick another with -i/-g/-s)") from None
model_name = f"nanochat-{args.source}-{model_tag}-step{step}"


def load_replicas():
    from nanochat.engine import Engine

    engines = []
    for device in devices:
        model, tokenizer, _ = load_model(args.source, device, phase="eval", model_tag=model_tag, step=step)
        # bf16 on SM80+ GPUs, float32 elsewhere (on CPU, "auto" would time matmuls first); compiled with CUDA
        # graphs on CUDA (on CPU compiling costs a minute per batch/length bucket)
        dtype_name, _ = precision(device.type, "auto" if device.type == "cuda" else "float32")
        engine = Engine(model, tokenizer, dtype=getattr(torch, dtype_name), compile=device.type == "cuda")
        if device.type == "cuda":  # compile and capture every batch size now, while /health says "loading"
            engine.reserve(args.slots, model.config.sequence_len)
            engine.warmup()
        engines.append(engine)
    print0(f"loaded {model_name} on {', '.join(map(str, devices))}")
    return engines, tokenizer, model.config.sequence_len


# On loopback the server answers only to loopback names (a DNS-rebinding page cannot reach it);
# bound to a network address or a name, it answers to whatever name the client used.
loopback = args.host in LOOPBACK_HOSTS or args.host.startswith("127.")
allowed_hosts = LOOPBACK_HOSTS | {host_name(args.host)} if loopback else None
settings = ServerSettings(
    defaults=SamplingDefaults(args.temperature, args.top_k, args.max_tokens),
    slots=args.slots, queue_size=args.queue_size, wait_timeout=args.queue_timeout, api_key=args.api_key or None,
    cors_origins=args.cors_origin, model_name=model_name, model_created=created, allowed_hosts=allowed_hosts,
)
app = create_app(settings, load_replicas)
print0(f"chat_web: {model_name} on {len(devices)} {device_type} replica(s), {args.slots} slots each, "
       f"queue {args.queue_size}, API key {'required' if settings.api_key else 'off'}: "
       f"serving at http://{args.host}:{args.port}/")

# -------------------------------------------------------------------------------------------------
server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
server.run(sockets=[sock])
