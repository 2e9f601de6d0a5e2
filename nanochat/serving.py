"""The web chat's machinery: request validation, the worker pool, text streaming, metrics and the
FastAPI app. `scripts/chat_web.py` parses flags, loads the model replicas and runs this app.

    POST /v1/chat/completions   OpenAI-compatible chat completions, streaming (SSE) or not
    POST /v1/completions        text completions: the model continues a prompt (base models)
    GET  /v1/models             the one model served; /v1/models/{id} the same card
    GET  /health                200 once a model replica is loaded, 503 before
    GET  /metrics               Prometheus text
    GET  /                      the chat UI (nanochat/ui.html)

How a request flows: the handler validates the JSON on the event loop (cheap: a tokenization),
then waits for a free slot in a bounded FIFO queue (503 + Retry-After when the queue is full or
the wait passes the deadline). Each replica has `slots` slots and one thread of its own, which
runs the replica's scheduler (nanochat/scheduler.py): one batched decode step after another for
every request it holds, a new request joining at the next step. The thread turns each request's
tokens into text, which comes back to the event loop through an asyncio queue. It checks a cancel
flag before every step, so a client that goes away frees its slot within one decode step.

Tool calls are shown inline as text, one convention everywhere (API, UI, CLI-like clients):

    <|python_start|>2+3<|python_end|><|output_start|>5<|output_end|>   ->   "[calculator: 2+3 = 5]"

Other special tokens the model might emit (a base model emits anything) are not shown.

Every request logs one line when it ends (method, path, status, tokens, TTFT, total time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

logger = logging.getLogger("nanochat.serving")

# -------------------------------------------------------------------------------------------------
# Limits. Generous for chat, small enough that no request can make the server slow for everyone.

MAX_BODY_BYTES = 1 << 20  # 1 MiB: fits MAX_TOTAL_CHARS even when every character is a \uXXXX escape
MAX_MESSAGES = 256
MAX_MESSAGE_CHARS = 32_000
MAX_TOTAL_CHARS = 128_000
TEMPERATURE_MAX = 2.0
TOP_K_MAX = 200
MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1
RETRY_AFTER_SECONDS = 1  # what a 503 asks the client to wait before trying again
TOOL_OPEN, TOOL_EQUALS, TOOL_CLOSE = "[calculator: ", " = ", "]"

UI_PATH = Path(__file__).with_name("ui.html")


# -------------------------------------------------------------------------------------------------
# Errors: every failure a client can cause is one of these, turned into an OpenAI-style body.


class RequestError(Exception):
    """An HTTP error with an OpenAI-style body {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None, code: str = "invalid_value") -> RequestError:
    return RequestError(400, message, param=param, code=code)


def busy(message: str, code: str) -> RequestError:
    return RequestError(503, message, code=code, type="overloaded_error",
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class ClientGone(Exception):
    """The client disconnected before its request got a replica."""


# -------------------------------------------------------------------------------------------------
# Request validation


@dataclass
class SamplingDefaults:
    """Server-side defaults for fields a request leaves out (flags of chat_web)."""

    temperature: float = 0.6
    top_k: int = 50
    max_tokens: int = 512


@dataclass
class ChatRequest:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_k: int
    seed: int
    stop: list[str]
    stream: bool
    include_usage: bool
    model: str
    top_p: float = 1.0
    dropped_messages: int = 0  # oldest turns left out so that the reply has room (chat requests only)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:  # "[[[[...": json recurses once per level
        raise invalid("the JSON body is nested too deeply", None, "invalid_json") from None
    except ValueError as e:  # includes invalid UTF-8
        raise invalid(f"the body is not valid JSON: {e}", None, "invalid_json") from None


def _number(payload: dict, name: str, lo: float, hi: float, integer: bool, default):
    value = payload.get(name)
    if value is None:
        return default
    # bool is an int in Python; JSON true is not a number
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise invalid(f"'{name}' must be {kind}, got {json.dumps(value)[:50]}", name, "invalid_type")
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid(f"'{name}' must be a finite number, got {value}", name)
    if not lo <= value <= hi:
        raise invalid(f"'{name}' must be between {lo} and {hi}, got {value}", name)
    return value


def _content_text(content: Any, param: str) -> str:
    """A message's content: a str, or OpenAI's list of {"type": "text", "text": str} parts."""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"{param}[{j}] must be a {{'type': 'text', 'text': str}} part (only text is supported)",
                              f"{param}[{j}]", "invalid_type")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise invalid(f"{param} must be a string", param, "invalid_type")
    return content


