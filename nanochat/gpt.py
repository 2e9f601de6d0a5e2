"""The GPT: a decoder-only transformer, its KV cache and the slow reference sampler.

Architecture, every choice a plain line of code below:
- rotary position embeddings (no learned positions), QK-norm, parameter-free RMSNorm after the
  embedding, before attention, before the MLP and before the head;
- no biases anywhere; ReLU² MLP with a 4× hidden layer; untied embedding (wte) and head (lm_head);
- grouped-query attention when n_kv_head < n_head;
- tanh soft-cap (15) on the logits, computed in float32;
- the training loss runs the head, soft-cap and cross-entropy a chunk of rows at a time, forward
  and backward, so the (B·T, V) logits never exist (d20 at batch 32: 8 GiB in bf16 otherwise);
- zero-initialised attention/MLP output projections and head, so every block starts as the
  identity and the first logits are uniform.

Build on the meta device, then materialise and initialise once:

    with torch.device("meta"):
        model = GPT(GPTConfig.from_depth(20, vocab_size=65536))
    model.to_empty(device="cuda")
    model.init_weights()

Weights stay float32; mixed precision comes from the caller's torch.autocast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from nanochat.optim import DistAdamW, Muon

logger = logging.getLogger("nanochat.gpt")

LOGIT_SOFTCAP = 15.0  # tanh cap keeps early logits bounded, as in reference nanochat
ROTARY_BASE = 10_000.0
ROTARY_HORIZON = 10  # rotary tables cover 10× sequence_len so generation can run past the window
# float32 logits of one chunk of rows in the loss. CPU: 512 rows at V=65536, an eighth of what a step
# at B=8, T=512 would otherwise hold in one (B·T, V) tensor (dev/LOG.md). CUDA: 4096 rows at V=65536,
# 16 chunks at d20 × batch 32; fewer chunks mean fewer float32 (V, C) head-gradient additions and a
# shorter unrolled graph under torch.compile (a guess, not yet measured on a GPU).
LOSS_CHUNK_BYTES = 128 * 2**20
LOSS_CHUNK_BYTES_CUDA = 2**30


# -------------------------------------------------------------------------------------------------
# Config


@dataclass
class GPTConfig:
    """Shapes only; every knob lives in the scripts. Saved verbatim into meta.json."""

    sequence_len: int = 2048
    vocab_size: int = 65536
    n_layer: int = 20
    n_head: int = 10  # query heads
    n_kv_head: int = 10  # key/value heads (GQA when < n_head)
    n_embd: int = 1280

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"head_dim={self.n_embd // self.n_head} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_depth(cls, depth: int, vocab_size: int, sequence_len: int = 2048, head_dim: int = 128) -> GPTConfig:
        """The one dial: width = 64·depth, heads of about `head_dim`.

        Even depths give width // head_dim heads of exactly head_dim (d20 → 1280 wide, 10 heads of
        128). Odd depths give widths that are not multiples of 128, so we take the head count whose
        (even) head size is nearest to head_dim, preferring the larger head on a tie (d13 → 8 × 104)."""
        width = 64 * depth
        candidates = [n for n in range(1, width + 1) if width % n == 0 and (width // n) % 2 == 0]
        n_head = min(candidates, key=lambda n: (abs(width // n - head_dim), n))
        return cls(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth,
                   n_head=n_head, n_kv_head=n_head, n_embd=width)

    def to_dict(self) -> dict:
        return asdict(self)


# -------------------------------------------------------------------------------------------------
# Building blocks


def norm(x: Tensor) -> Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin of position·frequency, each (1, seq_len, 1, head_dim/2), float32."""
    inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)  # (T, D/2)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]  # (1, T, 1, D/2) each


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x[i], x[i + D/2]) by its position's angle. x (B, T, H, D), cos/sin (1, T, 1, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, H, D/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # tables are fp32; under autocast x is bf16
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, T, H, D)


