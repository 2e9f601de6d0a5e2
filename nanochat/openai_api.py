"""The OpenAI-compatible API's requests and responses: limits, validation of chat and text
completion bodies (400s that name the bad field), the reply budget that fits a long conversation
into the context, and the response/chunk objects. No I/O here: nanochat/serving.py calls it."""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
