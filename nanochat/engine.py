"""The inference engine: a static KV cache, one decode step with fixed shapes, sampling on the device.

    engine = Engine(model, tokenizer)
    for column, masks in engine.generate(prompt_ids, num_samples=4, max_tokens=256, temperature=0.8):
        ...  # column[i] is row i's next token; masks[i] 1 = sampled, 0 = forced tool output
    sequences, masks = engine.generate_batch(prompt_ids, num_samples=4, max_tokens=256)

The engine owns one preallocated cache of `slots` rows of `max_len` positions, (L, S, H_kv, T, D)
each for keys and values. Every row has its own position, so rows at different lengths decode
together: the decode step writes each row's new key at its position and attends over the first
`length` cache positions under a per-row mask (key position <= the row's position). Its shapes
depend only on (batch bucket, length bucket), both powers of two, so a compiled step (CPU, or CUDA
graphs on CUDA) is reused step after step instead of re-planned. Prompts are prefilled into one
slot in chunks of PREFILL_CHUNK; a prompt sampled n times is prefilled once and copied.

Continuous batching over these slots is nanochat/scheduler.py; generate() is that scheduler run
to the end for one prompt. GPT.generate (no cache, a full forward per token) stays the slow
reference, and at temperature 0 the engine reproduces it token for token (tests/test_engine.py).

Sampling (temperature, top-k, top-p) runs on the device and costs one device->host copy of the
chosen ids per step. Randomness is counter-based: row noise is a hash of (seed, the row's token
count, token id), so a seeded request gives the same text alone or batched with others.

Tool use and reply structure are read in one place, ToolCallReader: RowState uses it to run the
calculator and force <|output_start|> result <|output_end|>; the web server's TextAssembler and
the CLI use it to show calls as text. StreamDecoder turns ids into text without ever splitting a
multi-byte character.
"""

from __future__ import annotations

import codecs
import functools
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nanochat.calculator import evaluate
from nanochat.gpt import GPT, LOGIT_SOFTCAP, apply_rotary, norm
from nanochat.tokenizer import Tokenizer

logger = logging.getLogger("nanochat.engine")

MAX_TOOL_CALL_TOKENS = 256  # longer calls are not evaluated (the calculator caps input at 1000 chars anyway)
PREFILL_CHUNK = 512  # prompt tokens per prefill forward: bounds the (chunk, length) attention mask
MIN_LENGTH_BUCKET = 64  # the decode step attends over a power of two >= this many positions
TOPK_PATH_MAX = 1024  # rows with top_k up to this sample from torch.topk; larger or off sorts the vocab


# -------------------------------------------------------------------------------------------------
# Reading a reply: special tokens and tool calls, in one place


@dataclass(frozen=True)
class SpecialTokens:
    """The ids a reply's structure is made of, looked up once per tokenizer (special_tokens())."""

    python_start: int
    python_end: int
    output_start: int
    output_end: int
    ends: frozenset[int]  # <|assistant_end|> and <|bos|>: the end of a reply
    all: frozenset[int]


@functools.lru_cache(maxsize=16)
def special_tokens(tokenizer: Tokenizer) -> SpecialTokens:
    sp = {name: tokenizer.encode_special(name) for name in tokenizer.get_special_tokens()}
    return SpecialTokens(sp["<|python_start|>"], sp["<|python_end|>"], sp["<|output_start|>"], sp["<|output_end|>"],
                         frozenset({sp["<|assistant_end|>"], sp["<|bos|>"]}), frozenset(sp.values()))


