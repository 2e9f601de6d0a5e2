"""Engine ↔ GPT.generate, the static cache, device sampling, independent rows, stopping, tool forcing,
the tool-call reader, StreamDecoder."""

import pytest
import torch

import nanochat.engine as engine_module
from nanochat.engine import Engine, RowState, SamplingParams, StreamDecoder, ToolCallReader, sample_tokens
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer

TINY = dict(sequence_len=32, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)

pytestmark = pytest.mark.usefixtures("one_thread")


def build(tok: Tokenizer, seed: int = 0, **overrides) -> GPT:
    """A tiny model with every weight random (the zero-initialised projections and head too, so the
    logits are not all equal and attention matters)."""
    torch.manual_seed(seed)
    # built directly on the CPU: the meta-device path imports torch._dynamo (seconds) on first use
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **{**TINY, **overrides}))
    model.init_weights()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.transformer.h:
            for w in (block.attn.c_proj.weight, block.mlp.c_proj.weight):
                w.copy_(torch.randn(w.shape, generator=g) * 0.05)
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=g) * 0.3)
    return model.eval()


def scripted(tok: Tokenizer, table: dict[int, list[int]], seed: int = 0, **overrides) -> GPT:
    """A real model whose greedy next token depends only on the current token: table[t] lists the
    tokens that follow t (several = equally likely). The blocks are made identities (zero output
    projections), the embeddings are random directions and each head row sums the directions of the
    tokens it should follow, so logit(j | t) ≈ 8·scale if j follows t and |noise| ≲ 3·scale if not."""
    model = build(tok, seed, **overrides)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight.zero_()
            block.mlp.c_proj.weight.zero_()
        emb = model.transformer.wte.weight
        unit = emb / emb.norm(dim=1, keepdim=True)  # (V, C)
        head = torch.zeros_like(model.lm_head.weight)  # (V, C)
        for t, nexts in table.items():
            for j in nexts:
                head[j] += 4.0 * unit[t]
        model.lm_head.weight.copy_(head)
    return model


def sp(tok: Tokenizer, name: str) -> int:
    return tok.encode_special(f"<|{name}|>")


# -------------------------------------------------------------------------------------------------
# Engine ↔ the slow reference


@pytest.mark.parametrize("prompt_len", [1, 7])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_greedy_matches_reference(tok, prompt_len, num_samples):
    model = build(tok)
    prompt = list(range(40, 40 + prompt_len))
    ref = list(model.generate(prompt, max_tokens=20, temperature=0.0))
    seqs, masks = Engine(model, tok).generate_batch(prompt, num_samples=num_samples, max_tokens=20, temperature=0.0)
    stops = {sp(tok, "assistant_end"), sp(tok, "bos")}
    for seq, mask in zip(seqs, masks):
        completion = seq[len(prompt):]
        assert seq[:len(prompt)] == prompt
        assert mask == [0] * len(prompt) + [1] * len(completion)
        # the reference does not stop at stop tokens: compare up to the engine's stop
        assert completion == ref[:len(completion)]
        assert len(completion) == 20 or ref[len(completion)] in stops


def test_streaming_columns(tok):
    model = build(tok)
    steps = list(Engine(model, tok).generate([1, 2, 3], num_samples=2, max_tokens=5, temperature=0.0))
    assert len(steps) == 5 or steps[-1][0][0] in {sp(tok, "assistant_end"), sp(tok, "bos")}
    assert all(len(col) == 2 and masks == [1, 1] and col[0] == col[1] for col, masks in steps)


def test_runs_to_the_rotary_end_past_the_window(tok):
    # sequence_len 8: the rotary table has 80 positions, and max_tokens None runs to its end
    model = build(tok, sequence_len=8)
    prompt = [5, 6, 7]
    engine = Engine(model, tok)
    out = [col[0] for col, _ in engine.generate(prompt, max_tokens=None, temperature=0.0)]
    ref = list(model.generate(prompt, max_tokens=len(out), temperature=0.0))
    assert out == ref
    assert len(out) == 80 - len(prompt) or out[-1] in {sp(tok, "assistant_end"), sp(tok, "bos")}
    assert len(out) > 30, "the random model stopped too early to cross several length buckets"
    assert engine.max_len == 80


def test_chunked_prefill_matches_reference(tok, monkeypatch):
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 3)  # a 10-token prompt in chunks of 3, 3, 3, 1
    model = build(tok)
    prompt = list(range(60, 70))
    ref = list(model.generate(prompt, max_tokens=12, temperature=0.0))
    seqs, _ = Engine(model, tok).generate_batch(prompt, max_tokens=12, temperature=0.0)
    completion = seqs[0][len(prompt):]
    assert completion == ref[:len(completion)] and len(completion) > 3


