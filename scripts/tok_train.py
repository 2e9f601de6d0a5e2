"""Train the tokenizer (rustbpe) on the pretraining text and save it under <base>/tokenizer/.

    python -m scripts.tok_train                                   # vocab 65,536, up to 2B characters
    python -m scripts.tok_train --vocab-size=4096 --max-chars=20000000   # a quick small one

The text is the pretraining corpus: cached shards, else FineWeb-Edu over HTTP, else the offline
corpus built from package-shipped text (`--source` forces one).
"""

import time

from nanochat.common import ScriptParser, print0, setup_logging
from nanochat.data.pretraining import ensure_pretraining_data
from nanochat.data.shards import parquets_iter_batched
from nanochat.report import log_section
from nanochat.tokenizer import Tokenizer, get_tokenizer_dir, iter_texts

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "Train the BPE tokenizer on the pretraining text.")
parser.add_argument("--max-chars", type=int, default=2_000_000_000, help="train on at most this many characters")
parser.add_argument("--doc-cap", type=int, default=10_000,
                    help="crop each document to this many characters (0 = no cap)")
parser.add_argument("--vocab-size", type=int, default=65536, help="vocabulary size including the 9 special tokens")
parser.add_argument("--source", choices=["auto", "online", "offline"], default="auto",
                    help="where the pretraining text comes from (auto: cache, then online, then offline)")
parser.add_argument("--num-shards", type=int, default=8, help="shards to make available when downloading (online)")
args = parser.parse_args()
if args.max_chars <= 0:
    parser.error(f"--max-chars must be positive, got {args.max_chars}")
if args.doc_cap < 0:
    parser.error(f"--doc-cap must be >= 0, got {args.doc_cap}")
if args.vocab_size < 265:
    parser.error(f"--vocab-size must be at least 265 (256 bytes + 9 special tokens), got {args.vocab_size}")
setup_logging()
print0(f"tok_train: vocab_size={args.vocab_size:,} max_chars={args.max_chars:,} doc_cap={args.doc_cap:,}")

# -------------------------------------------------------------------------------------------------
ensure_pretraining_data(args.num_shards, source=args.source)
chars = 0


def text_iterator():
    global chars
    docs = (doc for batch in parquets_iter_batched(split="train") for doc in batch)
    for text in iter_texts(docs, args.max_chars, args.doc_cap):
        chars += len(text)
        yield text


t0 = time.time()
tokenizer = Tokenizer.train_from_iterator(text_iterator(), args.vocab_size)
train_time = time.time() - t0
out_dir = tokenizer.save(get_tokenizer_dir())
if tokenizer.vocab_size < args.vocab_size:
    print0(f"warning: the text only supported {tokenizer.vocab_size:,} tokens (asked for {args.vocab_size:,})")
print0(f"trained on {chars:,} characters in {train_time:.1f}s ({chars / train_time / 1e6:.2f} M chars/s)")
print0(f"saved the tokenizer ({tokenizer.vocab_size:,} tokens) to {out_dir}")

# a sanity check that a person can read: round trip and the special tokens
sample = "Hello world! The year is 2025; naïve café, 中文, and code: x = [i**2 for i in range(10)]"
ids = tokenizer.encode(sample)
assert tokenizer.decode(ids) == sample
print0(f"sample: {len(sample.encode())} bytes -> {len(ids)} tokens: {tokenizer.visualize_tokenization(ids)}")

token_bytes = tokenizer.token_bytes()
ordinary = token_bytes[token_bytes > 0]
log_section("Tokenizer training", [
    {"vocab_size": tokenizer.vocab_size, "max_chars": args.max_chars, "doc_cap": args.doc_cap,
     "train_chars": chars, "train_time_s": train_time, "chars_per_s": chars / train_time,
     "token_bytes_min": int(ordinary.min()), "token_bytes_max": int(ordinary.max()),
     "token_bytes_mean": float(ordinary.mean())},
])