def parse_messages(messages: Any) -> list[dict]:
    """Validate OpenAI messages into [{"role", "content": str}] for render_for_completion."""
    if messages is None:
        raise invalid("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise invalid("'messages' must be a list of {role, content} objects", "messages", "invalid_type")
    if not messages:
        raise invalid("'messages' must not be empty", "messages")
    if len(messages) > MAX_MESSAGES:
        raise invalid(f"too many messages: {len(messages)} > {MAX_MESSAGES}", "messages")
    out, total = [], 0
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid(f"{param} must be an object with 'role' and 'content'", param, "invalid_type")
        role = msg.get("role")
        if role not in ("system", "user", "assistant"):
            raise invalid(f"{param}.role must be 'system', 'user' or 'assistant', got {json.dumps(role)[:50]}",
                          f"{param}.role")
        if role == "system" and i != 0:
            raise invalid(f"{param}: a system message is only allowed first", f"{param}.role")
        content = _content_text(msg.get("content"), f"{param}.content")
        if not content.strip():
            raise invalid(f"{param}.content is empty", f"{param}.content")
        if len(content) > MAX_MESSAGE_CHARS:
            raise invalid(f"{param}.content has {len(content):,} characters, more than {MAX_MESSAGE_CHARS:,}",
                          f"{param}.content")
        total += len(content)
        out.append({"role": role, "content": content})
    if total > MAX_TOTAL_CHARS:
        raise invalid(f"the messages have {total:,} characters in total, more than {MAX_TOTAL_CHARS:,}", "messages")
    turns = out[1:] if out[0]["role"] == "system" else out
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            idx = i + (len(out) - len(turns))
            raise invalid(f"messages[{idx}] should be from the {expected}: after an optional system message, "
                          "roles alternate user/assistant, starting and ending with the user", f"messages[{idx}].role")
    if not turns or turns[-1]["role"] != "user":
        raise invalid("the last message must be from the user", "messages")
    return out


# OpenAI parameters this server does not implement. They are refused by name (400) rather than
# accepted and ignored, so a client (an eval harness asking for logprobs) learns it at once.
# Each maps to the values that mean "off" and are accepted. logprobs needs the engine to return
# the sampling distribution, which it does not today.
UNSUPPORTED = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "tools": (None, []), "functions": (None, []),
    "tool_choice": (None, "none", "auto"), "function_call": (None, "none", "auto"), "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "echo": (None, False), "suffix": (None, ""), "best_of": (None, 1),
}


def _refuse_unsupported(payload: dict) -> None:
    for name, off in UNSUPPORTED.items():
        value = payload.get(name)
        # True == 1 in Python: a bool only matches a bool, so that best_of=true is refused
        if not any(value is None if v is None else value == v and isinstance(value, bool) == isinstance(v, bool)
                   for v in off):
            raise invalid(f"'{name}' is not supported by this server: leave it out", name, "unsupported_parameter")


@dataclass
class Sampling:
    """The fields that chat and text completions share."""

    temperature: float
    top_k: int
    top_p: float
    max_tokens: int | None  # None: the server picks, from what room the prompt leaves
    max_name: str  # the field the client used for it
    seed: int
    stop: list[str]
    stream: bool
    include_usage: bool
    model: str


def parse_sampling(payload: dict, context_len: int, defaults: SamplingDefaults) -> Sampling:
    _refuse_unsupported(payload)
    temperature = float(_number(payload, "temperature", 0.0, TEMPERATURE_MAX, False, defaults.temperature))
    top_p = float(_number(payload, "top_p", 0.0, 1.0, False, 1.0))  # 0 keeps only the likeliest token
    top_k = _number(payload, "top_k", 0, TOP_K_MAX, True, defaults.top_k)
    n = payload.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise invalid("only n=1 is supported: send one request per choice", "n")
    max_name = "max_completion_tokens" if payload.get("max_tokens") is None else "max_tokens"
    max_tokens = _number(payload, max_name, 1, context_len, True, None)
    seed = _number(payload, "seed", 0, MAX_SEED, True, None)
    seed = secrets.randbelow(2**31) if seed is None else seed  # unseeded requests differ, like OpenAI's
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid("'stream' must be true or false", "stream", "invalid_type")
    options = payload.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid("'stream_options' must be an object", "stream_options", "invalid_type")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise invalid("'stream_options.include_usage' must be true or false", "stream_options.include_usage",
                      "invalid_type")
    model = payload.get("model") or ""  # "" = the server's model
    if not isinstance(model, str) or len(model) > 256:
        raise invalid("'model' must be a string: the id that /v1/models lists", "model", "invalid_type")
    stop = payload.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stop) > MAX_STOP_SEQUENCES or not all(0 < len(s) <= MAX_STOP_CHARS for s in stop):
        raise invalid(f"'stop' takes up to {MAX_STOP_SEQUENCES} non-empty strings of at most {MAX_STOP_CHARS} "
                      "characters", "stop")
    return Sampling(temperature, top_k, top_p, max_tokens, max_name, seed, stop, stream, include_usage, model)


