"""The web chat's API: OpenAI wire format, validation, start-up, API key, CORS, UTF-8 streaming and
the tool-call convention.

Two kinds of server: the real script (`python -m scripts.chat_web` in a subprocess, on the tiny
base checkpoint) for the end-to-end behaviour, and the same app in-process (uvicorn on a thread)
with a scripted engine."""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _http import (USER, ScriptedEngine, byte_tokens, call, chat, chat_web, check_stream, load_tiny, metric,
                   scripted_tokens, serve, sse_frames, wait_ready, wait_until)
from nanochat.openai_api import MAX_BODY_BYTES, MAX_MESSAGE_CHARS, MAX_MESSAGES, MAX_TOTAL_CHARS, SamplingDefaults
from nanochat.serving import ServerSettings, create_app
from nanochat.worker_pool import TextAssembler


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chat_web") / "server.log"


@pytest.fixture(scope="module")
def server(tiny_base_checkpoint, server_log):
    """The real script on the tiny base checkpoint (a 64-token context), queue of 4, default
    max_tokens 16, logging every request (the /health polls too)."""
    with chat_web(tiny_base_checkpoint, server_log, "--queue-size=4", "--max-tokens=16", "--log-level=debug") as addr:
        yield addr


@pytest.fixture(scope="module")
def tiny(tiny_base_checkpoint):
    return load_tiny(tiny_base_checkpoint)


# -------------------------------------------------------------------------------------------------
# The wire format (real server)


def served_model(addr: str) -> str:
    return json.loads(call(addr, "GET", "/v1/models")[2])["data"][0]["id"]


def test_streaming_format(server):
    model = served_model(server)
    status, headers, raw = chat(server, {"messages": [USER], "stream": True, "stream_options": {"include_usage": True},
                                         "max_tokens": 8, "seed": 1, "model": model})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    text, finish, usage = check_stream(raw, include_usage=True)
    assert usage["completion_tokens"] <= 8 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert json.loads(sse_frames(raw)[0])["model"] == model
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
    status, _, raw = chat(server, big, headers={"Content-Type": "application/json"})
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