class ToolCallReader:
    """Classifies each token of a reply, the one parser of <|python_start|> expr <|python_end|>
    <|output_start|> result <|output_end|>.

    read(token) returns one of: "end" (a reply end token), "text" (an ordinary token outside any
    call), "call_start", "call" (a token of the expression), "call_end" (its ids are then in
    `expr_ids`), "output_start", "output" (a token of the result), "output_end" (`result_ids`), or
    "special" (any other special token: not part of the reply's text). An expression longer than
    MAX_TOOL_CALL_TOKENS keeps only MAX_TOOL_CALL_TOKENS + 1 ids, enough to know it is too long.

        reader = ToolCallReader(tokenizer)
        kinds = [reader.read(t) for t in ids]
    """

    def __init__(self, tokenizer: Tokenizer):
        self.sp = special_tokens(tokenizer)
        self.call: list[int] | None = None  # ids since <|python_start|>, None outside a call
        self.output: list[int] | None = None  # ids since <|output_start|>, None outside an output
        self.expr_ids: list[int] = []  # the last finished call's expression
        self.result_ids: list[int] = []  # the last finished output

    def read(self, token: int) -> str:
        sp = self.sp
        if token in sp.ends:
            return "end"
        if token == sp.python_start:
            self.call, self.output = [], None
            return "call_start"
        if token == sp.python_end and self.call is not None:
            self.expr_ids, self.call = self.call, None
            return "call_end"
        if token == sp.output_start:
            self.call, self.output = None, []
            return "output_start"
        if token == sp.output_end and self.output is not None:
            self.result_ids, self.output = self.output, None
            return "output_end"
        if token in sp.all:
            return "special"
        if self.call is not None:
            if len(self.call) <= MAX_TOOL_CALL_TOKENS:
                self.call.append(token)
            return "call"
        if self.output is not None:
            self.output.append(token)
            return "output"
        return "text"


class RowState:
    """One row of generation: reads its tokens, runs the calculator, queues the forced output.

    `next_token(sampled)` picks what the row emits (a queued forced token before the model's
    sample); `push(token, mask)` records it. Work per token is O(1), apart from decoding and
    evaluating each finished tool call once."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.reader = ToolCallReader(tokenizer)
        self.forced: deque[int] = deque()
        self.done = False
        self.terminal: int | None = None  # the end token that finished the row

    def next_token(self, sampled: int) -> tuple[int, int]:
        """(token, mask) this row emits now: a queued forced token (mask 0) or the model's sample (1)."""
        if self.forced:
            return self.forced.popleft(), 0
        return sampled, 1

    def push(self, token: int, mask: int = 1) -> str:
        """Record an emitted token; returns its ToolCallReader kind."""
        kind = self.reader.read(token)
        if kind == "end":
            self.done, self.terminal = True, token
        elif kind == "call_end" and mask == 1:
            expr_ids = self.reader.expr_ids
            if len(expr_ids) > MAX_TOOL_CALL_TOKENS:
                result = "error: expression too long"
            else:
                result = evaluate(self.tokenizer.decode(expr_ids))
            sp = self.reader.sp
            self.forced.append(sp.output_start)
            self.forced.extend(self.tokenizer.encode(result))
            self.forced.append(sp.output_end)
        return kind


# -------------------------------------------------------------------------------------------------
# Sampling on the device


