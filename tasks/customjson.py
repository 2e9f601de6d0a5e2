"""CustomJSON: conversations from any .jsonl file (identity, tool use, your own data).

    CustomJSON("~/.cache/nanochat/identity_conversations.jsonl")

One conversation per line: `{"messages": [...]}` or just the list of messages. Messages follow
the chat format (roles alternate starting with the user, an optional leading system message,
assistant content a str or a list of text/python/python_output parts) and end with the
assistant. Every bad line is reported with its line number, all at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nanochat.tokenizer import _validated_messages  # the chat format's one validator
from tasks.common import Task, TaskDataError

MAX_REPORTED = 20


def parse_conversation(line: str) -> dict:
    """One jsonl line -> {"messages": [...]}; ValueError saying what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    conversation = {"messages": obj} if isinstance(obj, list) else obj
    messages = _validated_messages(conversation)
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's (nothing to learn otherwise)")
    return {"messages": conversation["messages"]}


class CustomJSON(Task):
    def __init__(self, filepath: str | os.PathLike, **kwargs):
        super().__init__(**kwargs)
        self.path = Path(filepath).expanduser()
        if not self.path.is_file():
            raise TaskDataError(f"conversation file {self.path} does not exist")
        self.conversations: list[dict] = []
        errors: list[str] = []
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    self.conversations.append(parse_conversation(line))
                except ValueError as e:
                    errors.append(f"{self.path}:{lineno}: {e}")
        if errors:
            more = f"\n... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
            raise TaskDataError(f"{len(errors)} bad line(s) in {self.path}:\n"
                                + "\n".join(errors[:MAX_REPORTED]) + more)
        if not self.conversations:
            raise TaskDataError(f"{self.path} has no conversations")

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return self.conversations[index]