class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated.

    k, v: (n_layer, B, H_kv, T_max, D), allocated at the first insert with the dtype the attention
    produces (bf16 under autocast). `pos` is the number of positions already cached; it advances
    after the last layer has inserted, so every layer of one forward sees the same prefix.
    Capacity grows (reallocate and copy) when a forward would run past T_max.
    """

    def __init__(self, batch_size: int, num_kv_heads: int, head_dim: int, num_layers: int, max_seq_len: int):
        self.batch_size = batch_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.num_layers = num_layers
        self.max_seq_len = max_seq_len
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    def _ensure_capacity(self, needed: int, like: Tensor) -> None:
        if self.k is None:
            cap = max(needed, self.max_seq_len)
            shape = (self.num_layers, self.batch_size, self.num_kv_heads, cap, self.head_dim)
            self.k = torch.zeros(shape, dtype=like.dtype, device=like.device)  # (L, B, Hkv, T_max, D)
            self.v = torch.zeros_like(self.k)
            self.max_seq_len = cap
        elif needed > self.max_seq_len:
            cap = max(needed, 2 * self.max_seq_len)
            grown_k = self.k.new_zeros(*self.k.shape[:3], cap, self.head_dim)  # (L, B, Hkv, cap, D)
            grown_v = torch.zeros_like(grown_k)
            grown_k[:, :, :, : self.pos] = self.k[:, :, :, : self.pos]
            grown_v[:, :, :, : self.pos] = self.v[:, :, :, : self.pos]
            self.k, self.v, self.max_seq_len = grown_k, grown_v, cap

    def insert(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write a chunk k, v (B, H_kv, T, D) at `pos`; return this layer's keys and values for
        positions 0..pos+T, each (B, H_kv, pos+T, D)."""
        B, H, T, D = k.shape
        if B != self.batch_size:
            raise ValueError(f"KV cache holds batch {self.batch_size} but the forward has batch {B}")
        end = self.pos + T
        self._ensure_capacity(end, k)
        self.k[layer_idx, :, :, self.pos : end] = k
        self.v[layer_idx, :, :, self.pos : end] = v
        keys, values = self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]
        if layer_idx == self.num_layers - 1:
            self.pos = end
        return keys, values

    def expand_batch(self, num_samples: int) -> None:
        """Replicate a batch-1 cache into `num_samples` independent rows (prefill once, sample N)."""
        if self.batch_size != 1:
            raise ValueError(f"expand_batch needs a batch-1 cache, this one has batch {self.batch_size}")
        if self.k is not None:
            # repeat copies: the rows diverge as soon as they decode different tokens
            self.k = self.k.repeat(1, num_samples, 1, 1, 1)  # (L, N, Hkv, T_max, D)
            self.v = self.v.repeat(1, num_samples, 1, 1, 1)
        self.batch_size = num_samples


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None, layer_idx: int) -> Tensor:
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, D)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # QK-norm; some autocast backends run rms_norm in fp32 and SDPA wants one dtype
        q, k = norm(q).to(v.dtype), norm(k).to(v.dtype)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or Hkv, T, D)
        gqa = self.n_kv_head != self.n_head

        if kv_cache is None or kv_cache.pos == 0:
            if kv_cache is not None:
                k, v = kv_cache.insert(layer_idx, k, v)  # prefill: (B, Hkv, T, D)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            prefix = kv_cache.pos
            k, v = kv_cache.insert(layer_idx, k, v)  # (B, Hkv, prefix+T, D)
            if T == 1:
                # one new token sees the whole cache
                y = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
            else:
                # query i sits at absolute position prefix+i and sees keys 0..prefix+i
                q_pos = prefix + torch.arange(T, device=x.device)[:, None]  # (T, 1)
                k_pos = torch.arange(prefix + T, device=x.device)[None, :]  # (1, prefix+T)
                mask = k_pos <= q_pos  # (T, prefix+T), True = attend
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: KVCache | None, layer_idx: int) -> Tensor:
        x = x + self.attn(norm(x), cos, sin, kv_cache, layer_idx)
        x = x + self.mlp(norm(x))
        return x


# -------------------------------------------------------------------------------------------------
# The loss, chunk by chunk over rows


