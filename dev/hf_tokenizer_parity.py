"""Check that the Hugging Face tokenizer.json built by nanochat.hf_format encodes like our tiktoken
tokenizer, on real files: a larger, more varied check than tests/test_export_hf.py can afford.

    python -m dev.hf_tokenizer_parity    # train 4096 tokens on half the stdlib, check the other half
    python -m dev.hf_tokenizer_parity --vocab-size 16384 --max-mb 20
    python -m dev.hf_tokenizer_parity --tokenizer-dir ~/.cache/nanochat/tokenizer   # your trained tokenizer

Prints a table (files, bytes, tokens, mismatching files, encode time of each) and a final JSON line.
"""

import argparse
import json
import sysconfig
import time
from pathlib import Path

from nanochat.hf_format import hf_tokenizer
from nanochat.tokenizer import Tokenizer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tokenizer-dir", default=None, help="check this saved tokenizer instead of training one")
parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary to train (without --tokenizer-dir)")
parser.add_argument("--max-mb", type=float, default=8.0, help="megabytes of stdlib text to train on and to check")
args = parser.parse_args()

# the Python standard library: code, docstrings, some non-ASCII test data; even files train, odd files check
files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
texts = []
for f in files:
    try:
        texts.append(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, OSError):
        continue
    if sum(map(len, texts)) > 2 * args.max_mb * 1e6:
        break
train, check = texts[0::2], texts[1::2]

if args.tokenizer_dir:
    ours = Tokenizer.load(Path(args.tokenizer_dir).expanduser())
else:
    ours = Tokenizer.train_from_iterator(iter(train), args.vocab_size)
theirs = hf_tokenizer(ours)

t0 = time.perf_counter()
ours_ids = ours.encode(check, num_threads=1)
t1 = time.perf_counter()
theirs_ids = [e.ids for e in theirs.encode_batch(check, add_special_tokens=False)]
t2 = time.perf_counter()
mismatches = sum(a != b for a, b in zip(ours_ids, theirs_ids))
n_bytes = sum(len(t.encode()) for t in check)
n_tokens = sum(map(len, ours_ids))

print(f"{'files':>6} {'MB':>6} {'tokens':>10} {'vocab':>7} {'mismatching files':>18} {'tiktoken s':>10} {'hf s':>7}")
print(f"{len(check):>6} {n_bytes / 1e6:>6.2f} {n_tokens:>10,} {ours.vocab_size:>7} {mismatches:>18} "
      f"{t1 - t0:>10.2f} {t2 - t1:>7.2f}")
print(json.dumps({"files": len(check), "bytes": n_bytes, "tokens": n_tokens, "vocab_size": ours.vocab_size,
                  "mismatching_files": mismatches, "tiktoken_s": round(t1 - t0, 3), "hf_s": round(t2 - t1, 3)}))
