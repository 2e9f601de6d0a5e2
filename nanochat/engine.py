"""The inference engine: token ids in, token ids out, with a KV cache and the calculator tool.

    engine = Engine(model, tokenizer)
    for column, masks in engine.generate(prompt_ids, num_samples=4, max_tokens=256, temperature=0.8):
        ...  # column[i] is row i's next token; masks[i] 1 = sampled, 0 = forced tool output
    sequences, masks = engine.generate_batch(prompt_ids, num_samples=4, max_tokens=256)

The prompt is prefilled once into a batch-1 cache, which is then replicated into `num_samples`
rows (KVCache.expand_batch); every row is sampled independently from there on, the first token
included. Sampling is `sample_next_token`, the same rule GPT.generate uses, and at temperature 0
the engine reproduces GPT.generate token for token (tests/test_engine.py).

Tool use: when a row emits <|python_start|> expr <|python_end|>, the engine decodes expr, runs
the calculator and queues <|output_start|> result <|output_end|> for that row; queued tokens are
fed to the model instead of its samples, with mask 0.

The engine knows nothing about text beyond the tool call. StreamDecoder (below) turns a stream of
ids into text without ever splitting a multi-byte character; the CLI and the web server use it.
"""

from __future__ import annotations

import codecs
from collections import deque
from typing import Iterator

import torch

from nanochat.calculator import evaluate
from nanochat.gpt import GPT, sample_next_token
from nanochat.tokenizer import Tokenizer

MAX_TOOL_CALL_TOKENS = 256  # longer calls are not evaluated (the calculator caps input at 1000 chars anyway)


class RowState:
    """The per-row state machine: inside a tool call or not, the tokens waiting to be forced, done.

    `next_token(sampled)` picks what the row emits (a queued forced token before the model's
    sample); `push(token, mask)` records it. Work per token is O(1), apart from decoding and
    evaluating each finished tool call once."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.python_start = tokenizer.encode_special("<|python_start|>")
        self.python_end = tokenizer.encode_special("<|python_end|>")
        self.output_start = tokenizer.encode_special("<|output_start|>")
        self.output_end = tokenizer.encode_special("<|output_end|>")
        self.stop_tokens = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()}
        self.forced: deque[int] = deque()
        self.tool_tokens: list[int] | None = None  # ids since <|python_start|>, None outside a call
        self.done = False
        self.terminal: int | None = None  # the stop token that finished the row

    def next_token(self, sampled: int) -> tuple[int, int]:
        """(token, mask) this row emits now: a queued forced token (mask 0) or the model's sample (1)."""
        if self.forced:
            return self.forced.popleft(), 0
        return sampled, 1

    def push(self, token: int, mask: int = 1) -> None:
        if mask == 1 and token in self.stop_tokens:
            self.done, self.terminal = True, token
        elif token == self.python_start and mask == 1:
            self.tool_tokens = []
        elif token == self.python_end and self.tool_tokens is not None:
            expr_ids, self.tool_tokens = self.tool_tokens, None
            if len(expr_ids) > MAX_TOOL_CALL_TOKENS:
                result = "error: expression too long"
            else:
                result = evaluate(self.tokenizer.decode(expr_ids))
            self.forced.append(self.output_start)
            self.forced.extend(self.tokenizer.encode(result))
            self.forced.append(self.output_end)
        elif self.tool_tokens is not None and len(self.tool_tokens) <= MAX_TOOL_CALL_TOKENS:
            self.tool_tokens.append(token)  # one past the cap is enough to know it is too long


class Engine:
    """Batched sampling with a KV cache for one model. Holds no per-request state: each generate()
    call has its own cache and random generator."""

    def __init__(self, model: GPT, tokenizer: Tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    def generate(
        self,
        tokens: list[int],
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 42,
    ) -> Iterator[tuple[list[int], list[int]]]:
        """Yield (token_column, token_masks) per step, one entry per row.

        A row's terminal token (<|assistant_end|> or <|bos|>) is yielded with mask 1; after it the
        row's entries are padding (the terminal token again, mask 0). Stops when every row is done,
        after `max_tokens` steps, or when the sequence reaches the end of the model's rotary table
        (the only length limit when max_tokens is None). Bad arguments raise ValueError here, before the first step. Closing
        the generator early (gen.close()) is safe: it holds nothing but tensors."""
        model = self.model
        vocab = model.config.vocab_size
        if not tokens:
            raise ValueError("the prompt must contain at least one token")
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in tokens):
            raise ValueError(f"prompt token ids must be ints in [0, {vocab})")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if max_tokens is not None and max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0 or None, got {max_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {top_k}")
        positions = model.cos.size(1)  # rotary table length: the hard limit on sequence length
        if len(tokens) >= positions:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit the model ({positions} positions)")
        steps = positions - len(tokens)
        if max_tokens is not None:
            steps = min(steps, max_tokens)
        return self._generate(list(tokens), num_samples, steps, max_tokens, temperature, top_k, seed)

    @torch.inference_mode()
    def _generate(self, tokens: list[int], num_samples: int, steps: int, max_tokens: int | None,
                  temperature: float, top_k: int | None, seed: int) -> Iterator[tuple[list[int], list[int]]]:
        model, device = self.model, self.model.get_device()
        positions = model.cos.size(1)
        if steps == 0:
            return
        # the cache holds prompt + completion; it grows by itself if a None budget runs past this guess
        budget = max_tokens if max_tokens is not None else model.config.sequence_len
        kv_cache = model.new_kv_cache(1, max_seq_len=min(len(tokens) + budget, positions))
        rng = torch.Generator(device=device).manual_seed(seed)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)  # (1, T)
        logits = model(ids, kv_cache=kv_cache)[:, -1, :]  # (1, V)
        kv_cache.expand_batch(num_samples)
        logits = logits.expand(num_samples, -1)  # (N, V): the same distribution, sampled N times
        rows = [RowState(self.tokenizer) for _ in range(num_samples)]

        for step in range(steps):
            sampled = sample_next_token(logits, rng, temperature, top_k)[:, 0].tolist()  # N ids
            column, masks = [], []
            for row, s in zip(rows, sampled):
                if row.done:  # padding: the token that finished the row
                    column.append(row.terminal)
                    masks.append(0)
                    continue
                token, mask = row.next_token(s)
                row.push(token, mask)
                column.append(token)
                masks.append(mask)
            yield column, masks
            if all(row.done for row in rows) or step == steps - 1:
                return
            ids = torch.tensor(column, dtype=torch.long, device=device).view(num_samples, 1)  # (N, 1)
            logits = model(ids, kv_cache=kv_cache)[:, -1, :]  # (N, V)

    def generate_batch(self, tokens: list[int], num_samples: int = 1, **kwargs) -> tuple[list[list[int]], list[list[int]]]:
        """Run generate() to the end. Returns per row the prompt + completion (the terminal token
        left out) and its mask (0 for the prompt and forced tool output, 1 for sampled tokens)."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        done = [False] * num_samples
        stop_tokens = {self.tokenizer.encode_special("<|assistant_end|>"), self.tokenizer.get_bos_token_id()}
        for column, column_masks in self.generate(tokens, num_samples=num_samples, **kwargs):
            for i, (token, mask) in enumerate(zip(column, column_masks)):
                if done[i]:
                    continue
                if mask == 1 and token in stop_tokens:
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
