"""The two halves of on-policy RL with a verifiable reward: rollouts and the policy-gradient loss.

Advantage = reward − mean reward of the problem's samples; the loss is −Σ advantage · log p over
sampled tokens only (prompt and forced tool output masked), divided by the number of those tokens
in the whole step so every sampled token weighs the same.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from nanochat.chat_metrics import fit_prompt, sample_many
from nanochat.dataloader import padded_batch
from nanochat.engine import special_tokens


@dataclass
class Rollout:
    prompt: list[int]
    completions: list[list[int]]  # sampled ids, <|assistant_end|> kept when the sample stopped by itself
    masks: list[list[int]]  # 1 = sampled, 0 = forced tool output
    rewards: torch.Tensor  # (k,)

    @property
    def advantages(self) -> torch.Tensor:
        return self.rewards - self.rewards.mean()

    def num_sampled(self) -> int:
        return sum(sum(m) for m in self.masks)


@torch.no_grad()
def rollouts(engine, tokenizer, task, indices: list[int], num_samples: int, max_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, seeds: list[int] | None = None, autocast=None) -> list[Rollout]:
    """Sample num_samples completions for each task[index], all problems batched together by the
    engine's scheduler (problem i with seeds[i]), and score each with task.reward."""
    conversations = [task[i] for i in indices]
    bos = tokenizer.get_bos_token_id()
    prompts = [fit_prompt(tokenizer.render_for_completion(c), engine.model.config.sequence_len, bos)
               for c in conversations]
    seeds = list(indices) if seeds is None else seeds
    with autocast or nullcontext():
        samples = sample_many(engine, tokenizer, prompts, num_samples, max_tokens, temperature, top_k, seeds)
    ends = special_tokens(tokenizer).ends
    out = []
    for conversation, prompt, (ids, masks, _) in zip(conversations, prompts, samples):
        texts = [tokenizer.decode([t for t in c if t not in ends]) for c in ids]
        rewards = torch.tensor([float(task.reward(conversation, t)) for t in texts])
        out.append(Rollout(prompt, ids, masks, rewards))
    return out


def rollout(engine, tokenizer, task, index: int, num_samples: int, max_tokens: int, temperature: float = 1.0,
            top_k: int | None = None, seed: int = 0, autocast=None) -> Rollout:
    """rollouts() for one problem."""
    return rollouts(engine, tokenizer, task, [index], num_samples, max_tokens, temperature, top_k, [seed], autocast)[0]


def policy_gradient_backward(model, rollout_: Rollout, num_tokens: float, scale: float = 1.0, autocast=None) -> float:
    """Backward of Σ_samples Σ_sampled tokens −advantage · log p, divided by num_tokens (the step's
    sampled-token count) and multiplied by `scale` (the world size: the optimizer averages gradients
    over processes). Returns the loss value."""
    rows = [(rollout_.prompt + c, [0] * len(rollout_.prompt) + m) for c, m in zip(rollout_.completions, rollout_.masks)]
    x, y = padded_batch(rows, pad_id=rollout_.prompt[0], device=model.get_device())
    with autocast or nullcontext():
        nll = model(x, y, loss_reduction="none").float()  # (k, L); 0 where y == -1
    adv = rollout_.advantages.to(nll.device)[:, None]  # (k, 1)
    loss = (nll * adv).sum() * scale / max(1.0, num_tokens)
    loss.backward()
    return loss.item()
