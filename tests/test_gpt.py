"""The GPT on CPU: shapes, learning, KV cache ↔ full forward, FLOP count, init, sampling, GQA."""

import pytest
import torch
import torch.nn.functional as F

import nanochat.gpt as gpt
from dev.bench_memory import measure_step
from nanochat.gpt import GPT, GPTConfig, KVCache, sample_next_token

TINY = dict(sequence_len=32, vocab_size=128, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)  # head_dim 32
GQA = dict(sequence_len=32, vocab_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)  # head_dim 16

pytestmark = pytest.mark.usefixtures("one_thread")


def build(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = GPT(GPTConfig(**{**TINY, **overrides}))
    model.to_empty(device="cpu")
    model.init_weights()
    return model


def randomise_outputs(model: GPT, seed: int = 1) -> None:
    """Zero-initialised projections and head make every logit 0; give them values so the
    comparisons below actually exercise attention."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.transformer.h:
            for w in (block.attn.c_proj.weight, block.mlp.c_proj.weight):
                w.copy_(torch.randn(w.shape, generator=g) * 0.05)
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=g) * 0.1)


def tokens(B: int, T: int, seed: int = 0, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# -------------------------------------------------------------------------------------------------


def test_forward_backward_shapes_and_reductions():
    model = build()
    randomise_outputs(model)
    x, y = tokens(3, 32), tokens(3, 32, seed=1)
    logits = model(x)
    assert logits.shape == (3, 32, 128) and logits.dtype == torch.float32
    assert logits.abs().max() <= 15.0  # soft-cap
    loss = model(x, y)
    assert loss.shape == ()
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())

    per_token = model(x, y, loss_reduction="none")
    assert per_token.shape == (3, 32)
    torch.testing.assert_close(per_token.mean(), loss)
    y_masked = y.clone()
    y_masked[:, :16] = -1  # ignore_index
    masked = model(x, y_masked, loss_reduction="none")
    assert (masked[:, :16] == 0).all()
    torch.testing.assert_close(model(x, y_masked), per_token[:, 16:].mean())


def full_logits_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    """The slow twin of the chunked loss: the whole (B·T, V) logits, then cross-entropy."""
    logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1, reduction=reduction)
    return loss.view(y.shape) if reduction == "none" else loss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chunked_loss_equals_full_logits(monkeypatch, reduction):
    # 7 rows per chunk: 96 rows make 14 chunks, the last one short
    monkeypatch.setattr(gpt, "LOSS_CHUNK_BYTES", 7 * 4 * 128)
    x, y = tokens(3, 32), tokens(3, 32, seed=1)
    y[0, :20] = -1  # ignore_index
    upstream = torch.randn(3, 32, generator=torch.Generator().manual_seed(2)) if reduction == "none" else None
    results = []
    for chunked in (False, True):
        model = build()
        randomise_outputs(model)
        loss = model(x, y, loss_reduction=reduction) if chunked else full_logits_loss(model, x, y, reduction)
        loss.backward(upstream)
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (full, full_grads), (chunked, chunked_grads) = results
    assert chunked.shape == full.shape
    torch.testing.assert_close(chunked, full, atol=1e-4, rtol=1e-4)
    for a, b in zip(chunked_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    if reduction == "none":
        assert (chunked[0, :20] == 0).all()


@pytest.mark.slow  # inductor compiles two graphs: ~20 s of CPU
def test_chunked_loss_compiled():
    # torch.compile traces the autograd.Function, both loops unrolled (3 chunks here)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g, requires_grad=True)
    w = (torch.randn(50, 16, generator=g) * 0.5).requires_grad_()
    y = torch.randint(0, 50, (40,), generator=g)
    y[:5] = -1
    for reduction, upstream in (("mean", torch.tensor(1.0)), ("none", torch.randn(40, generator=g))):
        logits = gpt.LOGIT_SOFTCAP * torch.tanh(x @ w.t() / gpt.LOGIT_SOFTCAP)
        full = F.cross_entropy(logits, y, ignore_index=-1, reduction=reduction)
        compiled = torch.compile(gpt.chunked_cross_entropy, dynamic=False)
        chunked = compiled(x, w, y, reduction, chunk_bytes=16 * 4 * 50)
        torch.testing.assert_close(chunked, full, atol=1e-4, rtol=1e-4)
        for a, b in zip(torch.autograd.grad(chunked, (x, w), upstream), torch.autograd.grad(full, (x, w), upstream)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_chunked_loss_under_bf16_autocast():
    # the matmul in bf16, soft-cap and softmax in fp32: as close to the logits path as bf16 allows
    model = build()
    randomise_outputs(model)
    x, y = tokens(2, 32), tokens(2, 32, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked, full = model(x, y), full_logits_loss(model, x, y, "mean")
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, full, atol=1e-3, rtol=1e-3)


@pytest.mark.slow  # ~8 s on an idle 2-core box, 40 s on a loaded one: the head is 4096 × 64 × 65536
def test_training_step_never_holds_the_full_logits():
    # B=8, T=512, V=65536: the float32 logits would be one 1 GiB tensor; the model around the head is tiny
    B, T, V = 8, 512, 65536
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=T, vocab_size=V, n_layer=2, n_head=2, n_kv_head=2, n_embd=64))
    model.init_weights()
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    m = measure_step(model, model.setup_optimizers(), x, y, "chunked", torch.float32, warmup=False)
    assert m["largest"] <= B * T * V * 4 // 4


def test_initial_loss_is_uniform():
    # zero head: every logit is 0, so the loss is exactly ln(V)
    model = build()
    loss = model(tokens(2, 32), tokens(2, 32, seed=1))
    assert abs(loss.item() - torch.log(torch.tensor(128.0)).item()) < 1e-5


def test_overfits_a_fixed_batch():
    model = build()
    optimizers = model.setup_optimizers()
    x, y = tokens(4, 32), tokens(4, 32, seed=1)
    for _ in range(40):
        loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    # starts at ln(128) = 4.85; measured ~0.01 after 40 steps
    assert model(x, y).item() < 0.5


def test_meta_build_and_init_are_deterministic():
    a, b, c = build(seed=3), build(seed=3), build(seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["transformer.wte.weight"], sc["transformer.wte.weight"])
    # rotary tables survive to_empty(): recomputed in init_weights
    eager = GPT(GPTConfig(**TINY))
    assert torch.equal(a.cos, eager.cos) and torch.equal(a.sin, eager.sin)
    for block in a.transformer.h:
        assert (block.attn.c_proj.weight == 0).all() and (block.mlp.c_proj.weight == 0).all()
    assert (a.lm_head.weight == 0).all()
    w = a.transformer.h[0].mlp.c_fc.weight  # (256, 64): std 1/sqrt(64)
    assert abs(w.std().item() - 64**-0.5) < 0.01


def test_estimate_flops_hand_count():
    model = build()
    C, L, V, T, H, D = 64, 2, 128, 32, 2, 32
    per_layer = C * C * 4 + C * 4 * C * 2  # q, k, v, proj + fc, proj
    non_embedding = L * per_layer + V * C  # head counted, embedding not
    assert model.estimate_flops() == 6 * non_embedding + 12 * L * H * D * T == 688_128
    assert model.num_scaling_params() == non_embedding + V * C


def test_from_depth_d20_reference():
    cfg = GPTConfig.from_depth(20, vocab_size=65536)
    assert (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.sequence_len) == (1280, 10, 10, 128, 2048)
    with torch.device("meta"):
        model = GPT(cfg)
    assert 560e6 < model.num_scaling_params() < 562e6  # the reference d20: ~561M
    for depth in range(1, 33):  # every depth gives a valid config
        GPTConfig.from_depth(depth, vocab_size=512)


@pytest.mark.parametrize("shape", [TINY, GQA], ids=["mha", "gqa"])
def test_kv_cache_matches_full_forward(shape):
    model = build(**shape)
    randomise_outputs(model)
    model.eval()
    x = tokens(2, 24)
    with torch.no_grad():
        full = model(x)  # (2, 24, V)

        # prefill 16, then decode 4 single tokens, then a chunk of 4 on top of the prefix
        cache = model.new_kv_cache(batch_size=2, max_seq_len=8)  # small on purpose: must grow
        parts = [model(x[:, :16], kv_cache=cache)]
        for t in range(16, 20):
            parts.append(model(x[:, t : t + 1], kv_cache=cache))
        parts.append(model(x[:, 20:24], kv_cache=cache))
        assert cache.pos == 24 and cache.max_seq_len >= 24
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


def test_kv_cache_expand_batch():
    model = build()
    randomise_outputs(model)
    prompt, continuation = tokens(1, 10), tokens(3, 5, seed=1)
    with torch.no_grad():
        cache = model.new_kv_cache(batch_size=1)
        model(prompt, kv_cache=cache)
        cache.expand_batch(3)
        out = model(continuation, kv_cache=cache)  # (3, 5, V): each row its own continuation
        full = model(torch.cat([prompt.expand(3, -1), continuation], dim=1))[:, 10:]
    torch.testing.assert_close(out, full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        cache.expand_batch(2)  # only a batch-1 cache can be replicated


def test_autocast_bf16_forward_and_cache():
    model = build()
    randomise_outputs(model)
    x, y = tokens(2, 16), tokens(2, 16, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, y)
        loss.backward()
        with torch.no_grad():
            full = model(x)
            cache = model.new_kv_cache(2)
            parts = [model(x[:, :12], kv_cache=cache), model(x[:, 12:13], kv_cache=cache),
                     model(x[:, 13:], kv_cache=cache)]
    assert full.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert cache.k.dtype == torch.bfloat16
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=0.1, rtol=0.05)  # bf16 tolerances


def test_activation_checkpointing_same_gradients():
    x, y = tokens(2, 32), tokens(2, 32, seed=1)
    grads = []
    for enabled in (False, True):
        model = build()
        randomise_outputs(model)
        model.set_activation_checkpointing(enabled)
        model(x, y).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_generate_reference():
    model = build()
    randomise_outputs(model)
    prompt = [5, 17, 99, 3]
    greedy = list(model.generate(prompt, max_tokens=8, temperature=0.0))
    assert greedy == list(model.generate(prompt, max_tokens=8, temperature=0.0))
    # greedy = argmax of the full forward, step by step
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert greedy == ids[len(prompt):]
    # sampling is reproducible from the seed and depends on it
    a = list(model.generate(prompt, max_tokens=12, temperature=1.0, top_k=50, seed=7))
    b = list(model.generate(prompt, max_tokens=12, temperature=1.0, top_k=50, seed=7))
    c = list(model.generate(prompt, max_tokens=12, temperature=1.0, top_k=50, seed=8))
    assert a == b and a != c and all(0 <= t < 128 for t in a)


def test_sample_next_token_top_k():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    rng = torch.Generator().manual_seed(0)
    picks = {int(sample_next_token(logits, rng, temperature=1.0, top_k=2)) for _ in range(200)}
    assert picks == {1, 2}
    assert int(sample_next_token(logits, None, temperature=0.0)) == 1


def test_gqa_trains():
    model = build(**GQA)
    assert model.transformer.h[0].attn.c_k.weight.shape == (32, 64)  # 2 kv heads of 16
    optimizers = model.setup_optimizers()
    x, y = tokens(2, 32), tokens(2, 32, seed=1)
    first = None
    for _ in range(10):
        loss = model(x, y)
        first = first if first is not None else loss.item()
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    assert loss.item() < first - 1.0


def test_kv_cache_rejects_wrong_batch():
    cache = KVCache(batch_size=2, num_kv_heads=2, head_dim=32, num_layers=2, max_seq_len=8)
    model = build()
    with pytest.raises(ValueError, match="batch"):
        model(tokens(1, 4), kv_cache=cache)