def test_generate_arguments_are_checked_eagerly(tok):
    engine = Engine(build(tok), tok)
    for bad in (dict(tokens=[]), dict(tokens=[10**6]), dict(tokens=[1], num_samples=0),
                dict(tokens=[1], temperature=-1.0), dict(tokens=[1], max_tokens=-1),
                dict(tokens=list(range(200)) * 2)):
        with pytest.raises(ValueError):
            engine.generate(**bad)
    assert list(engine.generate([1], max_tokens=0)) == []


# -------------------------------------------------------------------------------------------------
# Sampling


def test_rows_sample_independently_and_seed_reproduces(tok):
    model = build(tok)
    engine = Engine(model, tok)
    prompt = [10, 20, 30]
    a, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=12, temperature=1.0, seed=7)
    b, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=12, temperature=1.0, seed=7)
    c, _ = engine.generate_batch(prompt, num_samples=4, max_tokens=12, temperature=1.0, seed=8)
    assert a == b
    assert a != c
    assert len({tuple(s) for s in a}) == 4  # every row its own sample
    assert len({s[len(prompt)] for s in a}) > 1  # ... the first token included
    # top-k 1 is greedy whatever the temperature
    greedy, _ = engine.generate_batch(prompt, num_samples=2, max_tokens=12, temperature=0.0)
    top1, _ = engine.generate_batch(prompt, num_samples=2, max_tokens=12, temperature=1.5, top_k=1)
    assert top1 == greedy


def test_rows_stop_independently_at_assistant_end(tok):
    a, b, end = ord("a"), ord("b"), sp(tok, "assistant_end")
    # after 'a': 'b' or <|assistant_end|> with equal odds; 'b' is followed by 'b' forever
    model = scripted(tok, {a: [b, end], b: [b]})
    steps = list(Engine(model, tok).generate([a], num_samples=8, max_tokens=6, temperature=0.3, seed=0))
    assert len(steps) == 6  # some rows never stop
    first = steps[0][0]
    assert set(first) == {b, end}
    for i, t in enumerate(first):
        if t == end:  # stopped rows pad with their terminal token, mask 0
            assert steps[0][1][i] == 1
            assert all(col[i] == end and masks[i] == 0 for col, masks in steps[1:])
        else:
            assert all(col[i] == b and masks[i] == 1 for col, masks in steps[1:])
    seqs, _ = Engine(model, tok).generate_batch([a], num_samples=8, max_tokens=6, temperature=0.3, seed=0)
    assert sorted(len(s) for s in seqs) == sorted(1 if t == end else 7 for t in first)
    # when every row stops the generator ends before max_tokens
    model = scripted(tok, {a: [end]})
    assert len(list(Engine(model, tok).generate([a], num_samples=3, max_tokens=10, temperature=0.0))) == 1


def test_bos_stops_too(tok):
    a, bos = ord("a"), sp(tok, "bos")
    model = scripted(tok, {a: [bos]})
    seqs, masks = Engine(model, tok).generate_batch([a], max_tokens=5, temperature=0.0)
    assert seqs == [[a]] and masks == [[0]]


def test_close_early_is_safe(tok):
    gen = Engine(build(tok), tok).generate([1, 2], num_samples=2, max_tokens=50, temperature=1.0)
    next(gen)
    next(gen)
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)


# -------------------------------------------------------------------------------------------------
# Tool use


def test_tool_call_forces_calculator_output(tok):
    py_start, py_end = sp(tok, "python_start"), sp(tok, "python_end")
    out_start, out_end, end = sp(tok, "output_start"), sp(tok, "output_end"), sp(tok, "assistant_end")
    q, two, plus, three, x = ord("?"), ord("2"), ord("+"), ord("3"), ord("x")
    # ? -> <|python_start|> 2 + 3 <|python_end|> ... (forced output) ... <|output_end|> -> x -> end
    model = scripted(tok, {q: [py_start], py_start: [two], two: [plus], plus: [three], three: [py_end],
                           out_end: [x], x: [end]})
    steps = list(Engine(model, tok).generate([q], num_samples=2, max_tokens=20, temperature=0.0))
    for row in range(2):
        tokens = [col[row] for col, _ in steps]
        masks = [m[row] for _, m in steps]
        assert tokens == [py_start, two, plus, three, py_end, out_start, ord("5"), out_end, x, end]
        assert masks == [1, 1, 1, 1, 1, 0, 0, 0, 1, 1]
    seqs, masks = Engine(model, tok).generate_batch([q], max_tokens=20, temperature=0.0)
    assert tok.decode(seqs[0]) == "?<|python_start|>2+3<|python_end|><|output_start|>5<|output_end|>x"
    assert masks[0] == [0, 1, 1, 1, 1, 1, 0, 0, 0, 1]


