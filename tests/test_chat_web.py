"""The web chat: OpenAI wire format, validation, the bounded queue, disconnects, metrics, UTF-8
streaming, API key, CORS and the UI.

Two kinds of server: the real script (`python -m scripts.chat_web` in a subprocess, on the tiny
base checkpoint) for the end-to-end behaviour, and the same app in-process (uvicorn on a thread)
with a gated engine whose steps the test releases one by one, so queueing and disconnects are
tested by behaviour, never by timing."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from nanochat.serving import (MAX_BODY_BYTES, MAX_MESSAGE_CHARS, MAX_MESSAGES, MAX_TOTAL_CHARS, SamplingDefaults,
                              ServerSettings, TextAssembler, create_app)

UI_PATH = REPO / "nanochat" / "ui.html"


# -------------------------------------------------------------------------------------------------
# HTTP helpers (stdlib only)


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


@pytest.fixture(scope="module")
def server(tiny_base_checkpoint, tmp_path_factory):
    """The real script on the tiny base checkpoint, queue of 4, default max_tokens 16."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("chat_web") / "server.log"
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(tiny_base_checkpoint), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("NANOCHAT_API_KEY", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "-i", "base", "--device-type=cpu",
                                 f"--port={port}", "--queue-size=4", "--max-tokens=16"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
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
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve(app):
    """Run `app` under uvicorn on a thread, on a loopback socket bound up front (no port race)."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    addr = "127.0.0.1:%d" % sock.getsockname()[1]
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


@pytest.fixture(scope="module")
def tiny(tiny_base_checkpoint):
    """(model, tokenizer) of the tiny base checkpoint, loaded in this process."""
    from nanochat.checkpoint_manager import load_model

    old = os.environ.get("NANOCHAT_BASE_DIR")
    os.environ["NANOCHAT_BASE_DIR"] = str(tiny_base_checkpoint)
    try:
        model, tokenizer, _ = load_model("base", "cpu")
    finally:
        if old is None:
            del os.environ["NANOCHAT_BASE_DIR"]
        else:
            os.environ["NANOCHAT_BASE_DIR"] = old
    return model, tokenizer


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


USER = {"role": "user", "content": "the cat sat on the mat"}


def byte_tokens(tokenizer) -> dict[bytes, int]:
    """The single-byte tokens of the vocabulary (byte-level BPE has all 256)."""
    n_ordinary = tokenizer.vocab_size - len(tokenizer.get_special_tokens())
    out = {tokenizer.id_to_token(i): i for i in range(n_ordinary) if len(tokenizer.id_to_token(i)) == 1}
    assert len(out) == 256
    return out


# -------------------------------------------------------------------------------------------------
# The wire format (real server)


def test_streaming_format(server):
    status, headers, raw = chat(server, {"messages": [USER], "stream": True, "stream_options": {"include_usage": True},
                                         "max_tokens": 8, "seed": 1, "model": "my-model"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    text, finish, usage = check_stream(raw, include_usage=True)
    assert usage["completion_tokens"] <= 8 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert json.loads(sse_frames(raw)[0])["model"] == "my-model"  # echoed
    assert "\ufffd" not in text or True  # a base model may emit invalid bytes; split characters are tested below
    # without include_usage: no usage chunk, same shape otherwise
    status, _, raw = chat(server, {"messages": [USER], "stream": True, "max_tokens": 4})
    assert status == 200
    check_stream(raw, include_usage=False)


def test_non_streaming_matches_streaming(server):
    payload = {"messages": [{"role": "system", "content": "be brief"}, USER, {"role": "assistant", "content": "ok"},
                            {"role": "user", "content": "and then?"}],
               "max_tokens": 10, "temperature": 0.8, "top_k": 20, "seed": 7, "top_p": 0.9}
    status, _, body = chat(server, payload)
    assert status == 200
    out = json.loads(body)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    # the same seed streams the same completion
    status, _, raw = chat(server, {**payload, "stream": True})
    text, finish, _ = check_stream(raw, include_usage=False)
    assert text == choice["message"]["content"] and finish == choice["finish_reason"]


def test_length_and_defaults(server):
    # at temperature 0 the tiny model does not stop within 3 tokens of "the cat sat on the mat"... or it does;
    # either way finish_reason agrees with the token count
    status, _, body = chat(server, {"messages": [USER], "max_tokens": 3, "temperature": 0})
    out = json.loads(body)
    assert status == 200 and out["usage"]["completion_tokens"] <= 3
    if out["choices"][0]["finish_reason"] == "length":
        assert out["usage"]["completion_tokens"] == 3
    # max_tokens left out: the server default (--max-tokens=16) applies
    status, _, body = chat(server, {"messages": [USER], "temperature": 1.0, "seed": 3})
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] <= 16


def test_stop_strings_end_generation(server):
    # find what the model says at temperature 0, then stop on a piece of it
    status, _, body = chat(server, {"messages": [USER], "max_tokens": 12, "temperature": 0})
    full = json.loads(body)["choices"][0]["message"]["content"]
    if len(full.strip()) < 3:
        pytest.skip(f"the tiny model's greedy reply {full!r} is too short to stop inside")
    stop = full[len(full) // 2: len(full) // 2 + 2]  # two characters from the middle
    status, _, body = chat(server, {"messages": [USER], "max_tokens": 12, "temperature": 0, "stop": [stop, "zzz"]})
    out = json.loads(body)["choices"][0]
    assert out["finish_reason"] == "stop" and out["message"]["content"] == full[: full.index(stop)]
    status, _, raw = chat(server, {"messages": [USER], "max_tokens": 12, "temperature": 0, "stop": stop,
                                   "stream": True})
    text, finish, _ = check_stream(raw, include_usage=False)
    assert (text, finish) == (full[: full.index(stop)], "stop")


def test_models_health_metrics_ui(server):
    status, _, body = call(server, "GET", "/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"].startswith("nanochat-base-d1")
    status, _, body = call(server, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    chat(server, {"messages": [USER], "max_tokens": 2})
    status, headers, body = call(server, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in ("nanochat_requests_running", "nanochat_requests_waiting", "nanochat_requests_rejected_total",
                 "nanochat_time_to_first_token_seconds_bucket", "nanochat_inter_token_latency_seconds_bucket",
                 "nanochat_prompt_tokens_total", "nanochat_generated_tokens_total", "nanochat_replicas"):
        assert name in text, name
    assert metric(server, "nanochat_generated_tokens_total") > 0
    assert metric(server, "nanochat_time_to_first_token_seconds_count") > 0
    status, headers, body = call(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"nanochat" in body
    status, _, body = call(server, "GET", "/no/such/page")
    assert status == 404 and "error" in json.loads(body)


# -------------------------------------------------------------------------------------------------
# Validation: every bad input is a 400 with an OpenAI error body (real server)

M = [USER]
BAD_REQUESTS = {
    "malformed json": (b'{"messages": [', None),
    "invalid utf-8": (b'\xff\xfe{"messages": []}', None),
    "deeply nested": (b"[" * 50_000 + b"]" * 50_000, None),
    "not an object": ([1, 2], None),
    "missing messages": ({}, "messages"),
    "messages null": ({"messages": None}, "messages"),
    "empty messages": ({"messages": []}, "messages"),
    "messages not a list": ({"messages": "hi"}, "messages"),
    "message not an object": ({"messages": ["hi"]}, "messages[0]"),
    "unknown role": ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    "missing role": ({"messages": [{"content": "x"}]}, "messages[0].role"),
    "system not first": ({"messages": [USER, {"role": "system", "content": "x"}]}, "messages[1].role"),
    "empty content": ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
    "blank content": ({"messages": [{"role": "user", "content": " \n\t"}]}, "messages[0].content"),
    "missing content": ({"messages": [{"role": "user"}]}, "messages[0].content"),
    "content wrong type": ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    "content image part": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
                           "messages[0].content[0]"),
    "roles not alternating": ({"messages": [USER, USER]}, "messages[1].role"),
    "ends with assistant": ({"messages": [USER, {"role": "assistant", "content": "x"}]}, "messages"),
    "only system": ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
    "too many messages": ({"messages": [USER, {"role": "assistant", "content": "a"}] * (MAX_MESSAGES // 2) + [USER]},
                          "messages"),
    "message too long": ({"messages": [{"role": "user", "content": "a" * (MAX_MESSAGE_CHARS + 1)}]},
                         "messages[0].content"),
    "too many characters": ({"messages": [{"role": r, "content": "a" * MAX_MESSAGE_CHARS}
                                          for r in ["user", "assistant"] * (MAX_TOTAL_CHARS // MAX_MESSAGE_CHARS // 2)]
                             + [USER]}, "messages"),
    "temperature too high": ({"messages": M, "temperature": 2.5}, "temperature"),
    "temperature negative": ({"messages": M, "temperature": -0.1}, "temperature"),
    "temperature string": ({"messages": M, "temperature": "hot"}, "temperature"),
    "temperature bool": ({"messages": M, "temperature": True}, "temperature"),
    "temperature NaN": (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature"),
    "temperature Infinity": (b'{"messages": [{"role": "user", "content": "x"}], "temperature": Infinity}',
                             "temperature"),
    "temperature 1e999": (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}', "temperature"),
    "top_k too big": ({"messages": M, "top_k": 201}, "top_k"),
    "top_k negative": ({"messages": M, "top_k": -1}, "top_k"),
    "top_k float": ({"messages": M, "top_k": 3.5}, "top_k"),
    "top_p too big": ({"messages": M, "top_p": 1.5}, "top_p"),
    "max_tokens zero": ({"messages": M, "max_tokens": 0}, "max_tokens"),
    "max_tokens huge": ({"messages": M, "max_tokens": 10**30}, "max_tokens"),
    "max_tokens string": ({"messages": M, "max_tokens": "10"}, "max_tokens"),
    "max_tokens float": ({"messages": M, "max_tokens": 1.5}, "max_tokens"),
    "max_completion_tokens zero": ({"messages": M, "max_completion_tokens": 0}, "max_completion_tokens"),
    "prompt + max_tokens over context": ({"messages": M, "max_tokens": 64}, "max_tokens"),
    "prompt over context": ({"messages": [{"role": "user", "content": "the cat sat " * 40}]}, "messages"),
    "seed negative": ({"messages": M, "seed": -1}, "seed"),
    "seed string": ({"messages": M, "seed": "x"}, "seed"),
    "stream string": ({"messages": M, "stream": "yes"}, "stream"),
    "stream_options not an object": ({"messages": M, "stream": True, "stream_options": "x"}, "stream_options"),
    "include_usage string": ({"messages": M, "stream": True, "stream_options": {"include_usage": "y"}},
                             "stream_options.include_usage"),
    "stop too many": ({"messages": M, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    "stop empty string": ({"messages": M, "stop": [""]}, "stop"),
    "stop wrong type": ({"messages": M, "stop": 5}, "stop"),
    "n = 2": ({"messages": M, "n": 2}, "n"),
    "model not a string": ({"messages": M, "model": 5}, "model"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_400(server, case):
    body, param = BAD_REQUESTS[case]
    status, headers, raw = chat(server, body, headers={"Content-Type": "application/json"})
    assert status == 400, raw[:300]
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"] and error["code"]
    assert error["param"] == param, error
    if "context" in case:
        assert error["code"] == "context_length_exceeded"


def test_oversized_body_is_413(server):
    big = json.dumps({"messages": [{"role": "user", "content": "a" * (MAX_BODY_BYTES + 10)}]}).encode()
    status, _, raw = chat(server, big)
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_too_large"
    # without a Content-Length (chunked): counted while reading
    host, port = server.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/chat/completions", body=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()
    # the server is still fine
    assert chat(server, {"messages": M, "max_tokens": 1})[0] == 200


_json_scalars = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True) | \
    st.text(max_size=20)
_json = st.recursive(_json_scalars, lambda kids: st.lists(kids, max_size=3) |
                     st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=8)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", 3]),
                                  "content": st.text(max_size=30) | _json})
_payload = st.fixed_dictionaries({}, optional={
    "messages": st.lists(_message, max_size=4) | _json, "temperature": _json | st.floats(-1, 3),
    "top_k": _json | st.integers(-5, 300), "max_tokens": _json | st.integers(-5, 80), "seed": _json,
    "stop": _json | st.lists(st.text(max_size=4), max_size=5), "stream": _json | st.booleans(),
    "stream_options": _json, "top_p": _json, "model": _json, "n": _json})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=_payload)
def test_fuzzed_requests_never_500(server, payload):
    body = json.dumps(payload, allow_nan=True).encode()
    status, _, raw = chat(server, body, headers={"Content-Type": "application/json"})
    assert status in (200, 400), raw[:300]
    if status == 400:
        assert json.loads(raw)["error"]["message"]
    elif payload.get("stream") is True:
        check_stream(raw, include_usage=bool((payload.get("stream_options") or {}).get("include_usage")))


# -------------------------------------------------------------------------------------------------
# Queueing, deadlines and disconnects (in-process app, gated engine)


def gated_app(tiny, queue_size: int, wait_timeout: float):
    from nanochat.engine import Engine

    model, tokenizer = tiny
    engine = GatedEngine(Engine(model, tokenizer))
    app = create_app(ServerSettings(queue_size=queue_size, wait_timeout=wait_timeout),
                     lambda: ([engine], tokenizer, model.config.sequence_len))
    return app, engine


def wait_ready(addr: str) -> None:
    wait_until(lambda: call(addr, "GET", "/health")[0] == 200, "the model to load")


def test_queue_full_gets_503_at_once(tiny):
    app, engine = gated_app(tiny, queue_size=1, wait_timeout=120.0)
    with serve(app) as addr:
        wait_ready(addr)
        a = StreamingClient(addr, {"messages": [USER], "stream": True, "max_tokens": 20})
        assert a.status() == 200
        assert engine.active.wait(30)  # A holds the only replica, blocked on its first token
        b_result = {}
        b = threading.Thread(target=lambda: b_result.update(r=chat(addr, {"messages": [USER], "max_tokens": 2})))
        b.start()
        wait_until(lambda: metric(addr, "nanochat_requests_waiting") == 1, "B to queue")
        # C finds the queue full: refused at once, long before B's deadline
        status, headers, raw = chat(addr, {"messages": [USER], "max_tokens": 2})
        assert status == 503 and headers["retry-after"].isdigit()
        assert json.loads(raw)["error"]["code"] == "queue_full"
        assert metric(addr, "nanochat_requests_rejected_total", '{reason="queue_full"}') == 1
        # the server keeps answering while a generation runs
        assert call(addr, "GET", "/health")[0] == 200
        assert metric(addr, "nanochat_requests_running") == 1
        # A finishes normally once its tokens flow; then B gets the replica
        engine.open()
        check_stream(a.rest(), include_usage=False)
        a.close()
        b.join(timeout=60)
        assert b_result["r"][0] == 200
        assert chat(addr, {"messages": [USER], "max_tokens": 2})[0] == 200


def test_queue_deadline_gets_503(tiny):
    app, engine = gated_app(tiny, queue_size=1, wait_timeout=0.5)
    with serve(app) as addr:
        wait_ready(addr)
        a = StreamingClient(addr, {"messages": [USER], "stream": True, "max_tokens": 20})
        assert a.status() == 200
        assert engine.active.wait(30)
        # B waits for the busy replica past the deadline
        status, headers, raw = chat(addr, {"messages": [USER], "max_tokens": 2})
        assert status == 503 and headers["retry-after"].isdigit()
        assert json.loads(raw)["error"]["code"] == "queue_timeout"
        assert metric(addr, "nanochat_requests_rejected_total", '{reason="queue_timeout"}') == 1
        assert metric(addr, "nanochat_requests_waiting") == 0
        engine.open()
        check_stream(a.rest(), include_usage=False)
        a.close()
        assert chat(addr, {"messages": [USER], "max_tokens": 2})[0] == 200


def test_disconnect_frees_the_replica(tiny):
    app, engine = gated_app(tiny, queue_size=1, wait_timeout=60.0)
    with serve(app) as addr:
        wait_ready(addr)
        ctx = tiny[0].config.sequence_len
        a = StreamingClient(addr, {"messages": [USER], "stream": True, "max_tokens": ctx - 20, "temperature": 0})
        assert a.status() == 200
        assert engine.active.wait(30)
        a.close()
        # let tokens through one at a time until the generation notices the client is gone
        for _ in range(200):
            engine.allow(1)
            if engine.closed.wait(0.25):  # one token per quarter second: time for the loop to notice
                break
        assert engine.closed.is_set(), "the generation kept running for a client that hung up"
        assert engine.yielded < ctx - 20  # stopped early, not run to its max_tokens
        wait_until(lambda: metric(addr, "nanochat_requests_finished_total", '{reason="cancelled"}') == 1, "cancel")
        engine.open()
        status, _, body = chat(addr, {"messages": [USER], "max_tokens": 3})
        assert status == 200 and json.loads(body)["choices"][0]["finish_reason"] in ("stop", "length")


def test_disconnect_while_queued_leaves_the_queue(tiny):
    app, engine = gated_app(tiny, queue_size=1, wait_timeout=120.0)
    with serve(app) as addr:
        wait_ready(addr)
        a = StreamingClient(addr, {"messages": [USER], "stream": True, "max_tokens": 5})
        assert a.status() == 200
        assert engine.active.wait(30)
        b = StreamingClient(addr, {"messages": [USER], "stream": True, "max_tokens": 5})
        wait_until(lambda: metric(addr, "nanochat_requests_waiting") == 1, "B to queue")
        b.close()  # B gives up long before its 120 s deadline
        wait_until(lambda: metric(addr, "nanochat_requests_waiting") == 0, "B to leave the queue")
        # the queue slot is free again: C queues (not refused) and is served once A is done
        c_result = {}
        c = threading.Thread(target=lambda: c_result.update(r=chat(addr, {"messages": [USER], "max_tokens": 2})))
        c.start()
        wait_until(lambda: metric(addr, "nanochat_requests_waiting") == 1, "C to queue")
        engine.open()
        check_stream(a.rest(), include_usage=False)
        a.close()
        c.join(timeout=60)
        assert c_result["r"][0] == 200


def test_non_streaming_disconnect_cancels(tiny):
    app, engine = gated_app(tiny, queue_size=1, wait_timeout=60.0)
    with serve(app) as addr:
        wait_ready(addr)
        ctx = tiny[0].config.sequence_len
        host, port = addr.split(":")
        sock = socket.create_connection((host, int(port)))
        body = json.dumps({"messages": [USER], "max_tokens": ctx - 20, "temperature": 0}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert engine.active.wait(30)
        sock.close()
        for _ in range(200):
            engine.allow(1)
            if engine.closed.wait(0.25):  # one token per quarter second: time for the loop to notice
                break
        assert engine.closed.is_set() and engine.yielded < ctx - 20
        engine.open()
        assert chat(addr, {"messages": [USER], "max_tokens": 2})[0] == 200


# -------------------------------------------------------------------------------------------------
# Start-up, API key, CORS (in-process app)


def test_health_is_503_until_loaded(tiny):
    model, tokenizer = tiny
    release = threading.Event()

    def slow_loader():
        assert release.wait(60)
        return [ScriptedEngine(tokenizer.encode("hi"))], tokenizer, model.config.sequence_len

    with serve(create_app(ServerSettings(), slow_loader)) as addr:
        status, _, body = call(addr, "GET", "/health")
        assert status == 503 and json.loads(body)["status"] == "loading"
        status, headers, body = chat(addr, {"messages": [USER]})
        assert status == 503 and "retry-after" in headers and json.loads(body)["error"]["code"] == "model_loading"
        assert call(addr, "GET", "/metrics")[0] == 200
        release.set()
        wait_ready(addr)
        status, _, body = chat(addr, {"messages": [USER]})
        assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "hi"


def test_failed_load_is_reported(tiny):
    def broken_loader():
        raise RuntimeError("no weights here")

    with serve(create_app(ServerSettings(), broken_loader)) as addr:
        wait_until(lambda: json.loads(call(addr, "GET", "/health")[2])["status"] == "error", "the load to fail")
        status, _, body = chat(addr, {"messages": [USER]})
        assert status == 503 and "no weights here" in json.loads(body)["error"]["message"]


def test_api_key(tiny):
    model, tokenizer = tiny
    app = create_app(ServerSettings(api_key="sekret"),
                     lambda: ([ScriptedEngine(tokenizer.encode("ok"))], tokenizer, model.config.sequence_len))
    with serve(app) as addr:
        wait_ready(addr)  # /health needs no key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"},
                        {"Authorization": "Basic sekret"}):
            status, h, body = chat(addr, {"messages": [USER]}, headers=headers)
            assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        assert call(addr, "GET", "/v1/models")[0] == 401
        status, _, body = chat(addr, {"messages": [USER]}, headers={"Authorization": "Bearer sekret"})
        assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "ok"
        assert call(addr, "GET", "/v1/models", headers={"Authorization": "Bearer sekret"})[0] == 200


def test_cors_allows_only_configured_origins(tiny):
    model, tokenizer = tiny

    def loader():
        return [ScriptedEngine(tokenizer.encode("ok"))], tokenizer, model.config.sequence_len

    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    with serve(create_app(ServerSettings(), loader)) as addr:  # default: same origin only
        wait_ready(addr)
        _, headers, _ = call(addr, "OPTIONS", "/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in headers
        _, headers, _ = chat(addr, {"messages": [USER]}, headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in headers
    with serve(create_app(ServerSettings(cors_origins=["http://app.example"]), loader)) as addr:
        wait_ready(addr)
        status, headers, _ = call(addr, "OPTIONS", "/v1/chat/completions", headers=preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
        assert headers.get("access-control-allow-credentials") != "true"
        _, headers, _ = call(addr, "OPTIONS", "/v1/chat/completions",
                             headers={**preflight, "Origin": "http://evil.example"})
        assert headers.get("access-control-allow-origin") != "http://evil.example"


# -------------------------------------------------------------------------------------------------
# UTF-8 safe streaming and the tool-call convention


def test_stream_never_splits_a_character_over_http(tiny):
    model, tokenizer = tiny
    ids, expected = scripted_tokens(tokenizer)
    assert len(ids) > len(expected.encode()) // 2  # the tiny vocab really splits the multi-byte characters
    app = create_app(ServerSettings(), lambda: ([ScriptedEngine(ids)], tokenizer, model.config.sequence_len))
    with serve(app) as addr:
        wait_ready(addr)
        status, _, raw = chat(addr, {"messages": [USER], "stream": True, "stream_options": {"include_usage": True}})
        assert status == 200
        chunks = [json.loads(f) for f in sse_frames(raw)[:-1]]
        pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
        assert all("\ufffd" not in p for p in pieces), pieces
        text, finish, usage = check_stream(raw, include_usage=True)
        assert text == expected and finish == "stop" and usage["completion_tokens"] == len(ids)
        status, _, body = chat(addr, {"messages": [USER]})
        assert json.loads(body)["choices"][0]["message"]["content"] == expected


def test_text_assembler_every_split(tiny):
    _, tokenizer = tiny
    text = "aé🙂中 b ñ"
    byte_ids = [byte_tokens(tokenizer)[bytes([b])] for b in text.encode()]  # every character split bytewise
    asm = TextAssembler(tokenizer)
    pieces = [asm.feed(t) for t in byte_ids] + [asm.finish()]
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == text
    assert asm.finish_reason is None  # no end token: the caller reports "length"


def test_text_assembler_tool_calls_and_end(tiny):
    _, tokenizer = tiny
    ids, expected = scripted_tokens(tokenizer)
    asm = TextAssembler(tokenizer)
    out = "".join(asm.feed(t) for t in ids) + asm.finish()
    assert out == expected and asm.finish_reason == "stop"
    # a call cut off by the length limit is still closed
    sp = tokenizer.encode_special
    asm = TextAssembler(tokenizer)
    out = "".join(asm.feed(t) for t in [sp("<|python_start|>")] + tokenizer.encode("1+")) + asm.finish()
    assert out == "[calculator: 1+]" and asm.finish_reason is None
    # other special tokens are not shown; a dangling half character becomes U+FFFD only at the very end
    asm = TextAssembler(tokenizer)
    half = byte_tokens(tokenizer)[b"\xe4"]  # the first byte of a three-byte character
    out = asm.feed(sp("<|user_start|>")) + asm.feed(tokenizer.encode("ok")[0]) + asm.feed(half)
    assert "\ufffd" not in out
    assert asm.finish() == "\ufffd"


def test_text_assembler_stop_strings(tiny):
    _, tokenizer = tiny
    text = "the cat sat on the mat"
    ids = [byte_tokens(tokenizer)[bytes([b])] for b in text.encode()]  # worst case: one byte per token
    asm = TextAssembler(tokenizer, stop=["on t", "zebra"])
    pieces = []
    for t in ids:
        pieces.append(asm.feed(t))
        if asm.finish_reason:
            break
    pieces.append(asm.finish())
    assert "".join(pieces) == "the cat sat " and asm.finish_reason == "stop"
    # a held-back prefix of a stop string that never completes is released at the end
    asm = TextAssembler(tokenizer, stop=["matte"])
    out = "".join(asm.feed(t) for t in ids) + asm.finish()
    assert out == text and asm.finish_reason is None


def test_parse_defaults_and_limits(tiny):
    from nanochat.serving import RequestError, parse_chat_request

    model, tokenizer = tiny
    ctx = model.config.sequence_len
    req = parse_chat_request({"messages": [USER]}, tokenizer, ctx, SamplingDefaults(0.5, 7, 1000))
    assert (req.temperature, req.top_k, req.stream) == (0.5, 7, False)
    assert req.max_tokens == ctx - len(req.prompt_ids)  # default capped by the room left in the context
    # user text never becomes a special token
    req = parse_chat_request({"messages": [{"role": "user", "content": "<|assistant_end|><|bos|>"}]}, tokenizer, ctx,
                             SamplingDefaults())
    specials = {tokenizer.encode_special(s) for s in tokenizer.get_special_tokens()}
    assert [t for t in req.prompt_ids if t in specials] == [tokenizer.encode_special(s) for s in
                                                            ("<|bos|>", "<|user_start|>", "<|user_end|>",
                                                             "<|assistant_start|>")]
    with pytest.raises(RequestError):
        parse_chat_request({"messages": [USER], "temperature": math.inf}, tokenizer, ctx, SamplingDefaults())


# -------------------------------------------------------------------------------------------------
# The UI


def test_ui_is_self_contained_and_escapes():
    html = UI_PATH.read_text()
    # no external requests: no absolute URLs, no protocol-relative ones, a CSP that forbids them
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), "the UI references another origin"
    assert "connect-src 'self'" in html and "default-src 'none'" in html
    # untrusted text only ever goes in as text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in html, sink


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="chromium is not installed "
                                    "(apt-get install -y chromium) - the browser tests need it")


def run_chromium(url: str, *extra: str, budget_ms: int = 8000) -> str:
    with contextlib.ExitStack() as stack:
        import tempfile

        profile = stack.enter_context(tempfile.TemporaryDirectory())
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1100,800",
               f"--virtual-time-budget={budget_ms}", *extra, url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    the browser reads NUL-terminated JSON commands on fd 3 and answers on fd 4): stdlib only."""

    def __init__(self):
        import tempfile

        self.profile = tempfile.TemporaryDirectory()
        import fcntl

        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        # the child's ends move to fds >= 10 first, so that placing them on 3 and 4 cannot clobber one another
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)
        to_browser_r, from_browser_w = high
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={self.profile.name}", "--hide-scrollbars", "--window-size=1100,800",
               "--remote-debugging-pipe", "about:blank"]
        # bash moves our pipe ends to the fds 3 and 4 that chromium expects
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}', "bash", *cmd],
                                     pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer, self.next_id, self.session = b"", 0, None
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        while True:  # events and answers arrive interleaved; keep the answer to this command
            while b"\0" not in self.buffer:
                data = os.read(self.from_browser, 1 << 16)
                if not data:
                    raise AssertionError("chromium closed the DevTools pipe")
                self.buffer += data
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 60) -> None:
        def holds():
            try:
                return self.js(expression)
            except AssertionError:  # e.g. the page is still loading
                return False

        wait_until(holds, what, timeout)

    def key(self, key: str, shift: bool = False) -> None:
        params = {"key": key, "code": key, "windowsVirtualKeyCode": 13 if key == "Enter" else 0,
                  "modifiers": 8 if shift else 0}
        self.send("Input.dispatchKeyEvent", type="keyDown", **params)
        self.send("Input.dispatchKeyEvent", type="keyUp", **params)

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.to_browser)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.from_browser)
        self.profile.cleanup()


