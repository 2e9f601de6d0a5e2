"""Evaluate the tokenizer: bytes per token on several kinds of held-out text, side by side with a
reference tokenizer trained by HF `tokenizers` on the same text with the same vocabulary size.

    python -m scripts.tok_eval
    python -m scripts.tok_eval --no-reference       # just ours

Kinds of text: short samples written for this script (English prose, code, LaTeX math, French,
German, Spanish, Chinese, Korean), the held-out texts the data stage kept out of training (if any),
and slices of the training and validation shards. Higher bytes/token = better compression.
"""

import time

from nanochat.common import ScriptParser, print0, setup_logging
from nanochat.data.corpus import heldout_texts
from nanochat.data.shards import parquets_iter_batched
from nanochat.report import log_section
from nanochat.tokenizer import SPECIAL_TOKENS, get_tokenizer, iter_texts

SAMPLES = {
    "english": (
        "The lighthouse keeper had not spoken to anyone in three weeks when the supply boat finally "
        "rounded the point. He watched it from the gallery, counting the seconds between the swells, "
        "and wondered whether the new radio would work any better than the old one. The winter had "
        "been long; the lamp had never failed, but he had come close to it more than once."
    ),
    "code": (
        "def moving_average(values: list[float], window: int = 3) -> list[float]:\n"
        "    \"\"\"Average of each run of `window` consecutive values.\"\"\"\n"
        "    if window <= 0:\n"
        "        raise ValueError(f\"window must be positive, got {window}\")\n"
        "    total = sum(values[:window])\n"
        "    out = [total / window]\n"
        "    for i in range(window, len(values)):\n"
        "        total += values[i] - values[i - window]\n"
        "        out.append(total / window)\n"
        "    return out\n"
    ),
    "math": (
        "Let $f(x) = \\sum_{n=0}^{\\infty} \\frac{x^n}{n!}$. Then $f'(x) = f(x)$ and $f(0) = 1$, so "
        "$f(x) = e^x$. For the matrix $A = \\begin{pmatrix} 2 & 1 \\\\ 1 & 3 \\end{pmatrix}$ we get "
        "$\\det(A - \\lambda I) = \\lambda^2 - 5\\lambda + 5 = 0$, hence $\\lambda = (5 \\pm \\sqrt{5})/2$."
    ),
    "french": (
        "Le boulanger ouvre sa boutique avant l'aube. Les premières baguettes sortent du four vers six "
        "heures, et déjà une file d'attente s'est formée sur le trottoir mouillé."
    ),
    "german": (
        "Die Straßenbahn fuhr pünktlich ab, obwohl es die ganze Nacht geschneit hatte. Im Wagen roch es "
        "nach nassen Mänteln und frischem Kaffee."
    ),
    "spanish": (
        "El mercado abre los sábados por la mañana. Hay frutas de temporada, pan recién horneado y un "
        "señor que vende libros viejos a precios razonables."
    ),
    "chinese": "今天早上下了一场小雨，空气很清新。我们在公园里散步，看到很多人在练习太极拳。",
    "korean": "오늘 아침에는 비가 조금 내렸습니다. 공원에서 산책을 하면서 많은 사람들이 운동하는 것을 보았습니다.",
}

# -------------------------------------------------------------------------------------------------
parser = ScriptParser(__file__, "Bytes per token of our tokenizer vs a reference.")
parser.add_argument("--no-reference", action="store_true", help="skip training the HF tokenizers reference")
parser.add_argument("--ref-max-chars", type=int, default=50_000_000,
                    help="characters of training text for the reference tokenizer")
parser.add_argument("--doc-cap", type=int, default=10_000, help="crop documents to this many characters (reference)")
parser.add_argument("--slice-chars", type=int, default=2_000_000, help="characters taken from each shard slice")
args = parser.parse_args()
setup_logging()

# -------------------------------------------------------------------------------------------------
tokenizer = get_tokenizer()
vocab_size = tokenizer.vocab_size


def shard_slice(split: str) -> str:
    docs = (doc for batch in parquets_iter_batched(split=split) for doc in batch)
    return "\n\n".join(iter_texts(docs, args.slice_chars, 0))


texts = dict(SAMPLES)
texts.update({f"heldout-{name}": text for name, text in heldout_texts().items()})
texts["train-shards"] = shard_slice("train")
texts["val-shard"] = shard_slice("val")
texts = {k: v for k, v in texts.items() if v}

encoders = {"ours": lambda s: tokenizer.encode(s)}
if not args.no_reference:
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    t0 = time.time()
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.get_pattern()), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    docs = (doc for batch in parquets_iter_batched(split="train") for doc in batch)
    hf.train_from_iterator(iter_texts(docs, args.ref_max_chars, args.doc_cap), trainer)
    print0(f"trained the reference (HF tokenizers, {args.ref_max_chars:,} chars) in {time.time() - t0:.1f}s")
    encoders["hf-ref"] = lambda s: hf.encode(s, add_special_tokens=False).ids

# -------------------------------------------------------------------------------------------------
rows = []
for kind, text in texts.items():
    nbytes = len(text.encode())
    ratios = {name: nbytes / max(1, len(enc(text))) for name, enc in encoders.items()}
    rows.append((kind, nbytes, ratios))

header = f"{'text':<22} {'bytes':>10} " + " ".join(f"{name:>10}" for name in encoders)
if "hf-ref" in encoders:
    header += f" {'ours/ref':>9}"
print0(f"bytes per token (vocab {vocab_size:,})\n" + header)
md = ["| text | bytes | " + " | ".join(encoders) + (" | ours/ref |" if "hf-ref" in encoders else ""),
      "|---|---:|" + "---:|" * (len(encoders) + ("hf-ref" in encoders))]
for kind, nbytes, ratios in rows:
    line = f"{kind:<22} {nbytes:>10,} " + " ".join(f"{ratios[n]:>10.3f}" for n in encoders)
    cells = [kind, f"{nbytes:,}"] + [f"{ratios[n]:.3f}" for n in encoders]
    if "hf-ref" in encoders:
        line += f" {ratios['ours'] / ratios['hf-ref']:>9.3f}"
        cells.append(f"{ratios['ours'] / ratios['hf-ref']:.3f}")
    print0(line)
    md.append("| " + " | ".join(cells) + " |")
log_section("Tokenizer evaluation", [f"vocab size: {vocab_size:,}; bytes per token (higher is better)", "\n".join(md)])
