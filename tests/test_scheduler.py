"""Continuous batching: a row's tokens do not depend on its batch; rows join and leave at step bounds."""

import pytest
import torch

from nanochat.engine import Engine, SamplingParams
from nanochat.scheduler import Scheduler
from test_engine import build, sp

pytestmark = pytest.mark.usefixtures("one_thread")

GREEDY = SamplingParams(temperature=0.0)


def run(scheduler: Scheduler, max_steps: int = 500) -> None:
    for _ in range(max_steps):
        if not scheduler.has_work():
            return
        scheduler.step()
    raise AssertionError("the scheduler never ran out of work")


def prompts(n: int) -> list[list[int]]:
    """n prompts of different lengths and contents."""
    g = torch.Generator().manual_seed(3)
    return [torch.randint(32, 127, (1 + 3 * i % 17,), generator=g).tolist() for i in range(n)]


def test_greedy_row_is_the_same_alone_batched_and_in_the_reference(tok):
    model = build(tok)
    ps = prompts(16)
    budgets = [6 + (5 * i) % 13 for i in range(16)]
    alone = []
    for p, m in zip(ps, budgets):
        scheduler = Scheduler(Engine(model, tok), slots=1, max_len=64)
        (row,) = scheduler.submit(p, GREEDY, max_tokens=m)
        run(scheduler)
        alone.append(row.tokens)
    # all 16 together, half of them joining while the others are mid-generation
    scheduler = Scheduler(Engine(model, tok), slots=16, max_len=64)
    rows = [scheduler.submit(p, GREEDY, max_tokens=m)[0] for p, m in list(zip(ps, budgets))[:8]]
    for _ in range(3):
        scheduler.step()
    rows += [scheduler.submit(p, GREEDY, max_tokens=m)[0] for p, m in list(zip(ps, budgets))[8:]]
    run(scheduler)
    ends = {sp(tok, "assistant_end"), sp(tok, "bos")}
    for row, solo, p, m in zip(rows, alone, ps, budgets):
        assert row.tokens == solo
        ref = list(model.generate(p, max_tokens=len(solo), temperature=0.0))
        assert solo == ref
        assert row.finish_reason == ("stop" if solo[-1] in ends else "length") and (len(solo) == m or solo[-1] in ends)


def test_seeded_sample_is_the_same_alone_and_batched(tok):
    model = build(tok)
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, seed=1234)
    prompt = [40, 41, 42]
    scheduler = Scheduler(Engine(model, tok), slots=1, max_len=64)
    (alone,) = scheduler.submit(prompt, params, max_tokens=20)
    run(scheduler)
    scheduler = Scheduler(Engine(model, tok), slots=8, max_len=64)
    others = [scheduler.submit(p, SamplingParams(temperature=0.9, seed=i), max_tokens=25)[0]
              for i, p in enumerate(prompts(4))]
    scheduler.step()
    (batched,) = scheduler.submit(prompt, params, max_tokens=20)
    twins = scheduler.submit(prompt, params, max_tokens=20, n=3)  # n samples of one seed differ from each other
    run(scheduler)
    assert batched.tokens == alone.tokens
    assert twins[0].tokens == alone.tokens and len({tuple(r.tokens) for r in twins}) > 1
    assert all(r.finish_reason for r in others)


def test_cancel_frees_the_slot_within_one_step_and_a_waiting_request_joins(tok):
    model = build(tok)
    scheduler = Scheduler(Engine(model, tok), slots=2, max_len=64)
    a, = scheduler.submit([1, 2, 3], GREEDY, max_tokens=50)
    b, = scheduler.submit([4, 5], GREEDY, max_tokens=50)
    c, = scheduler.submit([6], GREEDY, max_tokens=3)
    scheduler.step()
    assert {a.slot, b.slot} == {0, 1} and c.slot is None and scheduler.num_waiting == 1  # no slot for c yet
    scheduler.cancel(a)
    events = scheduler.step()  # a leaves at the start of this step, c joins in it and emits its first token
    assert a.finish_reason == "cancelled" and a.slot is None and len(a.tokens) == 1
    assert [row for row, _, _ in events] == [b, c] and c.slot == 0
    run(scheduler)
    assert c.finish_reason == "length" and len(c.tokens) == 3
    assert not scheduler.running and scheduler.free == [0, 1]
    # cancelled while still waiting: never admitted
    d, = scheduler.submit([7], GREEDY, max_tokens=3)
    scheduler.cancel(d)
    run(scheduler)
    assert d.finish_reason == "cancelled" and d.tokens == []


