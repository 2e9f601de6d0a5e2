"""HTTP helpers for the web chat tests (stdlib only): requests, the SSE reader, a streaming client
held open on a raw socket, servers (the real script in a subprocess, or an app on a uvicorn thread)
and the engines the in-process servers run (gated step by step, or scripted)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import REPO
from nanochat.common import stop_process

USER = {"role": "user", "content": "the cat sat on the mat"}


# -------------------------------------------------------------------------------------------------
# Requests and responses


def call(addr: str, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 60):
    """One request -> (status, headers dict with lower-case names, body bytes). `body` may be a dict
    (sent as JSON), bytes, or None."""
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def chat(addr: str, payload, headers: dict | None = None, timeout: float = 60):
    return call(addr, "POST", "/v1/chat/completions", payload, headers, timeout)


def sse_frames(raw: bytes) -> list[bytes]:
    """The data payloads of an SSE body, each checked to be valid UTF-8 on its own."""
    frames = []
    for frame in raw.split(b"\n\n"):
        if not frame:
            continue
        assert frame.startswith(b"data: "), frame
        frame[6:].decode("utf-8")  # strict: no frame may carry half a character
        frames.append(frame[6:])
    return frames


def check_stream(raw: bytes, include_usage: bool) -> tuple[str, str, dict | None]:
    """Assert the OpenAI streaming shape; return (text, finish_reason, usage)."""
    frames = sse_frames(raw)
    assert frames[-1] == b"[DONE]" and frames.count(b"[DONE]") == 1
    chunks = [json.loads(f) for f in frames[:-1]]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:] if c["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    usage = None
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        usage = chunks[-1]["usage"]
        assert all(c["usage"] is None for c in chunks[:-1])
        content_chunks = chunks[:-1]
    else:
        assert all(c["choices"] and "usage" not in c for c in chunks)
        content_chunks = chunks
    assert content_chunks[-1]["choices"][0]["finish_reason"] == finishes[0]  # finish comes after the text
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content_chunks)
    return text, finishes[0], usage


def metric(addr: str, name: str, labels: str = "") -> float:
    status, _, body = call(addr, "GET", "/metrics")
    assert status == 200
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class StreamingClient:
    """A streaming request held open on a raw socket: read frames one at a time, or hang up."""

    def __init__(self, addr: str, payload: dict):
        host, port = addr.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        body = json.dumps(payload).encode()
        self.sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                          b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.file = self.sock.makefile("rb")

    def status(self) -> int:
        line = self.file.readline()
        while self.file.readline() not in (b"\r\n", b""):
            pass
        return int(line.split()[1])

    def rest(self) -> bytes:
        """The rest of the (chunked) body, de-chunked."""
        body = b""
        while size := int(self.file.readline().strip(), 16):
            body += self.file.read(size)
            self.file.readline()
        return body

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.file.close()
        self.sock.close()



# -------------------------------------------------------------------------------------------------
# Servers


@contextlib.contextmanager
def chat_web(base: Path, log: Path, *flags: str):
    """`python -m scripts.chat_web -i base` on a free loopback port, with NANOCHAT_BASE_DIR=base and
    the given flags; yields "127.0.0.1:port" once /health answers 200. Output goes to `log`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("NANOCHAT_API_KEY", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "-i", "base", "--device-type=cpu",
                                 f"--port={port}", *flags], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    addr = f"127.0.0.1:{port}"

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"chat_web exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return call(addr, "GET", "/health", timeout=5)[0] == 200
        except OSError:
            return False

    try:
        wait_until(ready, "chat_web to load the model", timeout=180)
        yield addr
    finally:
        stop_process(proc)


@contextlib.contextmanager
def serve(app):
    """Run `app` under uvicorn on a thread, on a loopback socket bound up front (no port race)."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    addr = f"127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "uvicorn to start", timeout=30)
        yield addr
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def wait_ready(addr: str) -> None:
    wait_until(lambda: call(addr, "GET", "/health")[0] == 200, "the model to load")


def load_tiny(base: Path):
    """(model, tokenizer) of the base checkpoint under `base`, loaded in this process."""
    from nanochat.checkpoint_manager import load_model

    old = os.environ.get("NANOCHAT_BASE_DIR")
    os.environ["NANOCHAT_BASE_DIR"] = str(base)
    try:
        model, tokenizer, _ = load_model("base", "cpu")
    finally:
        if old is None:
            del os.environ["NANOCHAT_BASE_DIR"]
        else:
            os.environ["NANOCHAT_BASE_DIR"] = old
    return model, tokenizer


# -------------------------------------------------------------------------------------------------
# Engines for the in-process servers


class GatedEngine:
    """The real Engine, but each token waits for the test to allow it (or for open())."""

    def __init__(self, engine):
        self.engine = engine
        self.permits = threading.Semaphore(0)
        self.opened = threading.Event()
        self.active = threading.Event()  # a generation is running
        self.closed = threading.Event()  # the last generation ended (completed or closed early)
        self.yielded = 0

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()

    def open(self) -> None:
        self.opened.set()
        self.allow(1000)

    def generate(self, tokens, **kwargs):
        self.closed.clear()
        self.yielded = 0
        self.active.set()
        gen = self.engine.generate(tokens, **kwargs)
        try:
            for item in gen:
                if not self.opened.is_set() and not self.permits.acquire(timeout=60):
                    raise TimeoutError("the test never released this step")
                self.yielded += 1
                yield item
        finally:
            gen.close()
            self.active.clear()
            self.closed.set()


class ScriptedEngine:
    """Yields a fixed token sequence, one token per step, whatever the prompt."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens

    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, seed=42):
        for t in self.tokens[:max_tokens]:
            yield [t], [1]


def scripted_tokens(tokenizer) -> tuple[list[int], str]:
    """Multi-byte text split into single-byte tokens, a calculator call, and the end token."""
    sp = tokenizer.encode_special
    ids = tokenizer.encode("héllo 🙂 ") + [sp("<|python_start|>")] + tokenizer.encode("2+3") + \
        [sp("<|python_end|>"), sp("<|output_start|>")] + tokenizer.encode("5") + [sp("<|output_end|>")] + \
        tokenizer.encode(" 中文 ok") + [sp("<|assistant_end|>")]
    return ids, "héllo 🙂 [calculator: 2+3 = 5] 中文 ok"



def byte_tokens(tokenizer) -> dict[bytes, int]:
    """The single-byte tokens of the vocabulary (byte-level BPE has all 256)."""
    n_ordinary = tokenizer.vocab_size - len(tokenizer.get_special_tokens())
    out = {tokenizer.id_to_token(i): i for i in range(n_ordinary) if len(tokenizer.id_to_token(i)) == 1}
    assert len(out) == 256
    return out
