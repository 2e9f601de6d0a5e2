"""Synthetic arithmetic word problems solved with calculator calls, to teach tool use.

    SyntheticMath(size=2000, split="train")     # deterministic for (split, seed, index)

The problems are generated from templates written for this file (not derived from any eval
set). Solutions use GSM8K's format, `<<expr=result>>` annotations and a final `#### answer`, so
they become python / python_output parts exactly like GSM8K's and are scored the same way.
Train and test draw from disjoint seeds.
"""

from __future__ import annotations

import random

from tasks.common import Task, completion_text
from tasks.gsm8k import extract_answer, same_number, solution_parts

NAMES = ["Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kemi", "Liam", "Mei", "Noor"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells"]
THINGS = ["notebooks", "sandwiches", "tickets", "plants"]


def _packs(r: random.Random) -> tuple[str, str, int]:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b, c = r.randint(2, 60), r.randint(2, 12), r.randint(2, 25)
    q = (f"{name} has {a} {item}. Then {name} buys {b} packs with {c} {item} in each. "
         f"How many {item} does {name} have now?")
    s = (f"The packs hold {b} * {c} = <<{b}*{c}={b * c}>>{b * c} {item}.\n"
         f"So {name} has {a} + {b * c} = <<{a}+{b * c}={a + b * c}>>{a + b * c} {item}.\n#### {a + b * c}")
    return q, s, a + b * c


def _change(r: random.Random) -> tuple[str, str, int]:
    name, many = r.choice(NAMES), r.choice(THINGS)
    n, price = r.randint(2, 9), r.randint(2, 15)
    bill = next(b for b in (20, 50, 100, 200) if b > n * price)
    q = f"{name} buys {n} {many} for ${price} each and pays with a ${bill} bill. How much change does {name} get?"
    s = (f"The {many} cost {n} * {price} = <<{n}*{price}={n * price}>>{n * price} dollars.\n"
         f"The change is {bill} - {n * price} = <<{bill}-{n * price}={bill - n * price}>>{bill - n * price} dollars.\n"
         f"#### {bill - n * price}")
    return q, s, bill - n * price


def _share(r: random.Random) -> tuple[str, str, int]:
    item, friends, each = r.choice(ITEMS), r.randint(2, 12), r.randint(2, 30)
    total = friends * each
    q = f"{total} {item} are shared equally among {friends} friends. How many {item} does each friend get?"
    s = f"Each friend gets {total} / {friends} = <<{total}/{friends}={each}>>{each} {item}.\n#### {each}"
    return q, s, each


def _distance(r: random.Random) -> tuple[str, str, int]:
    speed, hours, extra = r.randint(20, 120), r.randint(2, 9), r.randint(5, 90)
    q = (f"A train travels at {speed} km per hour for {hours} hours, then another {extra} km. "
         f"How many km does it travel in total?")
    s = (f"In {hours} hours it covers {speed} * {hours} = <<{speed}*{hours}={speed * hours}>>{speed * hours} km.\n"
         f"In total {speed * hours} + {extra} = <<{speed * hours}+{extra}={speed * hours + extra}>>"
         f"{speed * hours + extra} km.\n#### {speed * hours + extra}")
    return q, s, speed * hours + extra


def _discount(r: random.Random) -> tuple[str, str, int]:
    price, pct = 20 * r.randint(1, 25), r.choice([10, 20, 25, 50])
    off = price * pct // 100
    q = f"A jacket costs ${price}. It is on sale for {pct}% off. What is the sale price in dollars?"
    s = (f"The discount is {price} * {pct} / 100 = <<{price}*{pct}/100={off}>>{off} dollars.\n"
         f"The sale price is {price} - {off} = <<{price}-{off}={price - off}>>{price - off} dollars.\n"
         f"#### {price - off}")
    return q, s, price - off


def _reading(r: random.Random) -> tuple[str, str, int]:
    name, per_day, days, last = r.choice(NAMES), r.randint(5, 40), r.randint(2, 14), r.randint(1, 30)
    q = f"{name} reads {per_day} pages a day for {days} days and {last} pages on the next day. How many pages is that?"
    s = (f"{per_day} * {days} = <<{per_day}*{days}={per_day * days}>>{per_day * days} pages in {days} days.\n"
         f"{per_day * days} + {last} = <<{per_day * days}+{last}={per_day * days + last}>>"
         f"{per_day * days + last} pages in total.\n#### {per_day * days + last}")
    return q, s, per_day * days + last


TEMPLATES = [_packs, _change, _share, _distance, _discount, _reading]


class SyntheticMath(Task):
    """Word problems with calculator calls; `evaluate`/`reward` compare the final number."""

    def __init__(self, size: int = 2000, split: str = "train", seed: int = 42, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size, self.split, self.seed = size, split, seed

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> dict:
        r = random.Random(f"toolmath-{self.split}-{self.seed}-{index}")
        question, solution, answer = r.choice(TEMPLATES)(r)
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": solution_parts(solution)}],
                "answer": str(answer)}

    def evaluate(self, conversation: dict, completion) -> bool:
        return same_number(extract_answer(completion_text(completion)), conversation["answer"])

    def reward(self, conversation: dict, completion) -> float:
        return float(self.evaluate(conversation, completion))