def test_only_json_bodies_are_served(server):
    # a cross-origin "simple request" (text/plain, no preflight) must not drive the API
    body = json.dumps({"messages": [USER], "max_tokens": 1}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Origin": "http://evil.example"} | ({"Content-Type": content_type} if content_type else {})
        status, _, raw = chat(server, body, headers=headers)
        assert status == 415, (content_type, raw[:200])
        error = json.loads(raw)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "unsupported_media_type"
        assert "application/json" in error["message"]
    status, _, _ = chat(server, body, headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert status == 200


def test_only_loopback_host_names_are_answered(server):
    port = server.split(":")[1]
    for host in ("evil.example", f"evil.example:{port}", f"192.168.1.5:{port}", "localhost.evil.example"):
        for method, path, body in (("GET", "/", None), ("GET", "/health", None),
                                   ("POST", "/v1/chat/completions", {"messages": [USER], "max_tokens": 1})):
            status, _, raw = call(server, method, path, body, headers={"Host": host})
            assert status == 403, (host, path, raw[:200])
            assert json.loads(raw)["error"]["code"] == "invalid_host"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert call(server, "GET", "/health", headers={"Host": host})[0] == 200, host


def test_client_dropping_mid_body_is_not_an_error(server, server_log):
    host, port = server.split(":")
    for _ in range(2):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"messages\": [")
    # each is logged as one line, without a traceback; the server carries on
    wait_until(lambda: server_log.read_text().count("POST /v1/chat/completions 499") >= 2, "the log lines")
    assert chat(server, {"messages": [USER], "max_tokens": 1})[0] == 200
    log = server_log.read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def test_one_log_line_per_request_and_latency_histograms(server, server_log):
    status, _, body = chat(server, {"messages": [USER], "max_tokens": 3, "temperature": 0})
    n = json.loads(body)["usage"]
    status, _, raw = chat(server, {"messages": [USER], "max_tokens": 3, "temperature": 0, "stream": True})
    line = (rf"POST /v1/chat/completions 200 prompt={n['prompt_tokens']} completion={n['completion_tokens']} "
            r"ttft=\d+\.\d{3}s total=\d+\.\d{3}s$")
    wait_until(lambda: len(re.findall(line, server_log.read_text(), re.M)) >= 2, "two request log lines")
    call(server, "GET", "/no/such/page")
    wait_until(lambda: re.search(r"GET /no/such/page 404 prompt=- completion=- ttft=- total=\S+s$",
                                 server_log.read_text(), re.M), "the 404's log line")
    assert re.search(r"GET /health 200 ", server_log.read_text())  # polls show at --log-level=debug
    for name in ("nanochat_e2e_request_latency_seconds", "nanochat_request_queue_time_seconds"):
        assert metric(server, name + "_count") >= 2 and metric(server, name + "_bucket", '{le="+Inf"}') >= 2


def long_conversation(pairs: int) -> list[dict]:
    """A system message, `pairs` question/answer pairs of about 10 tokens each (words the tiny
    tokenizer knows), and a last question."""
    messages = [{"role": "system", "content": "be brief"}]
    for number in "one two three four five six seven eight".split()[:pairs]:
        messages += [{"role": "user", "content": f"{number} cat sat on the mat"},
                     {"role": "assistant", "content": f"{number} dog ran under the rug"}]
    return messages + [{"role": "user", "content": "and then it was happy"}]


def test_long_conversation_leaves_out_the_oldest_turns(server):
    # context 64, --max-tokens=16: without max_tokens the reply is owed 16 tokens, so the prompt may
    # use 48; six pairs are far more
    messages = long_conversation(6)
    for stream in (False, True):
        status, headers, raw = chat(server, {"messages": messages, "stream": stream,
                                             "stream_options": {"include_usage": True} if stream else None})
        assert status == 200, raw[:300]
        dropped = int(headers["x-nanochat-dropped-messages"])
        assert dropped >= 2 and dropped % 2 == 0 and dropped < 12  # not all of them
        n = check_stream(raw, include_usage=True)[2] if stream else json.loads(raw)["usage"]
        assert n["prompt_tokens"] <= 48 and n["completion_tokens"] <= 16
    # a conversation that fits says nothing; an explicit max_tokens is never trimmed for
    status, headers, _ = chat(server, {"messages": long_conversation(0)})
    assert status == 200 and "x-nanochat-dropped-messages" not in headers
    status, _, raw = chat(server, {"messages": messages, "max_tokens": 8})
    assert status == 400 and json.loads(raw)["error"]["code"] == "context_length_exceeded"


def test_fit_conversation_keeps_system_and_last_turn(tiny):
    from nanochat.openai_api import fit_conversation

    _, tokenizer = tiny
    messages = long_conversation(6)
    full = tokenizer.render_for_completion({"messages": messages})
    for budget in (len(full), len(full) - 1, 60, 40, 20, 10):
        ids, dropped = fit_conversation(tokenizer, messages, budget)
        kept = messages[:1] + messages[1 + dropped:]
        assert ids == tokenizer.render_for_completion({"messages": kept})
        text = tokenizer.decode(ids)
        assert "be brief" in text and "and then it was happy" in text
        if len(ids) <= budget:  # the fewest pairs left out: one pair fewer would not fit
            assert dropped == 0 or len(tokenizer.render_for_completion(
                {"messages": messages[:1] + messages[dropped - 1:]})) > budget
        else:  # nothing more to leave out: the shortest form, over budget
            assert dropped == 12 and "cat" not in text
    assert fit_conversation(tokenizer, messages, 10)[1] == 12


UNSUPPORTED = {"logprobs": True, "top_logprobs": 3, "tools": [{"type": "function", "function": {"name": "f"}}],
               "tool_choice": "required", "response_format": {"type": "json_object"}, "presence_penalty": 0.5,
               "frequency_penalty": -1, "logit_bias": {"50": 10}}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_parameters_are_refused_by_name(server, name):
    status, _, raw = chat(server, {"messages": [USER], "max_tokens": 1, name: UNSUPPORTED[name]})
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == name and error["code"] == "unsupported_parameter"
    assert name in error["message"]


def test_off_values_of_unsupported_parameters_are_accepted(server):
    payload = {"messages": [USER], "max_tokens": 1, "logprobs": False, "tools": [], "tool_choice": "none",
               "response_format": {"type": "text"}, "presence_penalty": 0, "frequency_penalty": 0.0}
    assert chat(server, payload)[0] == 200


def test_model_ids(server):
    model = served_model(server)
    status, _, body = call(server, "GET", f"/v1/models/{model}")
    card = json.loads(body)
    assert status == 200 and card["id"] == model and card["object"] == "model" and card["max_model_len"] == 64
    assert abs(card["created"] - time.time()) < 86400  # the checkpoint's time, written by this test session
    assert json.loads(call(server, "GET", "/v1/models")[2])["data"] == [card]
    status, _, body = call(server, "GET", "/v1/models/gpt-4o")
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
    # chat and text completions take the listed id (or none); another id is 404, as vLLM answers
    for path, payload in (("/v1/chat/completions", {"messages": [USER]}), ("/v1/completions", {"prompt": "the"})):
        assert call(server, "POST", path, {**payload, "max_tokens": 1, "model": model})[0] == 200
        status, _, body = call(server, "POST", path, {**payload, "max_tokens": 1, "model": "gpt-4o"})
        error = json.loads(body)["error"]
        assert status == 404 and error["code"] == "model_not_found" and error["param"] == "model"
        assert model in error["message"]


def test_text_completions(server, tiny):
    payload = {"prompt": "the cat sat on", "max_tokens": 6, "temperature": 0}
    status, _, body = call(server, "POST", "/v1/completions", payload)
    out = json.loads(body)
    assert status == 200 and out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    choice = out["choices"][0]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
    assert choice["finish_reason"] in ("stop", "length")
    assert out["usage"]["prompt_tokens"] == 1 + len(tiny[1].encode("the cat sat on"))  # <|bos|> first
    # streaming: the same text in pieces, the finish reason last, then the usage
    status, headers, raw = call(server, "POST", "/v1/completions",
                                {**payload, "prompt": ["the cat sat on"], "stream": True,
                                 "stream_options": {"include_usage": True}})
    frames = sse_frames(raw)
    assert status == 200 and frames[-1] == b"[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks) and len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == choice["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == out["usage"]
    # bad prompts name the field
    for bad in ({}, {"prompt": ""}, {"prompt": 5}, {"prompt": ["a", "b"]}, {"prompt": "the cat " * 60},
                {"prompt": "x", "logprobs": 2}, {"prompt": "x", "echo": True}):
        status, _, body = call(server, "POST", "/v1/completions", bad)
        assert status == 400 and json.loads(body)["error"]["param"] in ("prompt", "logprobs", "echo"), bad


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
    assert status in (200, 400, 404), raw[:300]
    if status == 404:  # only a model id this server does not serve
        assert isinstance(payload.get("model"), str) and json.loads(raw)["error"]["code"] == "model_not_found"
    elif status == 400:
        assert json.loads(raw)["error"]["message"]
    elif payload.get("stream") is True:
        check_stream(raw, include_usage=bool((payload.get("stream_options") or {}).get("include_usage")))


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
    from nanochat.openai_api import RequestError, parse_chat_request

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


def test_port_in_use_is_one_sentence(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = {"PATH": "/usr/bin:/bin", "NANOCHAT_BASE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "scripts.chat_web", "--device-type=cpu", f"--port={port}"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (f"chat_web: cannot listen on 127.0.0.1:{port} (Address already in use): "
                                   "stop whatever uses that port or pick another with --port")
