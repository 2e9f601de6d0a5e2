"""Serving benchmark: aggregate throughput, time to first token and inter-token latency of
scripts.chat_web under 1, 4, 16 and 64 concurrent streaming clients on loopback, against the bare
Engine in the same run (the serving overhead).

    python -m dev.bench_serve                          # synthetic d4 model, CPU, a few minutes
    python -m dev.bench_serve --concurrency 1 16 --max-tokens 128
    python -m dev.bench_serve -i sft --device-type cuda --concurrency 1 8 64 --max-tokens 256

By default the model is synthetic: a tokenizer trained on this file and a randomly initialised
--depth model in a temporary base dir (its zero-initialised head makes every logit equal, so at
temperature 0 each reply is exactly --max-tokens long and runs are comparable). With -i it serves
that stage's checkpoint from $NANOCHAT_BASE_DIR instead (replies may then end early).

Each scenario sends max(--requests, 2 x clients) streaming requests from `concurrency` client
threads; the replica batches up to --slots of them at once (continuous batching). TTFT = send to
first content chunk; ITL = every gap between consecutive content chunks of a reply, pooled over
the scenario's replies (p50 and p99); latency = send to last byte. Throughput = completion tokens
of all replies / wall time.
The peer row is Engine.generate in this process with the same prompt and length (no HTTP, no
queue, no detokenizing). Every loop is bounded; the server is stopped at the end. Ends with one
JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from nanochat.common import stop_process

REPO = Path(__file__).resolve().parent.parent

parser = argparse.ArgumentParser(description="Benchmark the web chat server under concurrent load on loopback.")
parser.add_argument("-i", "--source", default=None, choices=["base", "mid", "sft", "rl"],
                    help="serve this stage's checkpoint from $NANOCHAT_BASE_DIR (default: a synthetic model)")
parser.add_argument("-g", "--model-tag", default=None, help="model tag with -i")
parser.add_argument("--depth", type=int, default=4, help="depth of the synthetic model")
parser.add_argument("--seq-len", type=int, default=512, help="context of the synthetic model")
parser.add_argument("--device-type", default="cpu", choices=["cpu", "cuda", "mps"], help="device of the server")
parser.add_argument("--num-gpus", type=int, default=1, help="server replicas (CUDA only)")
parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], help="client counts to compare")
parser.add_argument("--requests", type=int, default=8, help="requests per scenario (at least 2 per client)")
parser.add_argument("--slots", type=int, default=None, help="server slots per replica (default: the most clients)")
parser.add_argument("--max-tokens", type=int, default=64, help="tokens per reply")
parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per request")
args = parser.parse_args()

# -------------------------------------------------------------------------------------------------
# The model: synthetic unless -i


def make_synthetic(base: Path) -> None:
    """A tokenizer trained on this file and a random --depth model saved as base/d<depth>/step 0."""
    import torch

    from nanochat.checkpoint_manager import save_checkpoint, stage_dir
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import Tokenizer

    text = Path(__file__).read_text()
    Tokenizer.train_from_iterator([text] * 4, 1024).save(base / "tokenizer")
    config = GPTConfig.from_depth(args.depth, vocab_size=1024, sequence_len=args.seq_len, head_dim=64)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    save_checkpoint(stage_dir("base") / f"d{args.depth}", 0, model, None, {"model_config": config.to_dict()})


workdir = None
if args.source is None:
    workdir = tempfile.TemporaryDirectory(prefix="bench_serve_")
    os.environ["NANOCHAT_BASE_DIR"] = workdir.name
    make_synthetic(Path(workdir.name))
source = args.source or "base"
model_tag = args.model_tag or (None if args.source else f"d{args.depth}")

PROMPT = "Tell me about the benchmark of the server, and the tokens it makes."
PAYLOAD = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": args.max_tokens, "temperature": 0.0}

# -------------------------------------------------------------------------------------------------
# Peer: the bare engine in this process


class EnginePeer:
    """Engine.generate in this process, on a thread of its own like a server replica (on a busy
    CPU torch's intra-op threads behave very differently on the main thread). Measured in rounds
    between the scenarios, so that a neighbour's load hits the peer and the server alike."""

    def __init__(self):
        from nanochat.checkpoint_manager import load_model
        from nanochat.engine import Engine

        model, tokenizer, _ = load_model(source, args.device_type, model_tag=model_tag)
        self.engine = Engine(model, tokenizer)
        self.prompt = tokenizer.render_for_completion({"messages": PAYLOAD["messages"]})
        self.rates, self.ttfts = [], []
        self.round(1, keep=False)  # warm-up

    def round(self, n: int, keep: bool = True) -> None:
        thread = threading.Thread(target=self._run, args=(n, keep))
        thread.start()
        thread.join()

    def _run(self, n: int, keep: bool) -> None:
        import torch

        for _ in range(n):
            t0 = time.perf_counter()
            count, first = 0, None
            for _column, _masks in self.engine.generate(self.prompt, max_tokens=args.max_tokens, temperature=0.0):
                first = first or time.perf_counter()
                count += 1
            if args.device_type == "cuda":
                torch.cuda.synchronize()
            if keep:
                self.rates.append(count / (time.perf_counter() - t0))
                self.ttfts.append(first - t0)

    def summary(self) -> dict:
        return {"tok_s": statistics.median(self.rates), "ttft_ms": 1000 * statistics.median(self.ttfts)}


# -------------------------------------------------------------------------------------------------
# The server and its clients


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "scripts.chat_web", "-i", source, f"--device-type={args.device_type}",
           f"--num-gpus={args.num_gpus}", f"--port={port}", f"--queue-size={4 * max(args.concurrency)}",
           f"--queue-timeout={args.timeout}", f"--max-tokens={args.max_tokens}",
           f"--slots={args.slots or max(args.concurrency)}"]
    if model_tag:
        cmd += ["-g", model_tag]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    addr = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench_serve: the server exited with {proc.returncode}")
        try:
            if request(addr, "GET", "/health")[0] == 200:
                return proc, addr
        except OSError:
            pass
        time.sleep(0.2)
    stop_process(proc)
    raise SystemExit("bench_serve: the server did not become ready within 300 s")