def test_tool_output_goes_only_into_the_calling_row(tok):
    py_start, py_end, out_start = sp(tok, "python_start"), sp(tok, "python_end"), sp(tok, "output_start")
    end = sp(tok, "assistant_end")
    q, z, nine = ord("?"), ord("z"), ord("9")
    # after '?': a tool call "9" or plain 'z'; both paths end
    model = scripted(tok, {q: [py_start, z], py_start: [nine], nine: [py_end], z: [end], sp(tok, "output_end"): [end]})
    seqs, masks = Engine(model, tok).generate_batch([q], num_samples=8, max_tokens=10, temperature=0.3, seed=1)
    kinds = set()
    for seq, mask in zip(seqs, masks):
        text = tok.decode(seq)
        if seq[1] == py_start:
            kinds.add("tool")
            assert text == "?<|python_start|>9<|python_end|><|output_start|>9<|output_end|>"
            assert mask == [0, 1, 1, 1, 0, 0, 0]
        else:
            kinds.add("text")
            assert seq == [q, z] and out_start not in seq and mask == [0, 1]
    assert kinds == {"tool", "text"}


def test_row_state_machine(tok):
    row = RowState(tok)
    py_start, py_end = sp(tok, "python_start"), sp(tok, "python_end")
    out_start, out_end = sp(tok, "output_start"), sp(tok, "output_end")
    for t in tok.encode("hi "):
        row.push(t)
    assert not row.forced and row.reader.call is None
    row.push(py_start)
    for t in tok.encode("'a,b'.count(',') + 1,000"):
        row.push(t)
    row.push(py_end)
    forced = list(row.forced)
    assert forced == [out_start] + tok.encode("1001") + [out_end]
    # forced tokens come before the model's sample, with mask 0, and do not start new calls
    emitted = []
    while row.forced:
        token, mask = row.next_token(sampled=123)
        row.push(token, mask)
        emitted.append((token, mask))
    assert emitted == [(t, 0) for t in forced]
    assert row.next_token(sampled=123) == (123, 1)
    # a calculator error is forced like any result; the engine never raises
    row.push(py_start)
    for t in tok.encode("__import__('os')"):
        row.push(t)
    row.push(py_end)
    assert tok.decode(list(row.forced)).startswith("<|output_start|>error:")
    # <|python_end|> outside a call does nothing; stop tokens end the row
    fresh = RowState(tok)
    fresh.push(py_end)
    assert not fresh.forced
    fresh.push(sp(tok, "assistant_end"))
    assert fresh.done and fresh.terminal == sp(tok, "assistant_end")


def test_tool_call_reader_kinds(tok):
    reader = ToolCallReader(tok)
    ids = tok.encode("a") + [sp(tok, "python_start")] + tok.encode("1+1") + [sp(tok, "python_end"),
          sp(tok, "output_start")] + tok.encode("2") + [sp(tok, "output_end"), sp(tok, "user_start"),
          sp(tok, "python_end"), sp(tok, "assistant_end")]
    kinds = [reader.read(t) for t in ids]
    assert kinds == ["text", "call_start", "call", "call", "call", "call_end", "output_start", "output",
                     "output_end", "special", "special", "end"]  # a <|python_end|> outside a call is just special
    assert tok.decode(reader.expr_ids) == "1+1" and tok.decode(reader.result_ids) == "2"


# -------------------------------------------------------------------------------------------------
# Device sampling


