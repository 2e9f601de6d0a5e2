"""Spelling tasks: teach a token-level model to see the letters inside its tokens.

    SpellingBee(size=1000, split="train")    # "how many 'r' in 'strawberry'?" -> reason, count with python, answer
    SimpleSpelling(size=1000, split="train") # "spell 'strawberry'" -> s,t,r,a,w,b,e,r,r,y

Words come from the hub's word list (wamerican, lowercase ascii words); there is no online
source. Words are split once by a checksum (1 in 20 is test), so test words are never trained on.
Example i of a split is drawn from its own seeded generator: the same (seed, split, i) always
gives the same conversation, on any machine and in any order.
"""

from __future__ import annotations

import random
import re
import zlib

from nanochat.calculator import evaluate as calculator
from tasks.common import Task, completion_text, load_task_records
from tasks.gsm8k import extract_answer, same_number

SPLITS = ("train", "test")
TEST_EVERY = 20
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
ABSENT_LETTER_P = 0.1  # how often the asked letter is not in the word (answer 0)

COUNT_TEMPLATES = (
    "How many times does the letter '{l}' appear in the word '{w}'?",
    "How many {l}'s are in {w}?",
    "Count the letter {l} in the word \"{w}\".",
    "In the word '{w}', how many times does '{l}' occur?",
    "how many {l} are there in {w}",
    "What is the number of '{l}' characters in \"{w}\"?",
    "How often does {l} show up in {w}?",
)
SPELL_TEMPLATES = (
    "Spell the word '{w}'.",
    "How do you spell {w}?",
    "spell {w} letter by letter",
    "Can you spell \"{w}\" for me?",
    "What are the letters of the word '{w}'?",
)


def split_words(words: list[str], split: str) -> list[str]:
    """The words of a split: crc32(word) % 20 == 0 is test, the rest train."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return [w for w in words if (zlib.crc32(w.encode()) % TEST_EVERY == 0) == (split == "test")]


class _WordTask(Task):
    kind = ""

    def __init__(self, size: int = 1000, split: str = "train", seed: int = 42, **kwargs):
        super().__init__(**kwargs)
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        records, self.source = load_task_records("spelling words", None, [("words", "words")])
        self.words = split_words([r["word"] for r in records], split)
        self.size, self.split, self.seed = size, split, seed

    def num_examples(self) -> int:
        return self.size

    def rng(self, index: int) -> random.Random:
        return random.Random(f"{self.kind}-{self.seed}-{self.split}-{index}")  # str seeds are hashed stably


class SpellingBee(_WordTask):
    """Count a letter: spell the word with a running count, check with the calculator, answer `#### n`."""

    kind = "count"

    def get_example(self, index: int) -> dict:
        rng = self.rng(index)
        word = rng.choice(self.words)
        letter = rng.choice(ALPHABET if rng.random() < ABSENT_LETTER_P else word)
        question = rng.choice(COUNT_TEMPLATES).format(l=letter, w=word)
        seen, spelled = 0, []
        for c in word:
            if c == letter:
                seen += 1
                spelled.append(f"{c}({seen})")
            else:
                spelled.append(c)
        expr = f"'{word}'.count('{letter}')"
        output = calculator(expr)  # exactly what the engine forces back at inference
        times = "time" if seen == 1 else "times"
        parts = [
            {"type": "text", "text": f"Spelling '{word}' and numbering each '{letter}': {','.join(spelled)}.\n"
                                     f"That makes {seen}. Let me check with Python: "},
            {"type": "python", "text": expr},
            {"type": "python_output", "text": output},
            {"type": "text", "text": f"\nThe letter '{letter}' appears {seen} {times} in '{word}'.\n\n#### {seen}"},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": parts}]}

    def evaluate(self, conversation: dict, completion) -> bool:
        reference = extract_answer(completion_text(conversation["messages"][-1]))
        return same_number(extract_answer(completion_text(completion)), reference)

    def reward(self, conversation: dict, completion) -> float:
        return 1.0 if self.evaluate(conversation, completion) else 0.0


class SimpleSpelling(_WordTask):
    """Spell a word: `word: w,o,r,d`."""

    kind = "spell"

    def get_example(self, index: int) -> dict:
        rng = self.rng(index)
        word = rng.choice(self.words)
        question = rng.choice(SPELL_TEMPLATES).format(w=word)
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": f"{word}: {','.join(word)}"}]}

    def evaluate(self, conversation: dict, completion) -> bool:
        """The letters after the last ':' (separators ignored) must be the word's."""
        def letters(text: str) -> str:
            return re.sub(r"[^a-z]", "", text.rsplit(":", 1)[-1].lower())

        return letters(completion_text(completion)) == letters(conversation["messages"][-1]["content"])