def _softcap_ce_chunk(x: Tensor, w: Tensor, targets: Tensor, row_scale: Tensor | None
                      ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss rows of one chunk, and with row_scale the gradients of Σ row_scale·loss.

    x (n, C) and w (V, C) in the matmul dtype, targets (n,) with -1 = ignored, row_scale (n,) float32.
    Returns loss (n,) float32 (0 where ignored), dx (n, C) in x's dtype, dw (V, C) float32."""
    # in-place where possible: each (n, V) float32 buffer is one chunk's worth of memory
    t = (x @ w.t()).float().div_(LOGIT_SOFTCAP).tanh_()  # (n, V) float32, like the logits path
    s = t * LOGIT_SOFTCAP  # soft-capped logits
    valid = targets >= 0
    target = targets.clamp(min=0)[:, None]  # (n, 1)
    lse = torch.logsumexp(s, dim=-1)  # (n,)
    loss = torch.where(valid, lse - s.gather(1, target).squeeze(1), 0.0)  # (n,)
    if row_scale is None:
        return loss, None, None
    # d loss / d s = softmax(s) - onehot(target); d s / d logit = 1 - tanh²
    ds = s.sub_(lse[:, None]).exp_().scatter_add_(1, target, torch.full_like(lse[:, None], -1.0))  # (n, V)
    dlogit = ds.mul_(t.mul_(t).neg_().add_(1)).mul_(torch.where(valid, row_scale, 0.0)[:, None]).to(x.dtype)
    return loss, dlogit @ w, (dlogit.t() @ x).float()  # (n, C), (V, C)


class ChunkedSoftcapCrossEntropy(torch.autograd.Function):
    """cross_entropy(15·tanh(x @ wᵀ / 15), targets), rows of x taken `chunk` at a time, so that no
    more than one chunk's (chunk, V) logits ever exist, forward or backward.

    'mean' and 'sum' reduce to a scalar whose upstream gradient is one number, so the forward
    computes the gradients as it goes (no second pass over the head) and the backward scales them.
    'none' gives one loss per row with its own upstream gradient, which is only known in the
    backward: there each chunk's logits are recomputed."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, targets: Tensor, reduction: str, chunk: int,
                compute_dtype: torch.dtype, need_grads: bool) -> Tensor:
        xc, wc = x.to(compute_dtype), weight.to(compute_dtype)  # (N, C), (V, C)
        N = x.size(0)
        ctx.reduction, ctx.chunk, ctx.dtypes = reduction, chunk, (x.dtype, weight.dtype)
        if reduction == "none":
            loss = torch.cat([_softcap_ce_chunk(xc[i:i + chunk], wc, targets[i:i + chunk], None)[0]
                              for i in range(0, N, chunk)])  # (N,)
            ctx.save_for_backward(xc, wc, targets)
            return loss
        num_valid = (targets >= 0).sum()
        # 'mean' divides by the number of targets; none valid gives NaN, as F.cross_entropy does
        scale = 1.0 / num_valid.float() if reduction == "mean" else torch.ones((), device=x.device)
        total = torch.zeros((), device=x.device)
        dx, dw = (torch.empty_like(xc), torch.zeros_like(weight, dtype=torch.float32)) if need_grads else (None, None)
        for i in range(0, N, chunk):
            rows = targets[i:i + chunk]
            row_scale = scale.expand(rows.shape) if need_grads else None
            loss, dx_chunk, dw_chunk = _softcap_ce_chunk(xc[i:i + chunk], wc, rows, row_scale)
            total = total + loss.sum()
            if need_grads:
                dx[i:i + chunk] = dx_chunk
                dw += dw_chunk
        if need_grads:
            ctx.save_for_backward(dx, dw)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.reduction != "none":
            dx, dw = ctx.saved_tensors
            return (dx * grad_out).to(ctx.dtypes[0]), (dw * grad_out).to(ctx.dtypes[1]), None, None, None, None, None
        xc, wc, targets = ctx.saved_tensors
        chunk = ctx.chunk
        dx = torch.empty_like(xc)
        dw = torch.zeros_like(wc, dtype=torch.float32)
        for i in range(0, xc.size(0), chunk):
            _, dx[i:i + chunk], dw_chunk = _softcap_ce_chunk(xc[i:i + chunk], wc, targets[i:i + chunk],
                                                             grad_out[i:i + chunk].float())
            dw += dw_chunk
        return dx.to(ctx.dtypes[0]), dw.to(ctx.dtypes[1]), None, None, None, None, None


def chunked_cross_entropy(x: Tensor, weight: Tensor, targets: Tensor, reduction: str = "mean",
                          chunk_bytes: int = LOSS_CHUNK_BYTES) -> Tensor:
    """The head, soft-cap and cross-entropy (ignore_index -1) without the full logits.

    x (N, C) final hidden states, weight (V, C) the head, targets (N,). Equal to
    F.cross_entropy(softcap(x @ weightᵀ), targets, ignore_index=-1, reduction=reduction) in float32;
    under autocast the matmuls run in the autocast dtype and the soft-cap and softmax in float32,
    exactly as the logits path does. Rows go `chunk_bytes` of float32 logits at a time."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"loss_reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    device_type = x.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    chunk = max(1, chunk_bytes // (4 * weight.size(0)))
    need_grads = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return ChunkedSoftcapCrossEntropy.apply(x, weight, targets, reduction, chunk, compute_dtype, need_grads)


# -------------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # not persistent: derived from the config, recomputed by init_rotary()
        cos, sin = rotary_tables(config.sequence_len * ROTARY_HORIZON, config.head_dim)
        self.register_buffer("cos", cos, persistent=False)  # (1, T_rot, 1, D/2)
        self.register_buffer("sin", sin, persistent=False)
        self.activation_checkpointing = False

    # --- initialisation -----------------------------------------------------------------------

    @torch.no_grad()
    def init_rotary(self) -> None:
        """Recompute the rotary tables on the model's device (after to_empty they are garbage)."""
        cos, sin = rotary_tables(self.cos.size(1), self.config.head_dim, device=self.get_device())
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The one initialisation, for a model materialised with to_empty(). Uses the global RNG.

        Embedding ~ N(0, 1) (a norm follows it, so only the optimizer sees its scale); input
        matrices ~ U(±sqrt(3/fan_in)), i.e. std 1/sqrt(fan_in); output projections and head zero."""
        self.init_rotary()
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        for block in self.transformer.h:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                bound = math.sqrt(3.0 / linear.weight.size(1))
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        nn.init.zeros_(self.lm_head.weight)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.activation_checkpointing = enabled

    def get_device(self) -> torch.device:
        return self.transformer.wte.weight.device

    # --- accounting ---------------------------------------------------------------------------

    def num_scaling_params(self) -> int:
        """All parameters (embedding and head included): the N of the tokens-per-parameter ratio
        (d20: ~561M)."""
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self) -> int:
        """Training FLOPs per token: 6·N + 12·L·H·D·T.

        N = parameters excluding the embedding (a lookup, not a matmul; the head is counted);
        6 = 2 forward + 4 backward per weight. Attention scores QKᵀ and the weighted sum AV cost
        2·H·D·T each per token per layer forward, ×3 for forward+backward, over the full window T
        (causal masking is not discounted, matching the usual MFU convention)."""
        cfg = self.config
        n_matmul = self.num_scaling_params() - self.transformer.wte.weight.numel()
        return 6 * n_matmul + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.sequence_len

    # --- optimizers ---------------------------------------------------------------------------

    def setup_optimizers(
        self,
        unembedding_lr: float = 0.004,
        embedding_lr: float = 0.2,
        matrix_lr: float = 0.02,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.8, 0.95),
        adam_eps: float = 1e-10,
        muon_momentum: float = 0.95,
        muon_ns_dtype: torch.dtype | None = None,
        compile: bool = False,
    ) -> list[torch.optim.Optimizer]:
        """[DistAdamW for wte and lm_head, Muon for every matrix in the blocks].

        AdamW learning rates scale as (n_embd/768)^-0.5 (tuned at width 768); Muon's update is
        already normalised so its lr does not. Every group records `initial_lr` for the schedule."""
        matrix_params = list(self.transformer.h.parameters())
        embedding_params = list(self.transformer.wte.parameters())
        head_params = list(self.lm_head.parameters())
        assert len(matrix_params) + len(embedding_params) + len(head_params) == len(list(self.parameters()))
        scale = (self.config.n_embd / 768) ** -0.5
        logger.info("AdamW lr scale (n_embd/768)^-0.5 = %.4f", scale)
        adamw = DistAdamW(
            [dict(params=head_params, lr=unembedding_lr * scale),
             dict(params=embedding_params, lr=embedding_lr * scale)],
            betas=adam_betas, eps=adam_eps, weight_decay=weight_decay, compile=compile,
        )
        muon = Muon(matrix_params, lr=matrix_lr, momentum=muon_momentum, ns_dtype=muon_ns_dtype, compile=compile)
        optimizers: list[torch.optim.Optimizer] = [adamw, muon]
        for opt in optimizers:
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
        return optimizers

    # --- forward ------------------------------------------------------------------------------

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        kv_cache: KVCache | None = None,
        loss_reduction: str = "mean",
    ) -> Tensor:
        """idx (B, T) token ids. With targets (B, T) returns the cross-entropy (ignore_index -1):
        a scalar for 'mean', (B, T) for 'none'. Without targets returns float32 logits (B, T, V).
        With a kv_cache the chunk idx sits at positions kv_cache.pos..pos+T-1."""
        B, T = idx.size()
        t0 = 0 if kv_cache is None else kv_cache.pos
        if t0 + T > self.cos.size(1):
            raise ValueError(f"position {t0 + T} is past the rotary table ({self.cos.size(1)} positions)")
        cos, sin = self.cos[:, t0 : t0 + T], self.sin[:, t0 : t0 + T]  # (1, T, 1, D/2)

        x = norm(self.transformer.wte(idx))  # (B, T, C)
        use_ckpt = self.activation_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for i, block in enumerate(self.transformer.h):
            if use_ckpt:
                x = checkpoint(block, x, cos, sin, None, i, use_reentrant=False)
            else:
                x = block(x, cos, sin, kv_cache, i)
        x = norm(x)

        if targets is None:
            logits = self.lm_head(x).float()  # (B, T, V)
            return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        # the training path never holds the (B·T, V) logits: see chunked_cross_entropy
        loss = chunked_cross_entropy(x.view(B * T, -1), self.lm_head.weight, targets.reshape(B * T),  # (B·T, C)
                                     loss_reduction, LOSS_CHUNK_BYTES_CUDA if idx.is_cuda else LOSS_CHUNK_BYTES)
        return loss.view(B, T) if loss_reduction == "none" else loss  # (B, T) or ()

    def new_kv_cache(self, batch_size: int, max_seq_len: int | None = None) -> KVCache:
        cfg = self.config
        return KVCache(batch_size, cfg.n_kv_head, cfg.head_dim, cfg.n_layer, max_seq_len or cfg.sequence_len)

    # --- slow reference sampler ---------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        tokens: list[int],
        max_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 42,
    ) -> Iterator[int]:
        """Yield up to max_tokens sampled ids after `tokens`, recomputing the whole forward each
        step (no cache): the reference that Engine.generate must match at temperature 0."""
        device = self.get_device()
        rng = torch.Generator(device=device).manual_seed(seed)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)  # (1, T)
        for _ in range(max_tokens):
            logits = self.forward(ids)[:, -1, :]  # (1, V)
            next_id = sample_next_token(logits, rng, temperature, top_k)  # (1, 1)
            ids = torch.cat([ids, next_id], dim=1)  # (1, T+1)
            yield int(next_id.item())


def sample_next_token(logits: Tensor, rng: torch.Generator | None, temperature: float = 1.0,
                      top_k: int | None = None) -> Tensor:
    """The one sampling rule. logits (B, V) -> ids (B, 1). temperature 0 = argmax; top_k 0/None = off."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    if top_k is not None and top_k > 0:
        k = min(top_k, logits.size(-1))
        values, indices = torch.topk(logits, k, dim=-1)  # (B, k) each
        probs = F.softmax(values.float() / temperature, dim=-1)
        choice = torch.multinomial(probs, num_samples=1, generator=rng)  # (B, 1) into the top k
        return indices.gather(-1, choice)
    probs = F.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=rng)