@dataclass
class SamplingParams:
    """Per-request sampling. temperature 0 = argmax; top_k 0/None = off; top_p 1 = off (0 = the top token)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int = 42

    def check(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")


_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit constant as the int64 torch multiplies with (wrapping, as unsigned arithmetic would)."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def row_seed(seed: int, index: int) -> int:
    """The noise seed of sample `index` of a request seeded `seed` (an int64)."""
    return _signed(seed * 0x9E3779B97F4A7C15 + index)


def _mix(x: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 (logical shifts by masking off the sign extension)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _signed(0xBF58476D1CE4E5B9)
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _signed(0x94D049BB133111EB)
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def row_noise(seeds: Tensor, counters: Tensor, ids: Tensor) -> Tensor:
    """Gumbel noise, a pure function of (seed, counter, token id). seeds, counters (B,) int64; ids (B, K)."""
    key = _mix(_mix(seeds[:, None] * _signed(0x9E3779B97F4A7C15) + counters[:, None]) + ids)  # (B, K)
    u = (((key >> 40) & 0xFFFFFF).float() + 0.5) / float(1 << 24)  # (B, K) uniform in (0, 1), 24 bits
    return -torch.log(-torch.log(u))


def sample_tokens(logits: Tensor, params: list[SamplingParams], seeds: list[int], counters: list[int]) -> list[int]:
    """One id per row of logits (B, V), each row with its own params; seeds[i] and counters[i] (row
    i's number of tokens so far) key its noise. Runs on logits' device; one copy to the host.

    Among the allowed tokens (the top_k largest logits, then the smallest set of those whose
    probability reaches top_p) the chosen one maximises logit/temperature + Gumbel noise, which is
    a sample from the softmax at that temperature."""
    device, V = logits.device, logits.size(1)
    greedy = logits.argmax(dim=-1)  # (B,)
    if all(p.temperature == 0 for p in params):
        return greedy.tolist()
    ks = [p.top_k if p.top_k else V for p in params]
    k_max = min(max(ks), V)
    if k_max <= TOPK_PATH_MAX:
        values, ids = torch.topk(logits, k_max, dim=-1)  # (B, K) each, descending
    else:
        values, ids = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    K = values.size(1)
    # the per-row settings in two host->device copies (each copy of a Python list is a sync on CUDA)
    ints = torch.tensor([[min(k, K) for k in ks], seeds, counters, [p.temperature == 0 for p in params]],
                        dtype=torch.long).to(device, non_blocking=True)  # (4, B)
    floats = torch.tensor([[p.temperature or 1.0 for p in params], [p.top_p for p in params]],
                          dtype=torch.float32).to(device, non_blocking=True)  # (2, B); temperature 0 handled below
    top_k, seed_t, counts, cold = ints[0, :, None], ints[1], ints[2], ints[3].bool()
    temperature, top_p = floats[0, :, None], floats[1, :, None]  # (B, 1) each
    rank = torch.arange(K, device=device)[None, :]  # (1, K)
    scores = values.float() / temperature  # (B, K)
    scores = scores.masked_fill(rank >= top_k, float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        probs = F.softmax(scores, dim=-1)  # (B, K)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        scores = scores.masked_fill((before >= top_p) & (rank > 0), float("-inf"))
    choice = (scores + row_noise(seed_t, counts, ids)).argmax(dim=-1, keepdim=True)  # (B, 1) into the K
    sampled = ids.gather(-1, choice)[:, 0]  # (B,)
    return torch.where(cold, greedy, sampled).tolist()


# -------------------------------------------------------------------------------------------------
# The forward passes over the static cache


def _attention_inputs(cfg, w: tuple, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CausalSelfAttention's projections: x (B, T, C) -> q (B, H, T, D), k and v (B, Hkv, T, D)."""
    B, T, _ = x.shape
    q = F.linear(x, w[0]).view(B, T, cfg.n_head, cfg.head_dim)  # (B, T, H, D)
    k = F.linear(x, w[1]).view(B, T, cfg.n_kv_head, cfg.head_dim)  # (B, T, Hkv, D)
    v = F.linear(x, w[2]).view(B, T, cfg.n_kv_head, cfg.head_dim)  # (B, T, Hkv, D)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    q, k = norm(q).to(v.dtype), norm(k).to(v.dtype)  # QK-norm, as the model
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _block_tail(w: tuple, x: Tensor, y: Tensor) -> Tensor:
    """The rest of a Block after attention: y (B, T, C) is the heads' output, x the fp32 residual."""
    x = x + F.linear(y, w[3])
    h = F.linear(norm(x).to(w[4].dtype), w[4])
    return x + F.linear(F.relu(h).square(), w[5])  # ReLU² MLP


def _logits(w: dict, x: Tensor) -> Tensor:
    logits = F.linear(norm(x).to(w["lm_head"].dtype), w["lm_head"]).float()  # (B, V)
    return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)


def decode_step(model: GPT, w: dict, k_cache: Tensor, v_cache: Tensor, tokens: Tensor, pos: Tensor,
                length: int) -> Tensor:
    """One token for each of the first B slots: tokens, pos (B,) -> logits (B, V) float32.

    Row b's token sits at position pos[b]; its key and value are written there, and it attends
    over cache positions [0, length) where position <= pos[b]. Every shape depends on (B, length)
    only, never on the rows' positions, which is what lets one compiled graph serve every step.
    `w` holds the weights in the compute dtype; the residual stream stays float32, as under autocast."""
    cfg, B = model.config, tokens.size(0)
    cos = model.cos[0, pos].unsqueeze(1)  # (B, 1, 1, D/2): each row's own angle
    sin = model.sin[0, pos].unsqueeze(1)
    mask = torch.arange(length, device=tokens.device)[None, :] <= pos[:, None]  # (B, length), True = attend
    mask = mask[:, None, None, :]  # (B, 1, 1, length)
    rows = torch.arange(B, device=tokens.device)
    x = norm(F.embedding(tokens[:, None], w["wte"]).float())  # (B, 1, C)
    for i, lw in enumerate(w["layers"]):
        q, k, v = _attention_inputs(cfg, lw, norm(x).to(lw[0].dtype), cos, sin)  # (B, H, 1, D), (B, Hkv, 1, D) x2
        k_cache[i, rows, :, pos] = k[:, :, 0]  # (B, Hkv, D) into each row's position
        v_cache[i, rows, :, pos] = v[:, :, 0]
        keys, values = k_cache[i, :B, :, :length], v_cache[i, :B, :, :length]  # (B, Hkv, length, D)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                           enable_gqa=cfg.n_kv_head != cfg.n_head)  # (B, H, 1, D)
        x = _block_tail(lw, x, y.transpose(1, 2).reshape(B, 1, -1))
    return _logits(w, x[:, 0])