def request(addr: str, method: str, path: str, body: dict | None = None):
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body else None,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def one_request(addr: str, stream: bool) -> dict:
    """Send one chat completion; time it chunk by chunk when streaming."""
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
    t0 = time.perf_counter()
    out = {"ok": False, "tokens": 0, "ttft": None, "gaps": []}
    try:
        payload = {**PAYLOAD, "stream": stream, "stream_options": {"include_usage": True}} if stream else PAYLOAD
        conn.request("POST", "/v1/chat/completions", body=json.dumps(payload),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            resp.read()
            out["status"] = resp.status
            return out
        if not stream:
            body = json.loads(resp.read())
            out.update(ok=True, tokens=body["usage"]["completion_tokens"])
        else:
            stamps = []
            for line in resp:  # http.client de-chunks; SSE lines arrive as they are sent
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    out["tokens"] = chunk["usage"]["completion_tokens"]
                elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    stamps.append(time.perf_counter())
            out["ok"] = True
            if stamps:
                out["ttft"] = stamps[0] - t0
                out["gaps"] = [b - a for a, b in zip(stamps, stamps[1:])]
    except (OSError, ValueError, KeyError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        out["latency"] = time.perf_counter() - t0
        conn.close()
    return out


def scenario(addr: str, concurrency: int, stream: bool) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    todo = list(range(max(args.requests, 2 * concurrency)))

    def client():
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            r = one_request(addr, stream)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]

    def pct(key: str, q: float) -> float | None:
        values = sorted(r[key] for r in ok if r[key] is not None)
        return 1000 * values[min(len(values) - 1, int(q * len(values)))] if values else None

    gaps = sorted(g for r in ok for g in r["gaps"])

    def itl(q: float) -> float | None:
        return 1000 * gaps[min(len(gaps) - 1, int(q * len(gaps)))] if gaps else None

    tokens = sum(r["tokens"] for r in ok)
    errors = sorted({str(r.get("status") or r.get("error")) for r in results if not r["ok"]})
    return {"concurrency": concurrency, "stream": stream, "requests": len(results), "failed": len(results) - len(ok),
            "errors": errors,
            "wall_s": wall, "tok_s": tokens / wall, "req_s": len(ok) / wall, "tokens": tokens,
            "ttft_p50_ms": pct("ttft", 0.5), "ttft_p99_ms": pct("ttft", 0.99),
            "itl_p50_ms": itl(0.5), "itl_p99_ms": itl(0.99),
            "latency_p50_ms": pct("latency", 0.5), "latency_p99_ms": pct("latency", 0.99)}


# -------------------------------------------------------------------------------------------------
peer = EnginePeer()
proc, addr = start_server()
rows = []
try:
    one_request(addr, True)  # warm-up
    for concurrency in args.concurrency:
        peer.round(2)
        rows.append(scenario(addr, concurrency, True))
    peer.round(2)
finally:
    stop_process(proc)
    if workdir is not None:
        workdir.cleanup()
engine_peer = peer.summary()


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


print(f"\nserving benchmark: {source} model {model_tag or ''} on {args.device_type} ({args.num_gpus} replica(s)), "
      f"replies of {args.max_tokens} tokens, loopback")
print(f"peer: bare Engine.generate batch 1: {engine_peer['tok_s']:.1f} tok/s, "
      f"first token {engine_peer['ttft_ms']:.1f} ms\n")
head = ("clients", "ok/sent", "wall s", "tok/s", "vs 1 client", "vs engine", "TTFT p50", "TTFT p99", "ITL p50",
        "ITL p99", "lat p50", "lat p99")
print("| " + " | ".join(head) + " |")
print("|" + "|".join("---:" for _ in head) + "|")
base = rows[0]
for r in rows:
    print(f"| {r['concurrency']} | {r['requests'] - r['failed']}/{r['requests']} "
          f"| {r['wall_s']:.2f} | {r['tok_s']:.1f} | {r['tok_s'] / base['tok_s']:.2f}x "
          f"| {r['tok_s'] / engine_peer['tok_s']:.2f}x "
          f"| {fmt(r['ttft_p50_ms'])} | {fmt(r['ttft_p99_ms'])} | {fmt(r['itl_p50_ms'], '.2f')} "
          f"| {fmt(r['itl_p99_ms'], '.2f')} | {fmt(r['latency_p50_ms'])} | {fmt(r['latency_p99_ms'])} |")
print(f"(times in ms; 'vs 1 client' is against the {base['concurrency']}-client row)")
for r in rows:
    if r["errors"]:
        print(f"failures with {r['concurrency']} client(s): {r['errors']}")
summary = {
    "bench": "serve", "source": source, "device": args.device_type, "replicas": args.num_gpus,
    "max_tokens": args.max_tokens, "requests": args.requests, "engine_tok_s": round(engine_peer["tok_s"], 2),
    "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    "tok_s_vs_first": {str(r["concurrency"]): round(r["tok_s"] / base["tok_s"], 3) for r in rows},
    "itl_p99_vs_first": {str(r["concurrency"]): round(r["itl_p99_ms"] / base["itl_p99_ms"], 3)
                         for r in rows if r["itl_p99_ms"] and base["itl_p99_ms"]},
    "server_vs_engine_tok_s": round(base["tok_s"] / engine_peer["tok_s"], 3),
    "failed": sum(r["failed"] for r in rows),
}
print(json.dumps(summary))