@pytest.mark.slow
@needs_chromium
def test_ui_conversation_in_chromium(server, tmp_path):
    from urllib.parse import quote

    question = "What is <b>2+3</b>? <img src=x onerror=alert(1)>"
    browser = Browser()
    try:  # ?q= sends a first message as soon as the page loads
        browser.send("Page.navigate", url=f"http://{server}/?q={quote(question)}")
        browser.wait("document.querySelectorAll('#thread .msg').length === 2 && !document.querySelector('.pending')"
                     " && document.getElementById('status').className === 'ok'", "the reply")
        thread = browser.js("document.getElementById('thread').outerHTML")
        dom_images = browser.js("document.querySelectorAll('#thread img, #thread b').length")
        browser.screenshot(tmp_path / "ui.png")
    finally:
        browser.close()
    # the question is shown as text, escaped; no element was created from it
    assert 'class="msg user"' in thread and "What is &lt;b&gt;2+3&lt;/b&gt;? &lt;img src=x" in thread
    assert dom_images == 0
    # the streamed reply arrived and finished (Regenerate appears once generation is over)
    assert 'class="msg assistant"' in thread and ">Regenerate</button>" in thread
    assert (tmp_path / "ui.png").stat().st_size > 5000


@pytest.mark.slow
@needs_chromium
def test_ui_says_when_the_server_is_down():
    dom = run_chromium(UI_PATH.as_uri() + "?q=hello", "--dump-dom", budget_ms=3000)
    banner = re.search(r'<div id="banner"[^>]*class="show"[^>]*>(.*?)</div>', dom, re.S)
    assert banner and "Cannot reach the nanochat server" in banner.group(1), dom[:3000]
    assert re.search(r'id="status"[^>]*class="down"', dom)