def prefill_chunk(model: GPT, w: dict, k_cache: Tensor, v_cache: Tensor, slot: int, tokens: Tensor,
                  start: int) -> Tensor:
    """Tokens (T,) at positions start..start+T-1 of `slot`: cache their keys, return the last one's logits (V,)."""
    cfg, T = model.config, tokens.size(0)
    end = start + T
    cos, sin = model.cos[:, start:end], model.sin[:, start:end]  # (1, T, 1, D/2)
    mask = torch.arange(end, device=tokens.device)[None, :] <= start + torch.arange(T, device=tokens.device)[:, None]
    x = norm(F.embedding(tokens[None], w["wte"]).float())  # (1, T, C)
    for i, lw in enumerate(w["layers"]):
        q, k, v = _attention_inputs(cfg, lw, norm(x).to(lw[0].dtype), cos, sin)  # (1, H, T, D), (1, Hkv, T, D) x2
        k_cache[i, slot, :, start:end] = k[0]
        v_cache[i, slot, :, start:end] = v[0]
        keys, values = k_cache[i, slot:slot + 1, :, :end], v_cache[i, slot:slot + 1, :, :end]  # (1, Hkv, end, D)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                           enable_gqa=cfg.n_kv_head != cfg.n_head)  # (1, H, T, D)
        x = _block_tail(lw, x, y.transpose(1, 2).reshape(1, T, -1))
    return _logits(w, x[:, -1])[0]


def bucket(n: int, cap: int, least: int = 1) -> int:
    """The smallest power of two times `least` that is >= n, at most cap."""
    b = least
    while b < n:
        b *= 2
    return min(b, cap)


# -------------------------------------------------------------------------------------------------
# The engine


