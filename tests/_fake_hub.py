"""A tiny offline hub written straight into <base>/hub in nanochat.data.hub's layout (no packages).

Each dataset gets its split files and a provenance.json with the current HUB_FORMAT, which is what
nanochat.data.hub checks before serving records, so nothing is ever fetched."""

import json
import zlib
from pathlib import Path

from nanochat.data import hub

ARC_TEST = [  # gold letters C, A, C, B
    {"id": "t1", "question": "Which is a gas?", "choices": {"text": ["ice", "rock", "steam", "wood"],
                                                             "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
    {"id": "t2", "question": "Plants need", "choices": {"text": ["light", "sand", "salt"], "label": ["A", "B", "C"]},
     "answerKey": "A"},
    {"id": "t3", "question": "Numbered labels?", "choices": {"text": ["one", "two", "three", "four"],
                                                              "label": ["1", "2", "3", "4"]}, "answerKey": "3"},
    {"id": "t4", "question": "Five choices?", "choices": {"text": ["a", "b", "c", "d", "e"],
                                                           "label": ["A", "B", "C", "D", "E"]}, "answerKey": "B"},
]
MMLU_TEST = [  # gold letters C, D, A, C
    {"question": "2+2?", "subject": "elementary_mathematics", "choices": ["3", "5", "4", "22"], "answer": 2},
    {"question": "Capital of France?", "subject": "geography", "choices": ["Rome", "Oslo", "Bern", "Paris"],
     "answer": 3},
    {"question": "H2O is", "subject": "chemistry", "choices": ["water", "salt", "gold", "air"], "answer": 0},
    {"question": "3*3?", "subject": "elementary_mathematics", "choices": ["6", "8", "9", "33"], "answer": 2},
]
GSM8K_TEST = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A shop sells 1,000 pens a day for 2 days at $3 each. How much money is that?",
     "answer": "It sells 1000 * 2 = <<1000*2=2000>>2000 pens.\nThat is 2000 * 3 = $<<2000*3=6000>>6000.\n#### 6,000"},
]
HUMANEVAL_TEST = [
    {"task_id": "Fake/0",
     "prompt": "import math\n\n\ndef add(a: int, b: int) -> int:\n"
               "    \"\"\"Add two numbers.\n    >>> add(2, 3)\n    5\n    \"\"\"\n",
     "canonical_solution": "    return a + b\n",
     "test": "\n\ndef check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
     "entry_point": "add"},
    {"task_id": "Fake/1", "prompt": "def double(x):\n    \"\"\"Twice x.\"\"\"\n",
     "canonical_solution": "    return 2 * x\n",
     "test": "\n\ndef check(candidate):\n    assert candidate(4) == 8\n",
     "entry_point": "double"},
]
MC_TRAIN = [
    {"question": "Is the sky blue?", "choices": ["no", "yes"], "answer": 1, "source": "BoolQ"},
    {"question": "Pick the fruit.", "choices": ["car", "apple", "road", "pen", "cup"], "answer": 1,
     "source": "CommonsenseQA"},
]


def _conversations(n: int, tag: str) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{tag} question {i}"},
                          {"role": "assistant", "content": f"{tag} answer {i}"}]} for i in range(n)]


def _words() -> list[str]:
    """200 made-up lowercase words; some of them fall in the spelling test split (crc32 % 20 == 0)."""
    syllables = ["ka", "lo", "mi", "ren", "tus", "bar", "zel", "pon", "dri", "vek"]
    words = sorted({a + b + c for a in syllables for b in syllables for c in syllables[:2]})
    assert any(zlib.crc32(w.encode()) % 20 == 0 for w in words)
    return words


# CORE: one task of each type, plus an unavailable one that must be skipped
CORE_ITEMS = {
    "copa": [{"query": f"Item {i} happened, therefore", "choices": ["it rained.", "the cat slept."], "gold": i % 2}
             for i in range(6)],
    "winogrande": [{"context_options": [f"Ann {i} helped Bob so Ann", f"Ann {i} helped Bob so Bob"],
                    "continuation": "said thanks.", "gold": 1} for i in range(5)],
    "lambada_openai": [{"context": f"The dog number {i} sat on the", "continuation": "mat"} for i in range(4)],
}
CORE_META = [
    {"label": "copa", "split": "copa", "icl_task_type": "multiple_choice", "num_fewshot": 0,
     "continuation_delimiter": " ", "random_baseline": 50, "dclm_records": 100, "available": True, "records": 6},
    {"label": "winogrande", "split": "winogrande", "icl_task_type": "schema", "num_fewshot": 2,
     "continuation_delimiter": " ", "random_baseline": 50, "dclm_records": 1267, "available": True, "records": 5},
    {"label": "lambada_openai", "split": "lambada_openai", "icl_task_type": "language_modeling", "num_fewshot": 1,
     "continuation_delimiter": " ", "random_baseline": 0, "dclm_records": 5153, "available": True, "records": 4},
    {"label": "winograd", "split": "winograd", "icl_task_type": "schema", "num_fewshot": 0,
     "continuation_delimiter": " ", "random_baseline": 50, "dclm_records": 273, "available": False, "records": 0},
]


def write_dataset(base: Path, name: str, splits: dict[str, list]) -> None:
    out = Path(base) / "hub" / name
    out.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        if name == "words":
            (out / f"{split}.txt").write_text("".join(w + "\n" for w in records))
        else:
            (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    prov = {"dataset": name, "hub_format": hub.HUB_FORMAT,
            "splits": {s: {"records": len(r), "source": "test"} for s, r in splits.items()}}
    (out / "provenance.json").write_text(json.dumps(prov))


def write_fake_hub(base: Path) -> Path:
    """Every hub dataset, a few records each. Returns base."""
    arc = {"train": ARC_TEST[:2], "validation": ARC_TEST[1:3], "test": ARC_TEST}
    write_dataset(base, "arc_easy", arc)
    write_dataset(base, "arc_challenge", arc)
    write_dataset(base, "mmlu", {"test": MMLU_TEST, "validation": MMLU_TEST[:2], "dev": MMLU_TEST[2:]})
    write_dataset(base, "gsm8k", {"test": GSM8K_TEST})
    write_dataset(base, "humaneval", {"test": HUMANEVAL_TEST})
    write_dataset(base, "mc_train", {"train": MC_TRAIN})
    write_dataset(base, "chitchat", {"train": _conversations(60, "chat")})
    write_dataset(base, "natural_instructions", {"train": _conversations(40, "instruct")})
    write_dataset(base, "words", {"words": _words()})
    core = {split: CORE_ITEMS.get(split, []) for split in hub.DATASETS["core"].splits}
    write_dataset(base, "core", core)
    (Path(base) / "hub" / "core" / "core_tasks.json").write_text(json.dumps(CORE_META))
    return base