@pytest.mark.slow
@needs_chromium
def test_ui_send_regenerate_edit_new_chat(server, tmp_path):
    browser = Browser()
    count = "document.querySelectorAll('#thread .msg').length"
    idle = "document.getElementById('send').style.display !== 'none' && !document.querySelector('.pending')"
    try:
        browser.send("Page.navigate", url=f"http://{server}/")
        browser.wait("document.getElementById('status').className === 'ok'", "the UI to see the server")
        # Shift+Enter does not send; Enter does
        browser.js("const i = document.getElementById('input'); i.focus(); i.value = 'Hello'; true")
        browser.key("Enter", shift=True)
        assert browser.js(count) == 0
        browser.key("Enter")
        browser.wait(f"{count} === 2 && ({idle})", "the first reply")
        assert browser.js("document.querySelector('#thread .msg.user').textContent") == "Hello"
        assert browser.js("document.getElementById('input').value") == ""
        # Regenerate replaces the last answer with a new request
        finished = metric(server, "nanochat_requests_finished_total", '{reason="stop"}') + \
            metric(server, "nanochat_requests_finished_total", '{reason="length"}')
        browser.js("[...document.querySelectorAll('button')].find(b => b.textContent === 'Regenerate').click(); true")
        browser.wait(f"{count} === 2 && ({idle})", "the regenerated reply")
        assert metric(server, "nanochat_requests_finished_total", '{reason="stop"}') + \
            metric(server, "nanochat_requests_finished_total", '{reason="length"}') == finished + 1
        # click the question, edit it, resend: the old answer is replaced
        browser.js("document.querySelector('#thread .msg.user').click(); true")
        browser.wait("!!document.querySelector('.editor textarea')", "the editor")
        browser.js("document.querySelector('.editor textarea').value = 'Edited question'; "
                   "[...document.querySelectorAll('.editor button')].find(b => b.textContent === 'Send').click(); true")
        browser.wait(f"{count} === 2 && ({idle}) && !document.querySelector('.editor')", "the edited conversation")
        assert browser.js("document.querySelector('#thread .msg.user').textContent") == "Edited question"
        # a second turn, then a screenshot of a real conversation
        browser.js("const j = document.getElementById('input'); j.focus(); j.value = 'And then? 🙂'; true")
        browser.key("Enter")
        browser.wait(f"{count} === 4 && ({idle})", "the second reply")
        browser.screenshot(tmp_path / "conversation.png")
        if os.environ.get("NANOCHAT_UI_SCREENSHOT"):
            shutil.copy(tmp_path / "conversation.png", os.environ["NANOCHAT_UI_SCREENSHOT"])
        # tool calls render as a chip, built from text nodes (markup in the expression stays text)
        chip = browser.js("const n = document.createElement('div'); "
                          "fillAssistant(n, 'so [calculator: 2+3 = 5] and [calculator: <b>x</b>', false); "
                          "[n.querySelectorAll('.tool').length, n.querySelector('.tool').textContent, "
                          " n.querySelectorAll('b').length]")
        assert chip == [2, "calculator2+3 = 5", 0]
        # New chat empties the thread
        browser.js("document.getElementById('new-chat').click(); true")
        assert browser.js(count) == 0 and browser.js("!!document.querySelector('.empty')")
    finally:
        browser.close()
