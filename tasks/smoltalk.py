"""SmolTalk: general chat conversations (midtraining and SFT).

    SmolTalk("train")    # or "test"

Online: HuggingFaceTB/smol-smoltalk. Offline: the hub's chitchat (casual human conversations) and
natural_instructions (BIG-bench instruction -> answer pairs) conversations, in that order, split
deterministically: every 50th conversation is test, the rest train.
"""

from __future__ import annotations

from tasks.common import Task, load_task_records

SPLITS = ("train", "test")
OFFLINE_TEST_EVERY = 50
OFFLINE_NOTE = (f"SmolTalk is not available offline: serving chitchat + natural_instructions conversations "
                f"(every {OFFLINE_TEST_EVERY}th is test)")


class SmolTalk(Task):
    def __init__(self, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        if split not in SPLITS:
            raise ValueError(f"SmolTalk split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split = split
        records, self.source = load_task_records(
            f"SmolTalk {split}", ("HuggingFaceTB/smol-smoltalk", None, split),
            [("chitchat", "train"), ("natural_instructions", "train")], offline_note=OFFLINE_NOTE)
        if self.source == "offline":
            records = [r for i, r in enumerate(records) if (i % OFFLINE_TEST_EVERY == 0) == (split == "test")]
        self.records = records

    def num_examples(self) -> int:
        return len(self.records)

    def get_example(self, index: int) -> dict:
        return {"messages": self.records[index]["messages"]}
