"""The web server's generation side: each replica's thread runs the engine's scheduler
(nanochat/scheduler.py) behind a bounded FIFO queue, turns tokens into text deltas
(TextAssembler) and hands them to the event loop; plus the Prometheus metrics. See
nanochat/serving.py for how a request flows."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from nanochat.openai_api import TOOL_CLOSE, TOOL_EQUALS, TOOL_OPEN, ChatRequest, ClientGone, busy

logger = logging.getLogger("nanochat.serving")


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