def test_sample_tokens_respects_top_k_top_p_and_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(3, -1)  # (3, 4)
    params = [SamplingParams(temperature=1.0, top_k=2), SamplingParams(temperature=1.0, top_p=0.7),
              SamplingParams(temperature=0.0)]
    seen = [set() for _ in params]
    counts = torch.zeros(4)
    for counter in range(400):
        ids = sample_tokens(logits, params, seeds=[1, 2, 3], counters=[counter] * 3)
        for s, i in zip(seen, ids):
            s.add(i)
        counts[sample_tokens(logits[:1], [SamplingParams()], [7], [counter])[0]] += 1
    assert seen == [{0, 1}, {0, 1}, {0}]  # top-k 2; top-p 0.7 needs 0.5 + 0.3; greedy
    assert torch.allclose(counts / counts.sum(), torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.08)  # a real sample
    # the noise is a function of (seed, counter): same inputs, same ids; the rows do not interact
    a = sample_tokens(logits, [SamplingParams()] * 3, [5, 6, 7], [9, 9, 9])
    assert a == sample_tokens(logits, [SamplingParams()] * 3, [5, 6, 7], [9, 9, 9])
    assert a[1] == sample_tokens(logits[:1], [SamplingParams()], [6], [9])[0]
    # the full sort (top-k off over a large vocab) and torch.topk agree where the winner is in both
    peaked = torch.randn(4, 2000, generator=torch.Generator().manual_seed(0)) * 8  # (4, V)
    for counter in range(5):
        full = sample_tokens(peaked, [SamplingParams(top_k=0)] * 4, [1, 2, 3, 4], [counter] * 4)
        assert full == sample_tokens(peaked, [SamplingParams(top_k=1000)] * 4, [1, 2, 3, 4], [counter] * 4)


# -------------------------------------------------------------------------------------------------
# StreamDecoder


def test_stream_decoder_holds_back_split_characters(tok):
    text = "héllo 世界 🙂!"
    ids = tok.encode(text)  # byte-level: every multi-byte character spans several tokens
    assert len(ids) == len(text.encode())
    dec = StreamDecoder(tok)
    pieces = [dec.feed(t) for t in ids]
    assert "".join(pieces) + dec.flush() == text
    assert all("\ufffd" not in p for p in pieces)
    emoji = "🙂".encode()
    dec = StreamDecoder(tok)
    assert dec.feed(list(emoji[:3])) == ""  # incomplete: held back
    assert dec.feed(emoji[3]) == "🙂"
    assert dec.feed(list("é".encode())[:1]) == ""
    assert dec.flush() == "\ufffd"  # a stream that ends mid-character
    assert dec.feed(ord("a")) == "a"  # flush reset it
    assert StreamDecoder(tok).feed(0xFF) == "\ufffd"  # invalid byte


def test_bf16_engine_casts_once_and_follows_training(tok):
    model = build(tok)
    prompt = [40, 41, 42]
    engine = Engine(model, tok, dtype=torch.bfloat16)
    seqs, _ = engine.generate_batch(prompt, max_tokens=8, temperature=0.0)
    assert engine.k_cache.dtype == torch.bfloat16 and engine.weights()["lm_head"].dtype == torch.bfloat16
    # an in-place update (an optimizer step) reaches the cast copy; a fresh engine agrees
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    again, _ = engine.generate_batch(prompt, max_tokens=8, temperature=0.0)
    fresh, _ = Engine(model, tok, dtype=torch.bfloat16).generate_batch(prompt, max_tokens=8, temperature=0.0)
    assert again == fresh and again != seqs
    # dtype None follows the caller's autocast
    auto = Engine(model, tok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under, _ = auto.generate_batch(prompt, max_tokens=8, temperature=0.0)
    assert auto.dtype == torch.bfloat16 and under == fresh


@pytest.mark.slow
def test_compiled_decode_step_matches_eager(tok):
    # torch.compile on CPU (inductor, C++): about a minute per (batch, length) bucket on a busy box
    model = build(tok)
    prompt = [40, 41, 42]
    compiled = Engine(model, tok, compile=True)
    seqs, _ = compiled.generate_batch(prompt, num_samples=2, max_tokens=12, temperature=0.0)
    assert compiled._step is not engine_module.decode_step, "the compiled step fell back to eager"
    eager, _ = Engine(model, tok).generate_batch(prompt, num_samples=2, max_tokens=12, temperature=0.0)
    assert seqs == eager


def test_warmup_touches_every_bucket_and_changes_nothing(tok):
    model = build(tok)
    engine = Engine(model, tok)
    shapes = []
    step = engine._step
    engine._step = lambda m, w, k, v, tokens, pos, length: shapes.append((len(tokens), length)) or \
        step(m, w, k, v, tokens, pos, length)
    engine.reserve(4, 100)
    engine.warmup()
    assert sorted(set(shapes)) == [(b, n) for b in (1, 2, 4) for n in (64, 100)]
    prompt = [40, 41, 42]
    seqs, _ = engine.generate_batch(prompt, num_samples=3, max_tokens=10, temperature=0.0)
    ref = list(model.generate(prompt, max_tokens=10, temperature=0.0))
    assert all(s[len(prompt):] == ref[:len(s) - len(prompt)] for s in seqs)