def _request(prompt_ids: list[int], prompt_param: str, sampling: Sampling, context_len: int,
             defaults: SamplingDefaults, dropped: int = 0) -> ChatRequest:
    """Check that the prompt and the reply fit in the context, pick max_tokens if the client did not."""
    room, max_tokens, name = context_len - len(prompt_ids), sampling.max_tokens, sampling.max_name
    if max_tokens is None:
        if room < 1:
            raise invalid(f"the prompt is {len(prompt_ids):,} tokens, the model's context is {context_len:,}: "
                          "shorten it or start a new conversation", prompt_param, "context_length_exceeded")
        max_tokens = min(defaults.max_tokens, room)
    elif max_tokens > room:
        raise invalid(f"the prompt ({len(prompt_ids):,} tokens) plus {name}={max_tokens:,} is more than "
                      f"the model's context of {context_len:,} tokens: lower {name} or shorten the prompt",
                      name, "context_length_exceeded")
    return ChatRequest(prompt_ids, max_tokens, sampling.temperature, sampling.top_k, sampling.seed, sampling.stop,
                       sampling.stream, sampling.include_usage, sampling.model, top_p=sampling.top_p,
                       dropped_messages=dropped)


def fit_conversation(tokenizer, messages: list[dict], budget: int) -> tuple[list[int], int]:
    """Render `messages` for completion in at most `budget` tokens by leaving out the oldest
    user/assistant pairs; the system message and the last user turn always stay. Returns (ids,
    number of messages left out). If even the shortest form is over budget, that form is returned
    and the caller decides."""
    head = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(head):]  # user, assistant, ..., user

    def render(pairs: int) -> list[int]:
        return tokenizer.render_for_completion({"messages": head + turns[2 * pairs:]})

    ids = render(0)
    if len(ids) <= budget:
        return ids, 0
    lo, hi = 1, len(turns) // 2  # drop between 1 and all pairs; binary search the fewest that fit
    best = render(hi)
    while lo < hi and len(best) <= budget:
        mid = (lo + hi) // 2
        ids = render(mid)
        if len(ids) <= budget:
            hi, best = mid, ids
        else:
            lo = mid + 1
    return best, 2 * hi