def test_rows_keep_their_own_tool_state(tok):
    from test_engine import scripted
    py_start, py_end, out_end, end = sp(tok, "python_start"), sp(tok, "python_end"), sp(tok, "output_end"), \
        sp(tok, "assistant_end")
    q, z, two, plus, three = ord("?"), ord("z"), ord("2"), ord("+"), ord("3")
    model = scripted(tok, {q: [py_start], py_start: [two], two: [plus], plus: [three], three: [py_end],
                           out_end: [end], z: [z]})
    scheduler = Scheduler(Engine(model, tok), slots=2, max_len=32)
    plain, = scheduler.submit([z], GREEDY, max_tokens=10)
    scheduler.step()
    tool, = scheduler.submit([q], GREEDY, max_tokens=20)
    run(scheduler)
    assert tok.decode(tool.tokens) == "<|python_start|>2+3<|python_end|><|output_start|>5<|output_end|>" \
        "<|assistant_end|>"
    assert tool.masks == [1, 1, 1, 1, 1, 0, 0, 0, 1] and tool.finish_reason == "stop"
    assert plain.tokens == [z] * 10 and plain.finish_reason == "length"


def test_submit_checks_its_arguments(tok):
    scheduler = Scheduler(Engine(build(tok), tok), slots=2, max_len=16)
    for bad in (dict(prompt=[]), dict(prompt=[1] * 10, max_tokens=7), dict(prompt=[1], max_tokens=0),
                dict(prompt=[1], n=3), dict(prompt=[1], params=SamplingParams(top_p=1.5))):
        with pytest.raises(ValueError):
            scheduler.submit(**{"params": GREEDY, "max_tokens": 4, **bad})


# -------------------------------------------------------------------------------------------------
# The server's worker pool on a scheduler (no HTTP: the pool's own API on an event loop)


def test_worker_pool_batches_concurrent_requests_and_cancels(tok):
    import asyncio

    from nanochat.openai_api import ChatRequest
    from nanochat.worker_pool import Metrics, WorkerPool

    model = build(tok)
    steps_with = []  # how many rows each decode step carried
    engine = Engine(model, tok)
    decode = engine.decode
    engine.decode = lambda tokens, positions: steps_with.append(len(tokens)) or decode(tokens, positions)

    def request(max_tokens: int, seed: int) -> ChatRequest:
        return ChatRequest([40, 41, 42 + seed], max_tokens, 0.0, 0, seed, [], False, False, "m")

    async def main():
        metrics = Metrics()
        pool = WorkerPool(queue_size=4, wait_timeout=30.0, metrics=metrics, slots=4)
        pool.add_replicas([engine], tok, model.config.sequence_len)
        try:
            jobs = [await pool.submit(request(12, i), 0.0) for i in range(3)]
            long = await pool.submit(request(25, 9), 0.0)
            assert not pool._free  # four slots, four jobs
            results = [await job.result() for job in jobs]
            long.cancel()
            text, reason, n, error = await long.result()
            assert error or reason == "stop"  # cancelled mid-way: an error event (unless it had already ended)
            for _ in range(100):  # the slot comes back through the event loop
                if len(pool._free) == 4:
                    break
                await asyncio.sleep(0.05)
            assert len(pool._free) == 4 and metrics.kv_slots_used._value.get() == 0
            return results
        finally:
            pool.shutdown()

    results = asyncio.run(main())
    assert all(reason in ("stop", "length") and error is None for _, reason, _, error in results)
    assert max(steps_with) == 4  # the four requests decoded together
