"""The web chat's FastAPI app: routes, API key, Host and content-type checks, request logs. Request
validation and response objects live in nanochat/openai_api.py, the worker pool (generation
threads, text streaming, metrics) in nanochat/worker_pool.py. `scripts/chat_web.py` parses flags,
loads the model replicas and runs this app.

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
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from nanochat.openai_api import (MAX_BODY_BYTES, UI_PATH, ClientGone, CompletionMeta, RequestError, SamplingDefaults,
                                  busy, chunk, completion, parse_chat_request, parse_completion_request, parse_json,
                                  sse, text_chunk, text_completion, usage, usage_chunk)
from nanochat.worker_pool import Metrics, WorkerPool

logger = logging.getLogger("nanochat.serving")


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
