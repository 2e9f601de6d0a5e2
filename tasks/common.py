"""What every task shares: the Task view, mixtures, the multiple-choice prompt, and where records come from.

A task turns dataset records into conversations in the one chat format
(`{"messages": [{"role", "content"}, ...]}`, assistant content a str or a list of
`{"type": "text"|"python"|"python_output", "text"}` parts) and knows how to score a completion:

    task = ARC("ARC-Easy", "test", stop=100)       # a start/stop/step view over the records
    conversation = task[0]                          # {"messages": [...], "letters": [...]}
    task.evaluate(conversation, "B")                # True / False

Records come from `load_task_records`, the one source-resolution function: Hugging Face datasets
when huggingface.co answers (the `datasets` library keeps its own local cache), else the offline
hub (nanochat.data.hub), whose records have the same fields. One line says which source served.
"""

from __future__ import annotations

import logging
import math
import os
import random
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from functools import cache

from nanochat.common import get_base_dir, print0

logger = logging.getLogger("nanochat.tasks")

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PROBE_TIMEOUT_S = 3.0  # "is Hugging Face there at all": short, so offline machines fall back at once
_OFF = ("1", "true", "yes", "on")


class TaskDataError(RuntimeError):
    """A task's records cannot be had from any source; the message says what to do."""


# ------------------------------------------------------------------------------------------------
# Source resolution


