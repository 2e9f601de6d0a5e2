"""ARC (AI2 Reasoning Challenge): grade-school science questions with 3-5 choices, as categorical tasks.

    ARC("ARC-Easy", "test")       # online: allenai/ai2_arc; offline: hub arc_easy / arc_challenge

Records are ai2_arc rows `{"id", "question", "choices": {"text", "label"}, "answerKey"}`. Labels
are "A".."E" or, for ~2% of questions, "1".."4"; the answer letter is taken by position, so both
label styles (and the hub, which always says A..) give the same conversation. template="nanochat"
(render_mc) keeps the dataset's labels as nanochat does.
"""

from __future__ import annotations

from tasks.common import MultipleChoiceTask, load_task_records, mc_conversation

SUBSETS = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}
SPLITS = ("train", "validation", "test")


class ARC(MultipleChoiceTask):
    def __init__(self, subset: str, split: str, template: str = "ours", **kwargs):
        super().__init__(**kwargs)
        self.template = template
        if subset not in SUBSETS:
            raise ValueError(f"ARC subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        if split not in SPLITS:
            raise ValueError(f"ARC split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.subset, self.split = subset, split
        self.records, self.source = load_task_records(f"{subset} {split}", ("allenai/ai2_arc", subset, split),
                                                      [(SUBSETS[subset], split)])

    def num_examples(self) -> int:
        return len(self.records)

    def get_example(self, index: int) -> dict:
        r = self.records[index]
        labels = list(r["choices"]["label"])
        return mc_conversation(r["question"], r["choices"]["text"], labels.index(r["answerKey"]), self.template,
                               letters=labels if self.template == "nanochat" else None, id=r.get("id"))
