"""The web chat's bounded queue, deadlines and disconnects: the app in-process (uvicorn on a
thread) with a gated engine whose steps the test releases one by one, so queueing and disconnects
are tested by behaviour, never by timing."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from _http import (USER, GatedEngine, StreamingClient, call, chat, check_stream, load_tiny, metric, serve, wait_ready,
                   wait_until)
from nanochat.serving import ServerSettings, create_app


@pytest.fixture(scope="module")
def tiny(tiny_base_checkpoint):
    return load_tiny(tiny_base_checkpoint)


# -------------------------------------------------------------------------------------------------
# Queueing, deadlines and disconnects (in-process app, gated engine)


def gated_app(tiny, queue_size: int, wait_timeout: float):
    from nanochat.engine import Engine

    model, tokenizer = tiny
    engine = GatedEngine(Engine(model, tokenizer))
    app = create_app(ServerSettings(queue_size=queue_size, wait_timeout=wait_timeout),
                     lambda: ([engine], tokenizer, model.config.sequence_len))
    return app, engine


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