def parse_chat_request(payload: Any, tokenizer, context_len: int, defaults: SamplingDefaults) -> ChatRequest:
    """Validate a decoded chat completions body; raises RequestError(400) naming the bad field.

    When the client leaves max_tokens out, the reply gets room: if the conversation leaves less
    than min(the default max_tokens, half the context), its oldest turns are left out (the system
    message and the last user turn stay) and `dropped_messages` says how many."""
    if not isinstance(payload, dict):
        raise invalid("the body must be a JSON object", None, "invalid_type")
    messages = parse_messages(payload.get("messages"))
    sampling = parse_sampling(payload, context_len, defaults)
    try:
        if sampling.max_tokens is None:
            reserve = min(defaults.max_tokens, context_len // 2)
            prompt_ids, dropped = fit_conversation(tokenizer, messages, context_len - reserve)
        else:
            prompt_ids, dropped = tokenizer.render_for_completion({"messages": messages}), 0
    except ValueError as e:  # the renderer's own checks, should ours ever miss one
        raise invalid(str(e), "messages") from None
    return _request(prompt_ids, "messages", sampling, context_len, defaults, dropped)


def parse_completion_request(payload: Any, tokenizer, context_len: int, defaults: SamplingDefaults) -> ChatRequest:
    """Validate a decoded text completions body (a base model continues `prompt`)."""
    if not isinstance(payload, dict):
        raise invalid("the body must be a JSON object", None, "invalid_type")
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:  # OpenAI clients may send a batch of one
        prompt = prompt[0]
    if prompt is None:
        raise invalid("'prompt' is required", "prompt", "missing_required_parameter")
    if not isinstance(prompt, str):
        raise invalid("'prompt' must be a string (one prompt per request)", "prompt", "invalid_type")
    if not prompt:
        raise invalid("'prompt' is empty", "prompt")
    if len(prompt) > MAX_TOTAL_CHARS:
        raise invalid(f"'prompt' has {len(prompt):,} characters, more than {MAX_TOTAL_CHARS:,}", "prompt")
    sampling = parse_sampling(payload, context_len, defaults)
    return _request(tokenizer.encode(prompt, prepend="<|bos|>"), "prompt", sampling, context_len, defaults)


# -------------------------------------------------------------------------------------------------
# Tokens -> text


class TextAssembler:
    """Turns the engine's tokens into text deltas: UTF-8 safe (via the engine's StreamDecoder),
    tool calls written with the calculator convention, stop strings cut out.

    feed(token) returns the text that is now final (possibly ""); finish() returns the tail. When
    `finish_reason` becomes "stop" (an end token or a stop string) the caller stops feeding."""

    def __init__(self, tokenizer, stop: list[str] | None = None):
        from nanochat.engine import StreamDecoder, ToolCallReader

        self.decoder = StreamDecoder(tokenizer)
        self.reader = ToolCallReader(tokenizer)  # the engine's reading of ends and tool calls
        self.stop = stop or []
        self.pending = ""  # text held back because it may be the start of a stop string
        self.finish_reason: str | None = None
        self.in_tool = False  # between "[calculator: " and "]"

    def feed(self, token: int) -> str:
        if self.finish_reason is not None:
            return ""
        kind = self.reader.read(token)
        if kind == "end":
            self.finish_reason = "stop"
            return self._release(self._close(), final=True)
        if kind in ("call", "output"):
            return self._release(self.decoder.feed(token))
        if kind == "text":
            if self.in_tool:  # a call with no output (should not happen): close it before going on
                return self._release(self._close() + self.decoder.feed(token))
            return self._release(self.decoder.feed(token))
        # a special token: whatever bytes were pending belong before it
        text = self.decoder.flush()
        if kind == "call_start":
            text += self._close() + TOOL_OPEN
            self.in_tool = True
        elif kind == "output_start" and self.in_tool:
            text += TOOL_EQUALS
        elif kind == "output_end" and self.in_tool:
            text += TOOL_CLOSE
            self.in_tool = False
        return self._release(text)

    def finish(self) -> str:
        """The tail: bytes held by the decoder, an unclosed tool call's bracket, held-back text."""
        if self.finish_reason == "stop":  # everything before the end was already released
            return ""
        return self._release(self._close(), final=True)

    def _close(self) -> str:
        text = self.decoder.flush()
        if self.in_tool:
            text += TOOL_CLOSE
        self.in_tool = False
        return text

    def _release(self, text: str, final: bool = False) -> str:
        if not self.stop:
            return text
        text = self.pending + text
        self.pending = ""
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.finish_reason = "stop"
            return text[: min(hits)]
        if not final:
            # hold back the longest tail that could still grow into a stop string
            keep = max((k for s in self.stop for k in range(min(len(s) - 1, len(text)), 0, -1)
                        if s.startswith(text[-k:])), default=0)
            if keep:
                self.pending = text[-keep:]
                return text[:-keep]
        return text


# -------------------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """Prometheus metrics in a registry of their own (one per app, so tests can build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("nanochat_requests_running", "requests generating on a replica", registry=r)
        self.waiting = Gauge("nanochat_requests_waiting", "requests queued for a free replica", registry=r)
        self.replicas = Gauge("nanochat_replicas", "engine replicas loaded", registry=r)
        self.kv_slots = Gauge("nanochat_kv_slots", "request slots (KV cache rows) over all replicas", registry=r)
        self.kv_slots_used = Gauge("nanochat_kv_slots_used", "request slots held by a generation", registry=r)
        self.rejected = Counter("nanochat_requests_rejected", "requests refused, by reason", ["reason"], registry=r)
        self.finished = Counter("nanochat_requests_finished", "generations that ended, by finish reason",
                                ["reason"], registry=r)
        self.ttft = Histogram("nanochat_time_to_first_token_seconds", "arrival to first generated token", registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.itl = Histogram("nanochat_inter_token_latency_seconds", "time between consecutive tokens", registry=r,
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.prompt_tokens = Counter("nanochat_prompt_tokens", "prompt tokens prefilled", registry=r)
        self.generated_tokens = Counter("nanochat_generated_tokens", "tokens generated (tool output included)",
                                        registry=r)
        latency = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
        self.e2e = Histogram("nanochat_e2e_request_latency_seconds", "arrival to the end of a finished generation",
                             registry=r, buckets=latency)
        self.queue_time = Histogram("nanochat_request_queue_time_seconds", "arrival to the start of generation",
                                    registry=r, buckets=(0.001,) + latency)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# -------------------------------------------------------------------------------------------------
# The worker pool


class Replica:
    """One engine and the thread that drives it.

    An engine with a static cache (nanochat.engine.Engine) gets a Scheduler of `slots` rows: its
    thread runs one batched decode step after another for every request it holds, and a request
    joins or leaves between two steps. Anything else with Engine.generate()'s signature (a stub in
    tests) serves one request at a time through generate()."""

    def __init__(self, engine: Any, name: str, slots: int, context_len: int):
        from nanochat.engine import Engine
        from nanochat.scheduler import Scheduler

        self.engine, self.name = engine, name
        self.scheduler = Scheduler(engine, slots, context_len) if isinstance(engine, Engine) else None
        self.capacity = slots if self.scheduler is not None else 1
        self.jobs: dict[Any, Job] = {}  # scheduler row -> its job; touched by this replica's thread only
        self.inbox: deque[Job] = deque()  # jobs handed over by the event loop
        self.wakeup = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None

    @property
    def slots_used(self) -> int:
        return len(self.jobs)


class Job:
    """One generation: events flow from the replica's thread to the event loop.

    Events: ("text", str) | ("finish", finish_reason, completion_tokens) | ("error", message)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request: ChatRequest, arrival: float):
        self.loop, self.request, self.arrival = loop, request, arrival
        self.cancelled = threading.Event()
        self._events: asyncio.Queue = asyncio.Queue()
        # the replica thread's view of the generation
        self.text: TextAssembler | None = None
        self.n_tokens = 0
        self.last = arrival

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, event: tuple) -> None:  # called from the replica thread
        try:
            self.loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    async def events(self) -> AsyncIterator[tuple]:
        while True:
            event = await self._events.get()
            yield event
            if event[0] != "text":
                return

    async def result(self) -> tuple[str, str | None, int, str | None]:
        """(text, finish_reason, completion_tokens, error) once the generation ends."""
        parts = []
        async for event in self.events():
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "finish":
                return "".join(parts), event[1], event[2], None
            else:
                return "".join(parts), None, 0, event[1]
        raise AssertionError("unreachable")


class WorkerPool:
    """Engine replicas, each with a thread of its own and `capacity` request slots, behind a
    bounded FIFO queue.

    Every method except the replica threads' work runs on the event loop, so there are no locks:
    `_free` (one entry per free slot) and `_waiters` are only touched there (threads hand slots
    back with call_soon_threadsafe)."""

    def __init__(self, queue_size: int, wait_timeout: float, metrics: Metrics, slots: int = 16):
        self.queue_size, self.wait_timeout, self.metrics, self.slots = queue_size, wait_timeout, metrics, slots
        self.replicas: list[Replica] = []
        self.tokenizer = None
        self.context_len = 0
        self.load_error: str | None = None
        self._free: list[Replica] = []
        self._waiters: deque[asyncio.Future] = deque()
        self._jobs: set[Job] = set()  # generating now (set.add/discard are atomic under the GIL)

    @property
    def ready(self) -> bool:
        return bool(self.replicas)

    def add_replicas(self, engines: list, tokenizer, context_len: int) -> None:
        self.tokenizer, self.context_len = tokenizer, context_len
        new = []
        for engine in engines:
            replica = Replica(engine, str(len(self.replicas)), self.slots, context_len)
            run = self._run_scheduler if replica.scheduler is not None else self._run_serial
            replica.thread = threading.Thread(target=run, args=(replica,), name=f"replica-{replica.name}", daemon=True)
            replica.thread.start()
            self.replicas.append(replica)
            new.append(replica)
        for i in range(max((r.capacity for r in new), default=0)):  # interleaved: requests spread over replicas
            for replica in new:
                if i < replica.capacity:
                    self.release(replica)
        self.metrics.replicas.set(len(self.replicas))
        self.metrics.kv_slots.set(sum(r.capacity for r in self.replicas))

    def release(self, replica: Replica) -> None:
        """Give back one slot of `replica`: to the first live waiter, else to the free list."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(replica)
                return
        self._free.append(replica)

    async def acquire(self, gone: asyncio.Future | None = None) -> Replica:
        """A replica with a free slot, waiting at most `wait_timeout` in FIFO order; 503
        RequestError when the queue is full or the wait runs out; ClientGone if `gone` completes first."""
        if self._free:
            return self._free.pop(0)
        if len(self._waiters) >= self.queue_size:
            self.metrics.rejected.labels("queue_full").inc()
            raise busy(f"the server is busy ({len(self._jobs)} request(s) generating, {len(self._waiters)} "
                       "request(s) waiting): retry shortly", "queue_full")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.metrics.waiting.inc()
        try:
            await asyncio.wait([waiter] + ([gone] if gone is not None else []), timeout=self.wait_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # handed to us just as we were cancelled
            raise
        finally:
            self.metrics.waiting.dec()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        if waiter.done():
            if gone is not None and gone.done():
                self.release(waiter.result())
                raise ClientGone()
            return waiter.result()
        waiter.cancel()
        if gone is not None and gone.done():
            raise ClientGone()
        self.metrics.rejected.labels("queue_timeout").inc()
        raise busy(f"no replica became free within {self.wait_timeout:g}s: the server is busy, retry shortly",
                   "queue_timeout")

    async def submit(self, request: ChatRequest, arrival: float, gone: asyncio.Future | None = None) -> Job:
        """Queue for a slot, then hand the job to that replica's thread."""
        replica = await self.acquire(gone)
        if replica.stopping:
            self.release(replica)
            raise busy("the server is shutting down", "shutting_down")
        job = Job(asyncio.get_running_loop(), request, arrival)
        self._jobs.add(job)
        self.metrics.running.inc()
        self.metrics.kv_slots_used.inc()
        replica.inbox.append(job)
        replica.wakeup.set()
        return job

    # --- on a replica's thread --------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        self.metrics.prompt_tokens.inc(len(job.request.prompt_ids))
        job.text = TextAssembler(self.tokenizer, job.request.stop)

    def _on_token(self, job: Job, token: int) -> bool:
        """Time, count and detokenize one generated token; True when the job wants no more."""
        now = time.perf_counter()
        (self.metrics.ttft if job.n_tokens == 0 else self.metrics.itl).observe(now - job.last)
        job.last = now
        job.n_tokens += 1
        self.metrics.generated_tokens.inc()
        delta = job.text.feed(token)
        if delta:
            job.emit(("text", delta))
        return bool(job.text.finish_reason) or job.cancelled.is_set()

    def _finish(self, replica: Replica, job: Job, finish_reason: str, error: str | None = None) -> None:
        """Tell the client how the job ended and give its slot back."""
        if finish_reason in ("stop", "length"):
            tail = job.text.finish()
            if tail:
                job.emit(("text", tail))
            finish_reason = job.text.finish_reason or finish_reason
        self._jobs.discard(job)
        m = self.metrics
        m.running.dec()
        m.kv_slots_used.dec()
        m.finished.labels(finish_reason).inc()
        try:
            job.loop.call_soon_threadsafe(self.release, replica)
        except RuntimeError:  # loop closed at shutdown
            pass
        if finish_reason in ("stop", "length"):
            job.emit(("finish", finish_reason, job.n_tokens))
        elif finish_reason == "error":
            job.emit(("error", error))
        elif finish_reason == "cancelled":  # only a server shutting down has a listener left to tell
            job.emit(("error", "the generation was cancelled: the server is shutting down"))

    def _run_scheduler(self, replica: Replica) -> None:
        """The replica's thread: admit new jobs, cancel gone ones, run one batched step, route tokens."""
        from nanochat.engine import SamplingParams

        scheduler = replica.scheduler
        while not replica.stopping:
            replica.wakeup.clear()
            while replica.inbox:
                job = replica.inbox.popleft()
                if job.cancelled.is_set():  # the client left while we were queued
                    self._finish(replica, job, "cancelled")
                    continue
                req = job.request
                self._start(job)
                params = SamplingParams(req.temperature, req.top_k, req.top_p, req.seed)
                try:
                    (row,) = scheduler.submit(req.prompt_ids, params, max_tokens=req.max_tokens)
                except ValueError as e:  # validation should have caught it; never let it stop the thread
                    self._finish(replica, job, "error", f"the request cannot be generated: {e}"[:500])
                    continue
                replica.jobs[row] = job
            for row, job in replica.jobs.items():
                if job.cancelled.is_set():
                    scheduler.cancel(row)
            if not scheduler.has_work():
                replica.wakeup.wait(1.0)
                continue
            try:
                events = scheduler.step()
            except Exception as e:  # never let one bad step take the replica down: fail its jobs, start afresh
                logger.exception("generation failed on replica %s", replica.name)
                for job in list(replica.jobs.values()):
                    self._finish(replica, job, "error", f"generation failed: {type(e).__name__}: {e}"[:500])
                replica.jobs.clear()
                replica.scheduler = scheduler = type(scheduler)(replica.engine, scheduler.slots, scheduler.max_len)
                continue
            done = {}  # row -> finish reason
            for row, token, _mask in events:
                job = replica.jobs[row]
                if self._on_token(job, token) and row.finish_reason is None:
                    scheduler.cancel(row)  # a stop string, or the client is gone: the slot frees at the next step
                    done[row] = "stop" if job.text.finish_reason else "cancelled"
            for row in replica.jobs:
                if row.finish_reason is not None and row not in done:  # finished, or cancelled before this step
                    done[row] = row.finish_reason
            for row, reason in done.items():
                job = replica.jobs.pop(row)
                self._finish(replica, job, "cancelled" if job.cancelled.is_set() else reason)

    def _run_serial(self, replica: Replica) -> None:
        """The replica's thread for a generate()-only engine: one job at a time."""
        while not replica.stopping:
            replica.wakeup.clear()
            if not replica.inbox:
                replica.wakeup.wait(1.0)
                continue
            job = replica.inbox.popleft()
            if job.cancelled.is_set():
                self._finish(replica, job, "cancelled")
                continue
            req, finish_reason, error, gen = job.request, "length", None, None
            self._start(job)
            try:
                gen = replica.engine.generate(req.prompt_ids, num_samples=1, max_tokens=req.max_tokens,
                                              temperature=req.temperature, top_k=req.top_k, seed=req.seed)
                for column, _masks in gen:
                    if self._on_token(job, column[0]):
                        break
            except Exception as e:
                logger.exception("generation failed on replica %s", replica.name)
                finish_reason, error = "error", f"generation failed: {type(e).__name__}: {e}"[:500]
            finally:
                if gen is not None:
                    gen.close()
            self._finish(replica, job, "cancelled" if job.cancelled.is_set() else finish_reason, error)

    def shutdown(self) -> None:
        """Stop every generation before its next step and let the replica threads go."""
        for job in list(self._jobs):
            job.cancel()
        for replica in self.replicas:
            replica.stopping = True
            replica.wakeup.set()


# -------------------------------------------------------------------------------------------------
# OpenAI response objects


@dataclass
class CompletionMeta:
    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str, prefix: str = "chatcmpl-") -> CompletionMeta:
        return cls(prefix + secrets.token_hex(12), int(time.time()), model)


def chunk(meta: CompletionMeta, delta: dict, finish_reason: str | None = None, usage: bool = False) -> dict:
    out = {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if usage:
        out["usage"] = None  # OpenAI: null on every chunk but the last when include_usage is set
    return out


def usage_chunk(meta: CompletionMeta, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
            "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(meta: CompletionMeta, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def text_chunk(meta: CompletionMeta, text: str, finish_reason: str | None = None, usage: bool = False) -> dict:
    """A streamed piece of a text completion (/v1/completions)."""
    out = {"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
           "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if usage:
        out["usage"] = None
    return out


def text_completion(meta: CompletionMeta, text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int) -> dict:
    return {**text_chunk(meta, text, finish_reason), "usage": usage(prompt_tokens, completion_tokens)}


def sse(obj: dict | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


# -------------------------------------------------------------------------------------------------
# The HTTP app


@dataclass
class ServerSettings:
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    queue_size: int = 16
    wait_timeout: float = 30.0
    slots: int = 16  # requests one replica generates at once (KV cache rows)
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    model_name: str = "nanochat"
    model_created: int = 0  # Unix time the checkpoint was written, for /v1/models
    # Host header names answered (lower case, no port); None = any. A server on loopback should
    # answer only to loopback names: otherwise a web page whose DNS name is rebound to 127.0.0.1
    # reaches the API from the user's own browser.
    allowed_hosts: frozenset[str] | None = None


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
JSON_TYPE = "application/json"


def host_name(header: str) -> str:
    """The name part of a Host header: "[::1]:8000" -> "::1", "LocalHost.:80" -> "localhost"."""
    header = header.strip().lower()
    if header.startswith("["):  # an IPv6 literal
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") <= 1 else header


class HostCheck:
    """ASGI middleware: a request whose Host header names another server gets 403 (DNS rebinding)."""

    def __init__(self, app, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host_name(host)[:100]
            if name not in self.allowed:
                error = RequestError(403, f"this server does not answer to the host name {name!r}: use "
                                     "http://localhost, or start chat_web with --host set to that name",
                                     code="invalid_host", type="permission_error")
                await JSONResponse(error.body(), status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestLog:
    """ASGI middleware: one log line per request once its response has ended, e.g.

        POST /v1/chat/completions 200 prompt=25 completion=16 ttft=0.041s total=0.212s

    Token counts and TTFT come from the handler (request.state); "-" where there are none, and
    "client gone" when the client hung up before the end. Polls (/health, /metrics) log at DEBUG."""

    QUIET = ("/health", "/metrics")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # 500 if the app fails before answering
        state = scope.setdefault("state", {})

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            ttft = state.get("ttft")
            line = (f"{scope['method']} {scope['path']} {status} prompt={state.get('prompt_tokens', '-')} "
                    f"completion={state.get('completion_tokens', '-')} "
                    f"ttft={'-' if ttft is None else f'{ttft:.3f}s'} total={time.perf_counter() - start:.3f}s")
            if state.get("client_gone"):
                line += " client gone"
            logger.log(logging.DEBUG if scope["path"] in self.QUIET else logging.INFO, line)


Loader = Callable[[], tuple[list, Any, int]]  # () -> (engines, tokenizer, context_len), run in a thread


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(413, f"the request body is larger than {limit:,} bytes", code="request_too_large")
    body = bytearray()
    try:
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise RequestError(413, f"the request body is larger than {limit:,} bytes", code="request_too_large")
    except ClientDisconnect:  # the client hung up mid-body: nothing to answer, nothing went wrong
        raise ClientGone() from None
    return bytes(body)


def _require_json(request: Request) -> None:
    """415 unless the body is declared as JSON. A browser sends a cross-origin POST without asking
    first (no CORS preflight) only with text/plain, form or multipart bodies: refusing those keeps
    any web page the user visits from driving the API."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != JSON_TYPE:
        raise RequestError(415, f"the body must be sent with 'Content-Type: {JSON_TYPE}', got "
                           f"{media_type[:100] or 'no Content-Type'!r}", code="unsupported_media_type")


async def _wait_disconnect(receive) -> None:
    """Completes when the client disconnects (call only after the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(settings: ServerSettings, loader: Loader) -> FastAPI:
    """The FastAPI app. `loader` runs in a thread after start-up; /health is 503 until it returns."""
    metrics = Metrics()
    pool = WorkerPool(settings.queue_size, settings.wait_timeout, metrics, settings.slots)

    async def load() -> None:
        try:
            engines, tokenizer, context_len = await asyncio.to_thread(loader)
        except Exception as e:
            logger.exception("loading the model failed")
            pool.load_error = f"{type(e).__name__}: {e}"
            return
        pool.add_replicas(engines, tokenizer, context_len)
        logger.info("ready: %d replica(s), context %d tokens", len(engines), context_len)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(load())
        yield
        task.cancel()
        pool.shutdown()

    app = FastAPI(title="nanochat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool, app.state.metrics = pool, metrics
    if settings.cors_origins:
        # explicit origins only, never "*" with credentials: the API key travels in a header
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    if settings.allowed_hosts is not None:  # after CORS: outside it, so nothing answers a foreign host
        app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    app.add_middleware(RequestLog)  # outermost: refused requests are logged too

    def error_response(e: RequestError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, e: RequestError):
        if e.status == 400:
            metrics.rejected.labels("invalid_request").inc()
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return error_response(RequestError(e.status_code, str(e.detail), type=kind, headers=dict(e.headers or {})))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, e: Exception):
        logger.exception("unexpected error")
        return error_response(RequestError(500, "internal server error", type="server_error"))

    def check_api_key(request: Request) -> None:
        if not settings.api_key:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            metrics.rejected.labels("unauthorized").inc()
            raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key", type="authentication_error",
                               headers={"WWW-Authenticate": "Bearer"})

    def require_ready() -> None:
        if not pool.ready:
            metrics.rejected.labels("not_ready").inc()
            if pool.load_error:
                raise RequestError(503, f"the model failed to load: {pool.load_error}", code="model_load_failed",
                                   type="server_error")
            raise busy("the model is still loading: retry shortly", "model_loading")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(UI_PATH.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        if not pool.ready:
            status = "error" if pool.load_error else "loading"
            return JSONResponse({"status": status, "error": pool.load_error}, status_code=503)
        return {"status": "ok", "replicas": len(pool.replicas), "context_len": pool.context_len,
                "model": settings.model_name}

    @app.get("/metrics")
    async def metrics_endpoint():
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    def model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": settings.model_created,
                "owned_by": "nanochat", "max_model_len": pool.context_len or None}

    def check_model(model: str) -> None:
        if model and model != settings.model_name:
            raise RequestError(404, f"the model {model[:100]!r} does not exist: this server serves "
                               f"{settings.model_name!r} (GET /v1/models)", param="model", code="model_not_found")

    @app.get("/v1/models")
    async def models(request: Request):
        check_api_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str):
        check_api_key(request)
        check_model(model_id or "?")
        return model_card()

    async def generate(request: Request, parse: Callable, chat: bool):
        """Chat and text completions: validate, queue, generate, answer (streaming or not)."""
        arrival = time.perf_counter()
        check_api_key(request)
        _require_json(request)
        try:
            body = await _read_body(request, MAX_BODY_BYTES)
        except ClientGone:
            request.state.client_gone = True
            return Response(status_code=499)
        require_ready()
        # tokenizing 100k characters takes a few ms: off the event loop too
        req = await asyncio.to_thread(parse, parse_json(body), pool.tokenizer, pool.context_len, settings.defaults)
        check_model(req.model)
        log = request.state  # what the request log line reports
        log.prompt_tokens = n_prompt = len(req.prompt_ids)
        meta = CompletionMeta.new(req.model or settings.model_name, "chatcmpl-" if chat else "cmpl-")
        # left-out turns are reported in a header: it reaches streaming and non-streaming clients alike
        headers = {"X-Nanochat-Dropped-Messages": str(req.dropped_messages)} if req.dropped_messages else {}
        gone = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            job = await pool.submit(req, arrival, gone)
        except ClientGone:
            log.client_gone = True
            return Response(status_code=499)
        except BaseException:
            gone.cancel()
            raise
        metrics.queue_time.observe(time.perf_counter() - arrival)
        gone.add_done_callback(lambda _: job.cancel())

        async def events():
            """The job's events, noting TTFT, the token count and the latency on the way."""
            async for event in job.events():
                if event[0] == "text" and not hasattr(log, "ttft"):
                    log.ttft = time.perf_counter() - arrival
                elif event[0] == "finish":
                    log.completion_tokens = event[2]
                    metrics.e2e.observe(time.perf_counter() - arrival)
                yield event

        def piece(text: str, finish_reason: str | None = None) -> dict:
            if chat:
                return chunk(meta, {"content": text} if text else {}, finish_reason, usage=req.include_usage)
            return text_chunk(meta, text, finish_reason, usage=req.include_usage)

        if not req.stream:
            parts, finish_reason, n_out, error = [], None, 0, None
            try:
                async for event in events():
                    if event[0] == "text":
                        parts.append(event[1])
                    elif event[0] == "finish":
                        _, finish_reason, n_out = event
                    else:
                        error = event[1]
            finally:
                log.client_gone = gone.done() and finish_reason is None
                job.cancel()
                gone.cancel()
            if error:
                raise RequestError(500, error, type="server_error")
            build = completion if chat else text_completion
            return JSONResponse(build(meta, "".join(parts), finish_reason, n_prompt, n_out), headers=headers)

        async def stream():
            finished = False
            try:
                if chat:
                    yield sse(chunk(meta, {"role": "assistant", "content": ""}, usage=req.include_usage))
                async for event in events():
                    if event[0] == "text":
                        yield sse(piece(event[1]))
                    elif event[0] == "finish":
                        finished = True
                        yield sse(piece("", event[1]))
                        if req.include_usage:
                            yield sse(usage_chunk(meta, n_prompt, event[2]) if chat else
                                      {**text_chunk(meta, ""), "choices": [], "usage": usage(n_prompt, event[2])})
                    else:
                        yield sse(RequestError(500, event[1], type="server_error").body())
                yield sse("[DONE]")
            finally:
                log.client_gone = not finished and gone.done()
                job.cancel()  # a disconnect cancels this generator: stop the replica at its next token
                gone.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, parse_chat_request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, parse_completion_request, chat=False)

    return app