class Engine:
    """The model, its static KV cache and the decode step: the slot-level machine under the
    scheduler. Not thread-safe: one scheduler (one thread) drives one engine.

    `dtype` is the compute dtype (weights, activations, cache); None follows the caller's autocast
    when the cache is set up (bf16 inside torch.autocast(dtype=torch.bfloat16)), else the model's
    own. The weights are cast once, not at every step as autocast would, and cast again only when a
    parameter changed in place (RL trains the model between rollouts). compile=True compiles the
    decode step with torch.compile; on CUDA with mode="reduce-overhead", i.e. CUDA graphs, whose
    inputs (cache, cast weights) keep their addresses from step to step."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, dtype: torch.dtype | None = None, compile: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.requested_dtype = dtype
        self.dtype = model.transformer.wte.weight.dtype
        self.k_cache: Tensor | None = None  # (L, S, Hkv, T, D)
        self.v_cache: Tensor | None = None
        self._weights: dict | None = None
        self._casts: list[tuple[Tensor, int, Tensor]] = []  # (parameter, its _version when cast, the copy)
        self.compiled = compile
        cuda = model.get_device().type == "cuda"
        # On CUDA the compiled step attends over the whole cache: one graph per batch bucket (a handful
        # to capture), and reading the unused positions costs little next to reading the weights.
        # Elsewhere the attended length is bucketed too, since there attention work is what costs.
        self.full_length = compile and cuda
        self._step = decode_step
        if compile:
            # one graph per (batch bucket, length bucket); CUDA graphs replay each with no launch overhead
            self._step = torch.compile(decode_step, mode="reduce-overhead" if cuda else None, dynamic=False)
            # dynamo's default of 8 graphs per function would send the other buckets back to eager
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

    @property
    def slots(self) -> int:
        return 0 if self.k_cache is None else self.k_cache.size(1)

    @property
    def max_len(self) -> int:
        return 0 if self.k_cache is None else self.k_cache.size(3)

    @property
    def positions(self) -> int:
        """The model's rotary table length: the hard limit on a sequence."""
        return self.model.cos.size(1)

    def reserve(self, slots: int, max_len: int) -> None:
        """Make the cache hold at least `slots` rows of `max_len` positions in the compute dtype
        (reallocating, which forgets what it held, only when it is too small or of another dtype)."""
        if max_len > self.positions:
            raise ValueError(f"a cache of {max_len} positions is past the model's {self.positions}")
        cfg, device = self.model.config, self.model.get_device()
        dtype = self.requested_dtype or (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                                         else self.model.transformer.wte.weight.dtype)
        if dtype != self.dtype:
            self.dtype, self._weights, self._casts = dtype, None, []
            self.k_cache = self.v_cache = None
        if self.k_cache is not None and self.slots >= slots and self.max_len >= max_len:
            return
        slots, max_len = max(slots, self.slots), max(max_len, self.max_len)
        shape = (cfg.n_layer, slots, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k_cache = self.v_cache = None  # free the old one first
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)  # (L, S, Hkv, T, D)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self._static(self.k_cache, self.v_cache)

    def _static(self, *tensors: Tensor) -> None:
        """Tell torch.compile these keep their address (CUDA graphs then read them in place
        instead of copying them in before every replay; the cache is written in place)."""
        if self.compiled:
            for t in tensors:
                torch._dynamo.mark_static_address(t)

    def weights(self) -> dict:
        """The model's weights in the compute dtype: {"wte", "lm_head", "layers": [(q, k, v, proj, fc, mlp_proj)]}."""
        if self._weights is None:
            m = self.model

            def cast(p: Tensor) -> Tensor:
                if p.dtype == self.dtype:
                    return p
                copy = p.detach().to(self.dtype)
                self._casts.append((p, p._version, copy))
                return copy

            self._weights = {"wte": cast(m.transformer.wte.weight), "lm_head": cast(m.lm_head.weight), "layers": [
                tuple(cast(lin.weight) for lin in (b.attn.c_q, b.attn.c_k, b.attn.c_v, b.attn.c_proj, b.mlp.c_fc,
                                                   b.mlp.c_proj)) for b in m.transformer.h]}
            layer_weights = (t for lw in self._weights["layers"] for t in lw)
            self._static(self._weights["wte"], self._weights["lm_head"], *layer_weights)
        for i, (p, version, copy) in enumerate(self._casts):
            if p._version != version:  # trained since: copy in place, so the addresses stay
                copy.copy_(p.detach())
                self._casts[i] = (p, p._version, copy)
        return self._weights

    def _no_autocast(self):
        return torch.autocast(self.model.get_device().type, enabled=False)  # the dtypes are explicit

    @torch.inference_mode()
    def prefill(self, slot: int, tokens: list[int]) -> Tensor:
        """Cache `tokens` at positions 0.. of `slot`; the logits (V,) after the last one."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.model.get_device())
        w = self.weights()
        with self._no_autocast():
            for start in range(0, len(tokens), PREFILL_CHUNK):
                logits = prefill_chunk(self.model, w, self.k_cache, self.v_cache, slot,
                                       ids[start:start + PREFILL_CHUNK], start)
        return logits

    @torch.inference_mode()
    def copy_slot(self, src: int, dst: list[int], length: int) -> None:
        """Copy the first `length` cached positions of slot src into every slot of dst."""
        for cache in (self.k_cache, self.v_cache):
            cache[:, dst, :, :length] = cache[:, src:src + 1, :, :length]

    @torch.inference_mode()
    def decode(self, tokens: list[int], positions: list[int]) -> Tensor:
        """One token for each of the first len(tokens) slots (slots past the ones in use are
        padding: any token, position 0). Returns logits (len(tokens), V) float32."""
        n = len(tokens)
        B = bucket(n, self.slots)
        length = self.max_len if self.full_length else bucket(max(positions) + 1, self.max_len, MIN_LENGTH_BUCKET)
        device = self.model.get_device()
        pad = [0] * (B - n)
        tok, pos = torch.tensor([tokens + pad, positions + pad], dtype=torch.long).to(device)  # (B,) each
        w = self.weights()
        with self._no_autocast():
            try:
                logits = self._step(self.model, w, self.k_cache, self.v_cache, tok, pos, length)
            except Exception as e:  # a compiler that fails here (no C compiler, an unsupported GPU) costs speed only
                if self._step is decode_step:
                    raise
                logger.warning("compiling the decode step failed (%s: %s); decoding eagerly", type(e).__name__, e)
                self._step = decode_step
                logits = decode_step(self.model, w, self.k_cache, self.v_cache, tok, pos, length)
        return logits[:n]

    def warmup(self) -> None:
        """Run the decode step once for every batch bucket of the cache (and, where lengths are
        bucketed, every length bucket), so compiling and CUDA-graph capture happen now rather than
        in the middle of someone's reply. The keys it writes are never read: a row attends only
        to positions it has written itself."""
        B, lengths = 1, [self.max_len] if self.full_length else sorted(
            {bucket(n, self.max_len, MIN_LENGTH_BUCKET) for n in range(1, self.max_len + 1)})
        while True:
            n = min(B, self.slots)
            for length in lengths:
                self.decode([0] * n, [length - 1] + [0] * (n - 1))
            if n == self.slots:
                return
            B *= 2

    # --- one prompt, n samples: the scheduler run to the end -----------------------------------

    def generate(
        self,
        tokens: list[int],
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 42,
        top_p: float = 1.0,
    ) -> Iterator[tuple[list[int], list[int]]]:
        """Yield (token_column, token_masks) per step, one entry per row.

        Row i samples with seed (seed, i) (num_samples rows of one seed differ; the first token
        too). A row's terminal token (<|assistant_end|> or <|bos|>) is yielded with mask 1; after
        it the row's entries are padding (the terminal token again, mask 0). Stops when every row
        is done, after `max_tokens` steps, or at the end of the model's rotary table (the only
        limit when max_tokens is None). Bad arguments raise ValueError here, before the first
        step. Closing the generator early (gen.close()) is safe."""
        from nanochat.scheduler import Scheduler  # the scheduler builds on this module

        vocab = self.model.config.vocab_size
        if not tokens:
            raise ValueError("the prompt must contain at least one token")
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in tokens):
            raise ValueError(f"prompt token ids must be ints in [0, {vocab})")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if max_tokens is not None and max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0 or None, got {max_tokens}")
        params = SamplingParams(temperature, top_k, top_p, seed)
        params.check()
        if len(tokens) >= self.positions:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit the model ({self.positions} positions)")
        steps = self.positions - len(tokens)
        if max_tokens is not None:
            steps = min(steps, max_tokens)
        scheduler = Scheduler(self, slots=num_samples, max_len=len(tokens) + steps)
        return self._columns(scheduler, list(tokens), num_samples, steps, params)

    def _columns(self, scheduler, tokens: list[int], num_samples: int, steps: int,
                 params: SamplingParams) -> Iterator[tuple[list[int], list[int]]]:
        if steps == 0:
            return
        rows = scheduler.submit(tokens, params, max_tokens=steps, n=num_samples)
        try:
            while any(row.finish_reason is None for row in rows):
                emitted = {row: (token, mask) for row, token, mask in scheduler.step()}
                # a row absent from this step has stopped: it pads with its terminal token, mask 0
                pairs = [emitted.get(row, (row.state.terminal, 0)) for row in rows]
                yield [t for t, _ in pairs], [m for _, m in pairs]
        finally:
            for row in rows:
                scheduler.cancel(row)

    def generate_batch(self, tokens: list[int], num_samples: int = 1,
                       **kwargs) -> tuple[list[list[int]], list[list[int]]]:
        """Run generate() to the end. Returns per row the prompt + completion (the terminal token
        left out) and its mask (0 for the prompt and forced tool output, 1 for sampled tokens)."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        ends = special_tokens(self.tokenizer).ends
        for column, column_masks in self.generate(tokens, num_samples=num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, column_masks)):
                if done[i]:
                    continue
                if mask == 1 and token in ends:
                    done[i] = True
                    continue
                results[i].append(token)
                masks[i].append(mask)
            if all(done):
                break
        return results, masks


# -------------------------------------------------------------------------------------------------
# Text streaming


class StreamDecoder:
    """Incremental detokenizer: feed token ids, get back the text that is complete so far.

    A multi-byte UTF-8 character split across tokens is held back until its last byte arrives, so
    a stream never prints half a character; invalid bytes become U+FFFD. Special tokens decode to
    their literal names (e.g. "<|assistant_end|>"): filter them out before feeding if unwanted.

        dec = StreamDecoder(tokenizer)
        for token in tokens:
            print(dec.feed(token), end="", flush=True)
        print(dec.flush())
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_ids: int | list[int]) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else token_ids
        return self._decoder.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        """The held-back bytes of an unfinished character (as U+FFFD), and reset for a new stream."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text

    def reset(self) -> None:
        self._decoder.reset()