@cache
def probe_url(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if `url`'s server answers a HEAD request (any status below 500), else a short reason.
    Cached per process: one probe per host and run, not one per task."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        return None if e.code < 500 else f"HTTP {e.code} from {url}"
    except urllib.error.URLError as e:
        return f"{url} unreachable: {e.reason}"
    except OSError as e:
        return f"{url} unreachable: {e}"


def hf_unavailable() -> str | None:
    """None when Hugging Face can be used, else why not. HF_HUB_OFFLINE / HF_DATASETS_OFFLINE
    (the variables the HF libraries themselves honour) answer without any request."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _OFF:
            return f"{var} is set"
    return probe_url(os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/"))


_RECORDS: dict[tuple, tuple[list[dict], str]] = {}  # loaded once per process (mixtures list tasks twice)


def load_task_records(what: str, hf: tuple[str, str | None, str] | None,
                      hub: Sequence[tuple[str, str]] | None, offline_note: str = "") -> tuple[list[dict], str]:
    """Records of one dataset split and the source that served them ("online" or "offline").

    what: a name for the log line ("ARC-Easy test"). hf: (path, config or None, split) of the
    Hugging Face dataset, or None if there is no online source. hub: [(hub dataset, split), ...]
    whose records are concatenated, or None if there is no offline source. offline_note says how the
    offline records differ, if they do. Online failures fall back to the hub with the reason logged."""
    key = (str(get_base_dir()), hf, tuple(hub or ()))
    if key in _RECORDS:
        return _RECORDS[key]
    reason = "no online source" if hf is None else hf_unavailable()
    if reason is None:
        path, config, split = hf
        try:
            from datasets import load_dataset

            records = load_dataset(path, config, split=split).to_list()
            print0(f"{what}: {len(records):,} records from Hugging Face {path}"
                   f"{'/' + config if config else ''} [{split}]")
            _RECORDS[key] = (records, "online")
            return _RECORDS[key]
        except Exception as e:  # noqa: BLE001 -- any failure of the online path means: try the hub
            reason = f"loading {path} from Hugging Face failed: {type(e).__name__}: {str(e)[:200]}"
            logger.warning("%s: %s", what, reason)
    if not hub:
        raise TaskDataError(f"{what} is only available online ({hf[0] if hf else '?'} on Hugging Face) and "
                            f"Hugging Face cannot be used ({reason}); connect to the internet or pick another split")
    from nanochat.data import hub as nanohub

    try:
        records = [r for name, split in hub for r in nanohub.load_records(name, split)]
    except nanohub.HubSourceMissing as e:
        raise TaskDataError(f"{what}: Hugging Face cannot be used ({reason}) and the offline hub failed: {e}") from None
    names = ", ".join(f"{n}/{s}" for n, s in hub)
    print0(f"{what}: {len(records):,} records from the offline hub ({names}; {reason})"
           f"{'; ' + offline_note if offline_note else ''}")
    _RECORDS[key] = (records, "offline")
    return _RECORDS[key]


# ------------------------------------------------------------------------------------------------
# Tasks


class Task:
    """A start/stop/step view over a dataset whose examples are conversations.

    Subclasses implement `num_examples()` (all records) and `get_example(index)`; generative tasks
    also `evaluate(conversation, completion)` (and `reward` where a scalar reward makes sense).
    `eval_type` is "categorical" (score the answer letter's logit) or "generative" (sample, then check)."""

    eval_type = "generative"

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or step < 1 or (stop is not None and stop < start):
            raise ValueError(f"need 0 <= start <= stop and step >= 1, got start={start} stop={stop} step={step}")
        self.start, self.stop, self.step = start, stop, step

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        return max(0, math.ceil((stop - self.start) / self.step))

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{type(self).__name__} index {i} out of range for a view of {n} examples")
        return self.get_example(self.start + i * self.step)

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def evaluate(self, conversation: dict, completion) -> bool:
        raise NotImplementedError(f"{type(self).__name__} has no evaluate()")

    def reward(self, conversation: dict, completion) -> float:
        raise NotImplementedError(f"{type(self).__name__} has no reward: it is not an RL task")


class MultipleChoiceTask(Task):
    """Categorical: the user message is render_mc(...), the assistant message is the answer letter,
    and each conversation carries its allowed `letters` (their number varies, e.g. ARC has 3-5)."""

    eval_type = "categorical"

    def evaluate(self, conversation: dict, completion) -> bool:
        return completion_text(completion).strip() == conversation["messages"][-1]["content"]


MC_TEMPLATES = ("ours", "nanochat")


def render_mc(question: str, letters: Sequence[str], choices: Sequence[str], template: str = "ours") -> str:
    """The multiple-choice prompt. "ours": each letter starts its own line before its choice, so the
    letter the assistant answers with is the same token as the one it reads in the prompt.
    "nanochat": karpathy/nanochat's, the letter after its choice with no space ("- Paris=A"), kept
    to compare ChatCORE with its tables (dev/LOG.md has both measured)."""
    if len(letters) != len(choices) or not choices:
        raise ValueError(f"need one letter per choice, got {len(letters)} letters and {len(choices)} choices")
    if template == "nanochat":
        lines = [f"Multiple Choice question: {question}"] + [f"- {c}={x}" for x, c in zip(letters, choices)]
        return "\n".join(lines) + "\n\nRespond only with the letter of the correct answer."
    if template != "ours":
        raise ValueError(f"multiple-choice template must be one of {', '.join(MC_TEMPLATES)}, got {template!r}")
    lines = [question.strip(), ""]
    lines += [f"{letter}. {str(choice).strip()}" for letter, choice in zip(letters, choices)]
    lines += ["", "Answer with the letter of the correct choice."]
    return "\n".join(lines)


def mc_conversation(question: str, choices: Sequence[str], answer: int, template: str = "ours",
                    letters: Sequence[str] | None = None, **extra) -> dict:
    """A categorical conversation: render_mc prompt -> answer letter, plus the allowed letters
    (default A, B, C, ...; ARC under the nanochat template keeps its own labels, "1".."4" included)."""
    if len(choices) > len(LETTERS) or not 0 <= answer < len(choices):
        raise ValueError(f"answer {answer} is not one of {len(choices)} choices")
    letters = list(letters or LETTERS[: len(choices)])
    return {"messages": [{"role": "user", "content": render_mc(question, letters, choices, template)},
                         {"role": "assistant", "content": letters[answer]}], "letters": letters, **extra}


def completion_text(completion) -> str:
    """A completion as text: a str as is; assistant parts (or a message holding them) joined."""
    if isinstance(completion, dict):
        completion = completion.get("content", "")
    if isinstance(completion, list):
        return "".join(part.get("text", "") for part in completion)
    return str(completion)


class TaskMixture(Task):
    """All examples of several tasks, shuffled once with `seed`. A task listed twice is seen twice
    as often (oversampling). A Task itself, so it can be viewed with start/stop/step."""

    def __init__(self, tasks: Sequence[Task], seed: int = 42, **kwargs):
        super().__init__(**kwargs)
        self.tasks = list(tasks)
        self.index = [(t, i) for t, task in enumerate(self.tasks) for i in range(len(task))]
        random.Random(seed).shuffle(self.index)

    def num_examples(self) -> int:
        return len(self.index)

    def get_example(self, index: int) -> dict:
        t, i = self.index[index]
        return self.tasks[t][i]


class TaskSequence(Task):
    """Tasks one after another, in order (a curriculum)."""

    def __init__(self, tasks: Sequence[Task], **kwargs):
        super().__init__(**kwargs)
        self.tasks = list(tasks)
        self.offsets = [0]
        for task in self.tasks:
            self.offsets.append(self.offsets[-1] + len(task))

    def num_examples(self) -> int:
        return self.offsets[-1]

    def get_example(self, index: int) -> dict:
        for t, task in enumerate(self.tasks):
            if index < self.offsets[t + 1]:
                return task[index - self.offsets[t]]
        raise IndexError(f"TaskSequence index {index} out of range ({self.offsets[-1]} examples)")
