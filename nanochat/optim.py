"""Optimizers: Muon for the transformer's matrices, AdamW for the embedding and the head.

One class each serves 1 and N processes, so there is no single-process twin to drift. With N > 1
they work ZeRO-2 style: gradients are reduce-scattered (summed, then divided by N, so the update equals one process
averaging the same global batch), each rank updates and keeps optimizer state only for its shard,
and the updated parameters are all-gathered. With one process every collective is skipped and
the rank owns everything.

Sharding
- Muon: parameters are grouped by shape (one param_group per shape). Within a group, parameter
  j is owned by rank j % N; the gradients of N consecutive parameters are concatenated along dim 0
  (padded with zeros past the end of the group) and reduce-scattered, so each rank receives exactly
  the averaged gradient of the parameter it owns, runs Newton–Schulz on it, and the owners'
  results are all-gathered back into every rank's copy.
- DistAdamW: a parameter whose dim 0 divides by N is split into N row slices; rank r owns slice r
  (state of slice shape). Other parameters are all-reduced and updated redundantly on every rank.

Collectives and the gloo fallback
Only all_reduce, reduce_scatter_tensor and all_gather_into_tensor are used, all concatenated along
dim 0 (gloo rejects the stacked (N, ...) output layout that NCCL also accepts). Gloo has had
reduce_scatter_tensor only as an emulation (all_reduce, then keep one chunk; earlier torch versions
lack it), so on gloo we do that explicitly: all_reduce the whole buffer, then take this rank's
chunk. Same numbers, twice the traffic of a real reduce-scatter, which only matters on NCCL where
the real one is used. `REDUCE_SCATTER_VIA_ALL_REDUCE` forces either path (tests run both on gloo).
Averaging is SUM followed by a division because ReduceOp.AVG is NCCL-only in older torch.

State
`state_dict()`/`load_state_dict()` are torch's, and each rank's holds only its shard. For the
checkpoint (safetensors + JSON, never pickle) use `flat_state_dict()` → (tensors, meta) and
`load_flat_state_dict(tensors, meta)`; the shard is only valid for the same world size and rank.

Learning rates and Muon's momentum are read from param_groups at every step, so the training
script sets `group["lr"]` (and `group["momentum"]` for the 0.85 → 0.95 ramp) before `step()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

# None = automatic (all_reduce emulation on gloo, reduce_scatter_tensor elsewhere); True/False force it.
REDUCE_SCATTER_VIA_ALL_REDUCE: bool | None = None

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic Newton–Schulz (Keller Jordan's Muon)


# -------------------------------------------------------------------------------------------------
# The math, kept as pure functions so torch.compile can take them whole


def newton_schulz5(G: Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> Tensor:
    """Approximate the orthogonal factor U·Vᵀ of G = U·S·Vᵀ (singular values pushed into ~[0.7, 1.2]).

    The quintic X ← aX + (bA + cA²)X with A = XXᵀ maximises the slope at zero rather than converging
    exactly, which is all Muon needs. G (..., m, n) -> same shape, in `dtype`."""
    a, b, c = NS_COEFFS
    X = G.to(dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT  # iterate on the wide orientation: A is (m, m) with m <= n
    # spectral norm <= Frobenius norm, so this puts every singular value in [0, 1]; eps keeps a zero gradient zero
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT  # (..., m, m)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if transposed else X


def muon_update_(p: Tensor, grad: Tensor, buf: Tensor, lr: float, momentum: float, nesterov: bool,
                 weight_decay: float, ns_steps: int, ns_dtype: torch.dtype, ns_fn: Callable) -> None:
    """One Muon step for matrix p in place, with momentum buffer buf (same shape)."""
    buf.lerp_(grad, 1 - momentum)  # buf = momentum·buf + (1 - momentum)·grad
    direction = grad.lerp(buf, momentum) if nesterov else buf
    update = ns_fn(direction, ns_steps, ns_dtype)
    # an orthogonal update has RMS ~ 1/sqrt(max(rows, cols)); tall matrices get it back
    scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
    if weight_decay != 0.0:
        p.mul_(1 - lr * weight_decay)
    p.add_(update.to(p.dtype), alpha=-lr * scale)


def adamw_update_(p: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor | float,
                  lr: Tensor | float, beta1: Tensor | float, beta2: Tensor | float,
                  eps: Tensor | float, weight_decay: Tensor | float) -> None:
    """One AdamW step in place (decoupled weight decay, bias-corrected). Scalars may be floats
    (eager) or 0-dim tensors (compiled, so changing values do not trigger recompiles)."""
    p.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    bias1 = 1 - beta1**step
    bias2 = 1 - beta2**step
    denom = (exp_avg_sq / bias2).sqrt().add_(eps)
    p.sub_(exp_avg.div(denom).mul_(lr / bias1))


_compiled: dict[str, Callable] = {}


def _maybe_compiled(name: str, fn: Callable, compile: bool) -> Callable:
    if not compile:
        return fn
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=False)
    return _compiled[name]


# -------------------------------------------------------------------------------------------------
# Collectives


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _via_all_reduce() -> bool:
    if REDUCE_SCATTER_VIA_ALL_REDUCE is not None:
        return REDUCE_SCATTER_VIA_ALL_REDUCE
    return dist.get_backend() == "gloo"


class _MeanReduceScatter:
    """Asynchronous averaged reduce-scatter of `full` along dim 0; wait() returns this rank's chunk.

    On gloo (see module docstring) it is an all_reduce of `full` (in place) followed by slicing."""

    def __init__(self, full: Tensor, rank: int, world: int):
        self.full, self.rank, self.world = full, rank, world
        self.out = torch.empty_like(full.chunk(world)[rank])  # (rows/N, ...)
        if _via_all_reduce():
            self.work = dist.all_reduce(full, op=dist.ReduceOp.SUM, async_op=True)
            self.emulated = True
        else:
            self.work = dist.reduce_scatter_tensor(self.out, full, op=dist.ReduceOp.SUM, async_op=True)
            self.emulated = False

    def wait(self) -> Tensor:
        self.work.wait()
        if self.emulated:
            self.out.copy_(self.full.chunk(self.world)[self.rank])
        return self.out.div_(self.world)


# -------------------------------------------------------------------------------------------------
# Flat (safetensors + JSON) state, shared by both optimizers


class _FlatStateMixin:
    """Per-rank optimizer state as (dict of tensors, JSON-able dict): no pickle needed."""

    def flat_state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        sd = self.state_dict()  # type: ignore[attr-defined]
        rank, world = _rank_world()
        tensors: dict[str, Tensor] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(idx), {})[key] = value
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
        meta = {"format": "nanochat-optimizer-1", "class": type(self).__name__, "rank": rank,
                "world_size": world, "param_groups": groups, "scalars": scalars}
        return tensors, meta

    def load_flat_state_dict(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        rank, world = _rank_world()
        if meta.get("class") != type(self).__name__:
            raise ValueError(f"optimizer state is for {meta.get('class')}, not {type(self).__name__}")
        if (meta["rank"], meta["world_size"]) != (rank, world):
            raise ValueError(f"optimizer shard was saved by rank {meta['rank']} of {meta['world_size']}; "
                             f"this is rank {rank} of {world}: resume with the same number of processes")
        state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
        for idx, entries in meta["scalars"].items():
            state.setdefault(int(idx), {}).update(entries)
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
        self.load_state_dict({"state": state, "param_groups": groups})  # type: ignore[attr-defined]


# -------------------------------------------------------------------------------------------------
# Muon


class Muon(_FlatStateMixin, torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz, for 2-D matrices only.

    SGD-Nesterov momentum whose update is replaced by its nearest orthogonal matrix (5 quintic
    Newton–Schulz steps), scaled by sqrt(max(1, rows/cols)). Newton–Schulz runs in bf16 on CUDA
    (fast, and accurate enough: it only needs singular values near 1) and in float32 elsewhere
    unless `ns_dtype` says otherwise. A missing gradient counts as zero (every rank must take part
    in the collectives, and 1 and N processes must agree)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, weight_decay: float = 0.0,
                 ns_dtype: torch.dtype | None = None, compile: bool = False):
        params = list(params)
        if any(p.ndim != 2 for p in params):
            raise ValueError("Muon only takes 2-D matrices; give embeddings, heads and vectors to AdamW")
        by_shape: dict[tuple[int, ...], list[Tensor]] = {}
        for p in params:  # first-seen order keeps the grouping identical on every rank
            by_shape.setdefault(tuple(p.shape), []).append(p)
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay)
        super().__init__([dict(params=group) for group in by_shape.values()], defaults)
        self.ns_dtype = ns_dtype
        self.ns_fn = _maybe_compiled("newton_schulz5", newton_schulz5, compile)

    def _update(self, p: Tensor, grad: Tensor, group: dict) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        ns_dtype = self.ns_dtype or (torch.bfloat16 if p.is_cuda else torch.float32)
        muon_update_(p, grad, state["momentum_buffer"], group["lr"], group["momentum"], group["nesterov"],
                     group["weight_decay"], group["ns_steps"], ns_dtype, self.ns_fn)

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        rank, world = _rank_world()
        for group in self.param_groups:
            params: list[Tensor] = group["params"]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            if world == 1:
                for p, g in zip(params, grads):
                    self._update(p, g, group)
                continue

            # 1) launch every reduce-scatter: chunk j of block b is the gradient of params[b + j]
            starts = range(0, len(params), world)
            pending = []
            for base in starts:
                block = grads[base : base + world]
                block = block + [torch.zeros_like(params[0])] * (world - len(block))  # pad the last block
                pending.append(_MeanReduceScatter(torch.cat(block), rank, world))  # (N·rows, cols)
            # 2) owners update as their gradient arrives, then launch the all-gather of the result
            gathers = []
            for base, reduction in zip(starts, pending):
                grad = reduction.wait()  # (rows, cols): averaged gradient of params[base + rank]
                if base + rank < len(params):
                    mine = params[base + rank]
                    self._update(mine, grad, group)
                    mine = mine.detach()
                else:
                    mine = torch.zeros_like(params[0])  # padding slot
                gathered = torch.empty((world * mine.size(0), mine.size(1)), dtype=mine.dtype, device=mine.device)
                gathers.append((base, gathered, dist.all_gather_into_tensor(gathered, mine, async_op=True)))
            # 3) copy every owner's result into the local replicas
            for base, gathered, work in gathers:
                work.wait()
                for p, new in zip(params[base : base + world], gathered.chunk(world)):
                    p.copy_(new)


# -------------------------------------------------------------------------------------------------
# AdamW


class DistAdamW(_FlatStateMixin, torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias correction) sharded along dim 0 across ranks.

    Per-group lr, betas, eps, weight_decay. State per parameter: step (int), exp_avg and
    exp_avg_sq of the owned slice's shape. A missing gradient counts as zero (see Muon)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, compile: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.compiled = compile
        self.update_fn = _maybe_compiled("adamw_update_", adamw_update_, compile)

    def _update(self, p_shard: Tensor, grad: Tensor, state: dict, group: dict) -> None:
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p_shard)
            state["exp_avg_sq"] = torch.zeros_like(p_shard)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        scalars = [state["step"], group["lr"], beta1, beta2, group["eps"], group["weight_decay"]]
        if self.compiled:  # 0-dim tensors: new values each step without recompiling
            scalars = [torch.tensor(float(s), dtype=torch.float32, device=p_shard.device) for s in scalars]
        self.update_fn(p_shard, grad, state["exp_avg"], state["exp_avg_sq"], *scalars)

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        rank, world = _rank_world()
        # 1) launch every reduction
        pending = []
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                if world == 1:
                    pending.append((group, p, grad, None))
                elif p.size(0) % world == 0:
                    pending.append((group, p, None, _MeanReduceScatter(grad, rank, world)))
                else:  # not divisible: average the whole gradient, update the whole parameter everywhere
                    pending.append((group, p, grad, dist.all_reduce(grad, op=dist.ReduceOp.SUM, async_op=True)))
        # 2) update the owned part, launch the all-gather of sharded parameters
        gathers = []
        for group, p, grad, work in pending:
            if isinstance(work, _MeanReduceScatter):
                rows = p.size(0) // world
                shard = p[rank * rows : (rank + 1) * rows]  # (rows/N, ...) view into p
                self._update(shard, work.wait(), self.state[p], group)
                # in place: the input is this rank's slice of the output (supported by NCCL and gloo)
                gathers.append(dist.all_gather_into_tensor(p, shard, async_op=True))
            else:
                if work is not None:
                    work.wait()
                    grad.div_(world)
                self._update(p, grad, self.state[p], group)
        for work in gathers:
            work.wait()
