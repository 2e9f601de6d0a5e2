"""The tokenizer: trained by rustbpe (Rust), run by tiktoken, stored as plain data files.

On disk (`<base>/tokenizer/` by default):
    tokenizer.tiktoken   one line per mergeable token: base64(bytes) rank   (tiktoken's rank format)
    tokenizer.json       pattern, special tokens, vocab size, sha256 of the rank file
    token_bytes.npy      int32 UTF-8 byte length of every token (0 for specials), for bits-per-byte

The chat template lives in exactly one place: `render_conversation` below.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tiktoken

from nanochat.common import SetupError, atomic_write, get_base_dir

# The special tokens, in this order, take the last ids of the vocabulary: the BPE merges own 0..n-1,
# so a tokenizer trained with a larger vocabulary keeps the same special-token order.
SPECIAL_TOKENS = [
    "<|bos|>",  # starts every document
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # the assistant calls the python (calculator) tool
    "<|python_end|>",
    "<|output_start|>",  # the tool's output, forced into the sequence
    "<|output_end|>",
]

# GPT-4's split pattern, numbers in runs of 1-2 digits (smaller vocabularies waste fewer tokens on numbers);
# kept on one line (past the length limit) so that it diffs cleanly against GPT-4's: only {1,2} differs
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""  # noqa: E501

RANKS_FILE = "tokenizer.tiktoken"
META_FILE = "tokenizer.json"
TOKEN_BYTES_FILE = "token_bytes.npy"
FORMAT = "nanochat-tokenizer-v1"


class TokenizerError(RuntimeError):
    """A tokenizer directory that is missing, incomplete or corrupt."""


class Tokenizer:
    """Text <-> token ids. Ordinary text never produces special ids: `<|bos|>` typed by a user is
    several ordinary tokens; special tokens only come from `encode_special` and the renderer."""

    def __init__(self, enc: tiktoken.Encoding):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token("<|bos|>")

    # --- construction --------------------------------------------------------------------------

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN) -> Tokenizer:
        offset = len(mergeable_ranks)
        if sorted(mergeable_ranks.values()) != list(range(offset)):
            raise TokenizerError("mergeable ranks must be the ids 0..n-1, each once")
        specials = {name: offset + i for i, name in enumerate(SPECIAL_TOKENS)}
        enc = tiktoken.Encoding(name="nanochat", pat_str=pattern, mergeable_ranks=mergeable_ranks,
                                special_tokens=specials)
        return cls(enc)

    @classmethod
    def train_from_iterator(cls, text_iterator: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN,
                            buffer_size: int = 8192) -> Tokenizer:
        """Train BPE with rustbpe; `vocab_size` includes the special tokens."""
        import nanochat_rustbpe

        n_ordinary = vocab_size - len(SPECIAL_TOKENS)
        if n_ordinary < 256:
            raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + "
                             f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size}")
        bpe = nanochat_rustbpe.Tokenizer()
        bpe.train_from_iterator(text_iterator, n_ordinary, buffer_size=buffer_size, pattern=pattern)
        ranks = dict(bpe.get_mergeable_ranks())
        return cls.from_ranks(ranks, bpe.get_pattern())

    # --- encoding ------------------------------------------------------------------------------

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def get_special_tokens(self) -> list[str]:
        return list(SPECIAL_TOKENS)

    def get_pattern(self) -> str:
        return self.enc._pat_str

    def encode_special(self, name: str) -> int:
        """Id of one special token by name, e.g. encode_special("<|assistant_end|>")."""
        if name not in SPECIAL_TOKENS:
            raise ValueError(f"{name!r} is not a special token; known: {', '.join(SPECIAL_TOKENS)}")
        return self.enc.encode_single_token(name)

    def id_to_token(self, token_id: int) -> bytes:
        return self.enc.decode_single_token_bytes(token_id)

    def _resolve(self, tok: int | str | None) -> int | None:
        return self.encode_special(tok) if isinstance(tok, str) else tok

    def encode(self, text: str | list[str], prepend: int | str | None = None, append: int | str | None = None,
               num_threads: int = 8) -> list[int] | list[list[int]]:
        """Encode ordinary text (a str, or a list of str in parallel threads); `prepend`/`append` add one
        token (an id or a special token's name) to each sequence."""
        pre, post = self._resolve(prepend), self._resolve(append)
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            if pre is not None:
                ids.insert(0, pre)
            if post is not None:
                ids.append(post)
            return ids
        if not isinstance(text, list):
            raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")
        batch = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
        for ids in batch:
            if pre is not None:
                ids.insert(0, pre)
            if post is not None:
                ids.append(post)
        return batch

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids: list[int]) -> str:
        """Ids -> text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.enc.decode(ids)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.enc.decode_bytes(ids)

    # --- storage -------------------------------------------------------------------------------

    def token_bytes(self) -> np.ndarray:
        """(vocab,) int32: UTF-8 byte length of each token's raw bytes; 0 for the special tokens."""
        n_ordinary = self.vocab_size - len(SPECIAL_TOKENS)
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(n_ordinary):
            out[i] = len(self.enc.decode_single_token_bytes(i))
        return out

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the three data files (see module docstring) atomically into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        n_ordinary = self.vocab_size - len(SPECIAL_TOKENS)
        lines = [base64.b64encode(self.enc.decode_single_token_bytes(i)).decode("ascii") + f" {i}\n"
                 for i in range(n_ordinary)]
        ranks_text = "".join(lines).encode("ascii")
        meta = {
            "format": FORMAT,
            "pattern": self.get_pattern(),
            "special_tokens": SPECIAL_TOKENS,
            "vocab_size": self.vocab_size,
            "ranks_sha256": hashlib.sha256(ranks_text).hexdigest(),
        }
        with atomic_write(directory / RANKS_FILE, "wb") as f:
            f.write(ranks_text)
        with atomic_write(directory / TOKEN_BYTES_FILE, "wb") as f:
            np.save(f, self.token_bytes(), allow_pickle=False)
        # the metadata goes last: a directory with a tokenizer.json is complete
        with atomic_write(directory / META_FILE) as f:
            f.write(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Load a saved tokenizer; a missing or corrupt directory raises TokenizerError naming the path."""
        directory = Path(directory)
        meta_path, ranks_path = directory / META_FILE, directory / RANKS_FILE
        if not meta_path.is_file():
            raise TokenizerError(f"no tokenizer at {directory} ({META_FILE} is missing): "
                                 "train one with `python -m scripts.tok_train`")
        try:
            meta = json.loads(meta_path.read_text())
            pattern, specials, vocab_size, digest = (meta["pattern"], meta["special_tokens"],
                                                     meta["vocab_size"], meta["ranks_sha256"])
        except (ValueError, KeyError, TypeError) as e:
            raise TokenizerError(f"corrupt tokenizer metadata {meta_path}: {e}; retrain with "
                                 "`python -m scripts.tok_train`") from None
        if meta.get("format") != FORMAT or specials != SPECIAL_TOKENS:
            raise TokenizerError(f"{meta_path} has format {meta.get('format')!r} with special tokens "
                                 f"{specials}, this code reads {FORMAT!r}; retrain the tokenizer")
        try:
            ranks_text = ranks_path.read_bytes()
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer file {ranks_path} is missing; retrain with "
                                 "`python -m scripts.tok_train`") from None
        if hashlib.sha256(ranks_text).hexdigest() != digest:
            raise TokenizerError(f"tokenizer file {ranks_path} is corrupt (checksum mismatch); retrain with "
                                 "`python -m scripts.tok_train`")
        ranks = {}
        for line in ranks_text.splitlines():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        tok = cls.from_ranks(ranks, pattern)
        if tok.vocab_size != vocab_size:
            raise TokenizerError(f"{directory}: vocab size {tok.vocab_size} does not match the recorded {vocab_size}")
        return tok

    # --- chat ----------------------------------------------------------------------------------

    def render_conversation(self, conversation: dict, max_tokens: int | None = None) -> tuple[list[int], list[int]]:
        """Conversation -> (ids, mask); mask 1 marks the tokens the assistant is trained to produce.

        `conversation = {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`.
        User content is a str; assistant content is a str or a list of parts
        `{"type": "text"|"python"|"python_output", "text": str}`. A leading system message is merged
        into the first user message. Masks: BOS, user turns, <|assistant_start|> and tool output 0;
        assistant text, tool calls and <|assistant_end|> 1. `max_tokens` truncates both lists.
        """
        messages = _validated_messages(conversation)
        ids: list[int] = []
        mask: list[int] = []

        def add(tokens: int | list[int], m: int) -> None:
            tokens = [tokens] if isinstance(tokens, int) else tokens
            ids.extend(tokens)
            mask.extend([m] * len(tokens))

        sp = {name: self.encode_special(name) for name in SPECIAL_TOKENS}
        add(sp["<|bos|>"], 0)
        for msg in messages:
            if msg["role"] == "user":
                add(sp["<|user_start|>"], 0)
                add(self.enc.encode_ordinary(msg["content"]), 0)
                add(sp["<|user_end|>"], 0)
                continue
            add(sp["<|assistant_start|>"], 0)
            content = msg["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                text_ids = self.enc.encode_ordinary(part["text"])
                if part["type"] == "text":
                    add(text_ids, 1)
                elif part["type"] == "python":
                    add(sp["<|python_start|>"], 1)
                    add(text_ids, 1)
                    add(sp["<|python_end|>"], 1)
                else:  # python_output: produced by the tool, not the model
                    add(sp["<|output_start|>"], 0)
                    add(text_ids, 0)
                    add(sp["<|output_end|>"], 0)
            add(sp["<|assistant_end|>"], 1)
        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask

    def render_for_completion(self, conversation: dict) -> list[int]:
        """Ids that prime the assistant's next reply: the conversation without a trailing assistant
        message, ending with <|assistant_start|> (for RL, eval, CLI and web)."""
        messages = list(conversation.get("messages", [])) if isinstance(conversation, dict) else conversation
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        ids, _ = self.render_conversation({"messages": messages})
        ids.append(self.encode_special("<|assistant_start|>"))
        return ids

    def visualize_tokenization(self, ids: list[int], mask: list[int] | None = None) -> str:
        """Tokens separated by '|', green where mask is 1 and red where 0 (ANSI), for debugging.

        A token that ends inside a multi-byte character is joined with the tokens that complete it
        (one span, coloured by its first token), so "naïve" in byte tokens shows as n|a|ï|v|e, not
        as n|a|\ufffd|\ufffd|v|e; bytes that are not UTF-8 at all still show as \ufffd."""
        green, red, reset = "\033[92m", "\033[91m", "\033[0m"
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out, span, first = [], "", 0
        for i, tok in enumerate(ids):
            if not span:
                first = i
            span += decoder.decode(self.enc.decode_single_token_bytes(tok), final=i == len(ids) - 1)
            if decoder.getstate()[0]:
                continue  # the token ended mid-character: the next one completes it
            out.append(span if mask is None else (green if mask[first] else red) + span + reset)
            span = ""
        return "|".join(out)


def _validated_messages(conversation) -> list[dict]:
    """Check the shape of a conversation and merge a leading system message into the first user one."""
    if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
        raise ValueError("a conversation is a dict with a 'messages' list")
    messages = conversation["messages"]
    if not messages:
        raise ValueError("the conversation has no messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content'")
    if messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user" or not isinstance(messages[1]["content"], str) \
                or not isinstance(messages[0]["content"], str):
            raise ValueError("a system message must be text and be followed by a user message")
        merged = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
        messages = [merged] + messages[2:]
    for i, msg in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] not in ("user", "assistant"):
            raise ValueError(f"message {i} has unknown role {msg['role']!r} (system is allowed only first)")
        if msg["role"] != expected:
            raise ValueError(f"message {i} should be from the {expected}: roles must alternate, starting with the user")
        content = msg["content"]
        if msg["role"] == "user":
            if not isinstance(content, str):
                raise ValueError(f"message {i}: user content must be a str")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in ("text", "python", "python_output") \
                        or not isinstance(part.get("text"), str):
                    raise ValueError(f"message {i} part {j}: expected {{'type': 'text'|'python'|'python_output', "
                                     f"'text': str}}, got {part!r}"[:300])
        elif not isinstance(content, str):
            raise ValueError(f"message {i}: assistant content must be a str or a list of parts")
    return messages


def get_tokenizer_dir() -> Path:
    return get_base_dir() / "tokenizer"


def get_tokenizer() -> Tokenizer:
    """The trained tokenizer of this base dir; SetupError (one sentence, exit status 1) if there is none."""
    directory = get_tokenizer_dir()
    if not (directory / META_FILE).is_file():
        where = (f"NANOCHAT_BASE_DIR={os.environ['NANOCHAT_BASE_DIR']}" if os.environ.get("NANOCHAT_BASE_DIR")
                 else "NANOCHAT_BASE_DIR is not set")
        raise SetupError(f"no tokenizer in {directory} ({where}): train one with `python -m scripts.tok_train`, "
                         "or set NANOCHAT_BASE_DIR to the base directory that holds tokenizer/")
    return Tokenizer.load(directory)


def get_token_bytes(device="cpu"):
    """(vocab,) int64 torch tensor of token byte lengths, for bits-per-byte."""
    import torch

    path = get_tokenizer_dir() / TOKEN_BYTES_FILE
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise TokenizerError(f"{path} is missing: train the tokenizer with `python -m scripts.tok_train`") from None
    except ValueError as e:
        raise TokenizerError(f"{path} is corrupt ({e}); retrain the tokenizer") from None
    return torch.from_numpy(arr.astype(np.int64)).to(device)


def iter_texts(texts: Iterable[str], max_chars: int, doc_cap: int) -> Iterator[str]:
    """Documents cropped to `doc_cap` chars, stopping once `max_chars` have been yielded (tok_train)."""
    seen = 0
    for text in texts:
        if seen >= max_chars:
            return
        if doc_cap > 0:
            text = text[:doc_cap]
        seen += len(text)
        yield text
