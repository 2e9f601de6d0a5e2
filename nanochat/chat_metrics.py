"""Scoring a chat model on tasks: categorical (argmax over the answer letters) and generative
(sample with the Engine, check with the task). Used by chat_eval, and by chat_sft / chat_rl for
their periodic evaluations. Counts are for this process; callers all_reduce them.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def spread_indices(n: int, max_problems: int) -> list[int]:
    """All of range(n), or max_problems indices spread evenly (datasets sorted by subject would
    otherwise give one subject)."""
    if max_problems < 0 or max_problems >= n:
        return list(range(n))
    return [j * n // max_problems for j in range(max_problems)]


def nanochat_indices(n: int, max_problems: int, shuffled: bool = True) -> list[int]:
    """The problems karpathy/nanochat's chat_eval scores: its datasets are loaded shuffled by Hugging
    Face's Dataset.shuffle(seed=42), i.e. numpy's default_rng(42).permutation(n), and the first
    max_problems taken (SpellingBee, generated, is not shuffled: shuffled=False)."""
    import numpy as np

    order = np.random.default_rng(42).permutation(n).tolist() if shuffled else list(range(n))
    return order if max_problems < 0 else order[:max_problems]


def fit_prompt(ids: list[int], max_len: int, bos: int) -> list[int]:
    """Prompts longer than the context keep BOS and their last tokens."""
    return ids if len(ids) <= max_len else [bos] + ids[len(ids) - max_len + 1:]


def letter_token(tokenizer, letter: str) -> int:
    ids = tokenizer.encode(letter)
    if len(ids) != 1:
        raise ValueError(f"answer letter {letter!r} is {len(ids)} tokens with this tokenizer; categorical "
                         "evaluation needs every answer letter to be a single token")
    return ids[0]


@torch.no_grad()
def categorical_accuracy(model, tokenizer, task, indices: list[int], batch_size: int = 8,
                         autocast=None, truncate: bool = True) -> tuple[int, int]:
    """(correct, total) over task[indices]: one forward pass per batch, the argmax restricted to each
    conversation's allowed letters at the last prompt position. truncate=False (as nanochat) keeps
    prompts longer than the context whole."""
    device, bos = model.get_device(), tokenizer.get_bos_token_id()
    max_len = model.config.sequence_len
    correct = total = 0
    for b0 in range(0, len(indices), batch_size):
        conversations = [task[i] for i in indices[b0:b0 + batch_size]]
        prompts = [tokenizer.render_for_completion(c) for c in conversations]
        prompts = [fit_prompt(p, max_len, bos) for p in prompts] if truncate else prompts
        T = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), T), bos, dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, :len(p)] = torch.tensor(p)
        with autocast or nullcontext():
            logits = model(ids.to(device))  # (B, T, V)
        for row, (conversation, p) in enumerate(zip(conversations, prompts)):
            letters = conversation["letters"]
            allowed = torch.tensor([letter_token(tokenizer, x) for x in letters], device=device)  # (L,)
            scores = logits[row, len(p) - 1, allowed]  # (L,) logits of the allowed letters only
            correct += int(task.evaluate(conversation, letters[int(scores.argmax())]))
            total += 1
    return correct, total


def sample_completions(engine, tokenizer, prompt: list[int], num_samples: int, max_tokens: int,
                       temperature: float, top_k: int | None,
                       seed: int) -> tuple[list[list[int]], list[list[int]], list[bool]]:
    """num_samples completions of prompt: (token ids, masks, finished). A finished completion ends with
    <|assistant_end|> (kept, mask 1, so RL can reward stopping); masks are 0 for forced tool output."""
    return sample_many(engine, tokenizer, [prompt], num_samples, max_tokens, temperature, top_k, [seed])[0]


def sample_many(engine, tokenizer, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                top_k: int | None, seeds: list[int]) -> list[tuple[list[list[int]], list[list[int]], list[bool]]]:
    """sample_completions for every prompt (prompt i with seeds[i]), all batched together by the
    engine's scheduler; each prompt's samples are the same as sampling it alone."""
    from nanochat.engine import SamplingParams
    from nanochat.scheduler import run_to_end

    positions = engine.model.cos.size(1)
    end = tokenizer.encode_special("<|assistant_end|>")
    requests = [(prompt, SamplingParams(temperature, top_k, 1.0, seed),
                 max(1, min(max_tokens, positions - len(prompt) - 1)), num_samples)
                for prompt, seed in zip(prompts, seeds)]
    out = []
    for rows in run_to_end(engine, requests):
        # a finished row ends with the end token it sampled (<|bos|> too): RL sees <|assistant_end|>
        done = [row.finish_reason == "stop" for row in rows]
        ids = [row.tokens[:-1] + [end] if d else row.tokens for row, d in zip(rows, done)]
        out.append((ids, [row.masks for row in rows], done))
    return out


def generative_pass(engine, tokenizer, task, indices: list[int], num_samples: int = 1, max_tokens: int = 256,
                    temperature: float = 0.0, top_k: int | None = None, seed: int = 42) -> tuple[int, int]:
    """(solved, total) over task[indices]: a problem is solved when any of its samples passes (pass@k)."""
    from nanochat.engine import special_tokens

    bos = tokenizer.get_bos_token_id()
    stop = special_tokens(tokenizer).ends
    conversations = [task[i] for i in indices]
    prompts = [fit_prompt(tokenizer.render_for_completion(c), engine.model.config.sequence_len, bos)
               for c in conversations]
    results = sample_many(engine, tokenizer, prompts, num_samples, max_tokens, temperature, top_k,
                          [seed + i for i in indices])
    solved = 0
    for conversation, (completions, _, _) in zip(conversations, results):
        texts = [tokenizer.decode([t for t in c if t not in stop]) for c in completions]
        solved += int(any(task.evaluate(conversation, t) for t in texts))
    return solved, len(indices)
