"""GSM8K: grade-school math word problems, solved in steps with calculator calls.

    GSM8K("main", "test")     # online: openai/gsm8k; offline: hub gsm8k (test only)

A solution's calculator annotations `<<48/2=24>>` become tool use: a python part with the
expression and a python_output part with the result, which the engine's calculator produces at
inference. The answer follows `#### ` at the end; commas are removed and the numbers compared.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from tasks.common import Task, completion_text, load_task_records

SPLITS = ("train", "test")
CALC_RE = re.compile(r"<<([^<>]*)>>")
ANSWER_RE = re.compile(r"####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?|-?\.[0-9]+)")


def solution_parts(solution: str) -> list[dict]:
    """A GSM8K solution -> assistant parts: text, then for each `<<expr=result>>` a python part
    (expr) and a python_output part (result), then the text that follows."""
    parts: list[dict] = []

    def text(t: str) -> None:
        if not t:
            return
        if parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += t
        else:
            parts.append({"type": "text", "text": t})

    pos = 0
    for m in CALC_RE.finditer(solution):
        text(solution[pos : m.start()])
        expr, eq, result = m.group(1).rpartition("=")
        if eq and expr.strip():
            parts.append({"type": "python", "text": expr.strip()})
            parts.append({"type": "python_output", "text": result.strip()})
        else:  # an annotation without "expr=": keep what it says as plain text
            text(m.group(1))
        pos = m.end()
    text(solution[pos:])
    return parts


def extract_answer(text: str) -> str | None:
    """The number after the first `####`, commas removed ("#### 1,234" -> "1234"), or None."""
    m = ANSWER_RE.search(text)
    return m.group(1).replace(",", "") if m else None


def same_number(a: str | None, b: str | None) -> bool:
    """Numeric equality of two extracted answers ("18" == "18.00"); None never matches."""
    if a is None or b is None:
        return False
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return a == b


class GSM8K(Task):
    def __init__(self, subset: str = "main", split: str = "test", **kwargs):
        super().__init__(**kwargs)
        if subset not in ("main", "socratic"):
            raise ValueError(f"GSM8K subset must be 'main' or 'socratic', got {subset!r}")
        if split not in SPLITS:
            raise ValueError(f"GSM8K split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.subset, self.split = subset, split
        hub = [("gsm8k", "test")] if (subset, split) == ("main", "test") else None  # packages ship test only
        self.records, self.source = load_task_records(f"GSM8K {subset} {split}", ("openai/gsm8k", subset, split), hub)

    def num_examples(self) -> int:
        return len(self.records)

    def get_example(self, index: int) -> dict:
        r = self.records[index]
        return {"messages": [{"role": "user", "content": r["question"]},
                             {"role": "assistant", "content": solution_parts(r["answer"])}]}

    def evaluate(self, conversation: dict, completion) -> bool:
        reference = extract_answer(completion_text(conversation["messages"][-1]))
        return same_number(extract_answer(completion_text(completion)), reference)

    def reward(self, conversation: dict, completion) -> float:
        return 1.0 if self.evaluate(conversation, completion) else 0.0
