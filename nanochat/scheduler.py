"""Continuous batching: one scheduler per engine replica, one batched decode per step.

    scheduler = Scheduler(engine, slots=32, max_len=2048)
    row, = scheduler.submit(prompt_ids, SamplingParams(temperature=0.8, seed=1), max_tokens=256)
    while scheduler.has_work():
        for row, token, mask in scheduler.step():
            ...  # row.finish_reason is set on a row's last event

Each step: rows that finished or were cancelled have already left (their slots are free), every
running row decodes one token in one batched forward over the engine's cache, then waiting
requests join: each is prefilled into a free slot (a request for n samples is prefilled once and
copied into n slots) and samples its first token from the prefill's logits. A request that joins
in step s yields its first token in step s and decodes with the others from step s+1 on.

Every row has its own sampling params, seed, max_tokens and calculator state (engine.RowState),
and its noise depends only on (its seed, its token count, the token), so what a row generates does
not depend on who else is in the batch. submit() and cancel() may be called from any thread;
step() runs on one thread (the replica's).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from nanochat.engine import Engine, RowState, SamplingParams, row_seed, sample_tokens


@dataclass(eq=False)
class Row:
    """One sequence being generated. `tokens`/`masks` grow by one per event; `finish_reason` is
    "stop" (an end token), "length" (max_tokens) or "cancelled" once the row has left."""

    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    seed: int  # the noise seed: row_seed(params.seed, sample index)
    state: RowState
    tokens: list[int] = field(default_factory=list)
    masks: list[int] = field(default_factory=list)
    slot: int | None = None
    finish_reason: str | None = None
    cancelled: bool = False

    @property
    def position(self) -> int:
        """Where the last emitted token goes in the cache when it is decoded."""
        return len(self.prompt) + len(self.tokens) - 1


class Scheduler:
    """Rows in `slots` cache slots of `max_len` positions; FIFO admission when slots free up."""

    def __init__(self, engine: Engine, slots: int, max_len: int):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        engine.reserve(slots, max_len)
        self.engine, self.slots, self.max_len = engine, slots, max_len
        self.free = list(range(slots))  # ascending: the lowest slot first keeps the decode batch small
        self.running: dict[int, Row] = {}  # slot -> row
        self.waiting: deque[list[Row]] = deque()  # one entry per request (its n rows)
        self.wakeup = threading.Event()  # set by submit(): a thread waiting for work can go on

    # --- any thread -----------------------------------------------------------------------------

    def submit(self, prompt: list[int], params: SamplingParams, max_tokens: int, n: int = 1) -> list[Row]:
        """Queue a request for n samples; returns its rows (their events come from step())."""
        params.check()
        if not prompt:
            raise ValueError("the prompt must contain at least one token")
        if not 1 <= n <= self.slots:
            raise ValueError(f"n must be between 1 and the scheduler's {self.slots} slots, got {n}")
        if max_tokens < 1 or len(prompt) + max_tokens > self.max_len:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) must fit the "
                             f"{self.max_len} cache positions, with max_tokens >= 1")
        rows = [Row(list(prompt), params, max_tokens, row_seed(params.seed, i), RowState(self.engine.tokenizer))
                for i in range(n)]
        self.waiting.append(rows)
        self.wakeup.set()
        return rows

    def cancel(self, row: Row) -> None:
        """Stop a row: it leaves, and frees its slot, at the start of the next step."""
        row.cancelled = True

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def num_waiting(self) -> int:
        return sum(len(rows) for rows in list(self.waiting))

    # --- the replica's thread -------------------------------------------------------------------

    def step(self) -> list[tuple[Row, int, int]]:
        """Leave, decode, join. Returns the (row, token, mask) emitted this step."""
        for row in list(self.running.values()):
            if row.cancelled:
                self._leave(row, "cancelled")
        events = []
        if self.running:
            slots = sorted(self.running)
            n = slots[-1] + 1
            tokens, positions = [0] * n, [0] * n  # free slots below the highest busy one are padding
            for slot in slots:
                row = self.running[slot]
                tokens[slot], positions[slot] = row.tokens[-1], row.position
            logits = self.engine.decode(tokens, positions)  # (n, V)
            rows = [self.running[slot] for slot in slots]
            events += self._emit(rows, logits[slots])
        while self.waiting and len(self.waiting[0]) <= len(self.free):
            rows = self.waiting.popleft()
            if any(row.cancelled for row in rows):
                for row in rows:
                    row.finish_reason = "cancelled"
                continue
            for row in rows:
                row.slot = self.free.pop(0)
                self.running[row.slot] = row
            logits = self.engine.prefill(rows[0].slot, rows[0].prompt)  # (V,)
            if len(rows) > 1:
                self.engine.copy_slot(rows[0].slot, [row.slot for row in rows[1:]], len(rows[0].prompt))
            events += self._emit(rows, logits.expand(len(rows), -1))
        return events

    def _emit(self, rows: list[Row], logits) -> list[tuple[Row, int, int]]:
        sampled = sample_tokens(logits, [row.params for row in rows], [row.seed for row in rows],
                                [len(row.tokens) for row in rows])
        events = []
        for row, s in zip(rows, sampled):
            token, mask = row.state.next_token(s)
            row.state.push(token, mask)
            row.tokens.append(token)
            row.masks.append(mask)
            if row.state.done:
                self._leave(row, "stop")
            elif len(row.tokens) >= row.max_tokens:
                self._leave(row, "length")
            events.append((row, token, mask))
        return events

    def _leave(self, row: Row, reason: str) -> None:
        row.finish_reason = reason
        del self.running[row.slot]
        self.free.append(row.slot)
        self.free.sort()
        row.slot = None


def run_to_end(engine: Engine, requests: list[tuple[list[int], SamplingParams, int, int]],
               slots: int = 64) -> list[list[Row]]:
    """Generate every request (prompt, params, max_tokens, n) with continuous batching over at most
    `slots` cache rows, admitted in order; returns each request's n finished rows. For offline
    work (evaluation, RL rollouts): a row's tokens are what it would generate alone."""
    if not requests:
        return []
    max_len = max(len(prompt) + max_tokens for prompt, _, max_tokens, _ in requests)
    slots = max(min(slots, sum(n for *_, n in requests)), max(n for *_, n in requests))
    scheduler = Scheduler(engine, slots, max_len)
    out = [scheduler.submit(prompt, params, max_tokens, n) for prompt, params, max_tokens, n in requests]
    while scheduler.has_work():
        scheduler.step()
    return out
