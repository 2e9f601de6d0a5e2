"""Tokenizer benchmark: our rustbpe vs the PyPI `rustbpe` vs HF `tokenizers`, in one run.

    uv run python -m dev.bench_tokenizer                 # >= 64 MB of text, vocab 4096 and 32768
    uv run python -m dev.bench_tokenizer --mb 8 --vocab-sizes 4096   # quick look

Text: the Python stdlib sources plus the text under /usr/share/doc (what any machine has), cut to
--mb megabytes. Every trainer runs in its own subprocess on the same documents, split pattern and
thread count, so peak RSS is per trainer. Prints a table, the speed ratios, and one JSON line.
"""

import argparse
import gzip
import importlib
import json
import os
import resource
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN

TRAINERS = ["ours", "pypi_rustbpe", "hf_tokenizers"]


def collect_docs(mb: int) -> list[str]:
    """Documents of real text and code, deterministic order, about `mb` MB of UTF-8."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    files += sorted(p for p in Path("/usr/share/doc").rglob("*") if p.suffix in (".txt", ".html", ".md", ".gz"))
    docs, total = [], 0
    for p in files:
        try:
            raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
            continue
        docs.append(text)
        total += len(raw)
        if total >= mb * 1_000_000:
            break
    return docs


def heldout_docs(docs: list[str]) -> tuple[list[str], list[str]]:
    """Every 20th document is held out for bytes/token."""
    return [d for i, d in enumerate(docs) if i % 20], [d for i, d in enumerate(docs) if i % 20 == 0]


def run_trainer(name: str, vocab_size: int, mb: int) -> dict:
    """Worker side: train one tokenizer, return timings, merges digest and bytes/token."""
    train, held = heldout_docs(collect_docs(mb))
    nbytes = sum(len(d.encode()) for d in train)
    t0 = time.perf_counter()
    if name in ("ours", "pypi_rustbpe"):  # the two Rust trainers have the same Python API
        rustbpe = importlib.import_module("nanochat_rustbpe" if name == "ours" else "rustbpe")
        tok = rustbpe.Tokenizer()
        tok.train_from_iterator(iter(train), vocab_size, pattern=SPLIT_PATTERN)
        dt = time.perf_counter() - t0
        ranks = [b for b, _ in sorted(tok.get_mergeable_ranks(), key=lambda x: x[1])]
        encode = tok.encode
    else:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=0,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(iter(train), trainer)
        dt = time.perf_counter() - t0
        ranks = None
        encode = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    held_bytes = sum(len(d.encode()) for d in held)
    held_tokens = sum(len(encode(d)) for d in held)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"trainer": name, "vocab_size": vocab_size, "train_s": dt, "mb": nbytes / 1e6,
            "mb_per_s": nbytes / 1e6 / dt, "peak_rss_mb": peak_mb, "bytes_per_token": held_bytes / held_tokens,
            "ranks": ranks and [r.hex() for r in ranks]}


def bench_encode(mb: int, vocab_size: int) -> dict:
    """Encode throughput of our tokenizer (tiktoken) vs HF tokenizers, same vocabulary size, batch API."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    from nanochat.tokenizer import Tokenizer

    train, held = heldout_docs(collect_docs(mb))
    ours = Tokenizer.train_from_iterator(iter(train), vocab_size + len(SPECIAL_TOKENS))
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.train_from_iterator(iter(train), trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    nbytes = sum(len(d.encode()) for d in train)
    out = {}
    for name, fn in [("ours_tiktoken", lambda: ours.encode(train, num_threads=os.cpu_count())),
                     ("hf_tokenizers", lambda: hf.encode_batch(train, add_special_tokens=False))]:
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        out[name] = nbytes / 1e6 / (time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=64, help="megabytes of text to train on")
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[4096, 32768], help="vocabulary sizes")
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--encode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_trainer(args.worker, args.vocab, args.mb)))
        return
    if args.encode:
        print(json.dumps(bench_encode(args.mb, args.vocab)))
        return

    def worker(*extra: str) -> dict:
        cmd = [sys.executable, "-m", "dev.bench_tokenizer", "--mb", str(args.mb), *extra]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    print(f"threads: {os.cpu_count()} cores, RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'default')}")
    rows, summary = [], {"mb": args.mb, "cores": os.cpu_count()}
    for v in args.vocab_sizes:
        res = {name: worker("--worker", name, "--vocab", str(v)) for name in TRAINERS}
        ours, pypi = res["ours"]["ranks"], res["pypi_rustbpe"]["ranks"]
        same = next((i for i, (a, b) in enumerate(zip(ours, pypi)) if a != b), min(len(ours), len(pypi)))
        for name in TRAINERS:
            r = res[name]
            rows.append((v, name, r["mb"], r["train_s"], r["mb_per_s"], r["peak_rss_mb"], r["bytes_per_token"]))
        summary[f"v{v}"] = {
            **{f"{n}_mb_per_s": round(res[n]["mb_per_s"], 2) for n in TRAINERS},
            **{f"{n}_bytes_per_token": round(res[n]["bytes_per_token"], 4) for n in TRAINERS},
            **{f"{n}_peak_rss_mb": round(res[n]["peak_rss_mb"]) for n in TRAINERS},
            "speedup_vs_pypi_rustbpe": round(res["ours"]["mb_per_s"] / res["pypi_rustbpe"]["mb_per_s"], 2),
            "speedup_vs_hf_tokenizers": round(res["ours"]["mb_per_s"] / res["hf_tokenizers"]["mb_per_s"], 2),
            "tokens_identical_to_pypi_rustbpe": f"{same}/{len(ours)}",
        }
    print(f"\n{'vocab':>6} {'trainer':<14} {'MB':>7} {'train s':>8} {'MB/s':>7} {'peak MB':>8} {'bytes/tok':>9}")
    for v, name, mb, s, mbps, rss, bpt in rows:
        print(f"{v:>6} {name:<14} {mb:7.1f} {s:8.2f} {mbps:7.2f} {rss:8.0f} {bpt:9.3f}")
    for v in args.vocab_sizes:
        s = summary[f"v{v}"]
        print(f"vocab {v}: ours is {s['speedup_vs_pypi_rustbpe']}x PyPI rustbpe, {s['speedup_vs_hf_tokenizers']}x HF "
              f"tokenizers; first {s['tokens_identical_to_pypi_rustbpe']} tokens identical to PyPI rustbpe")
    enc = worker("--encode", "--vocab", str(args.vocab_sizes[-1]))
    summary["encode_mb_per_s"] = {k: round(v, 2) for k, v in enc.items()}
    summary["encode_speedup_vs_hf"] = round(enc["ours_tiktoken"] / enc["hf_tokenizers"], 2)
    print(f"encode (batch, vocab {args.vocab_sizes[-1]}): ours/tiktoken {enc['ours_tiktoken']:.2f} MB/s, "
          f"HF tokenizers {enc['hf_tokenizers']:.2f} MB/s -> {summary['encode_speedup_vs_hf']}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
