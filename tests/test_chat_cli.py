"""scripts.chat_cli end to end on the tiny base checkpoint: one-shot, interactive, missing checkpoint.

Each run pays for importing torch (seconds on a busy 2-core box), so the cases share runs."""

import os
import select
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_script


def test_one_shot_prints_a_reply(tiny_base_checkpoint):
    proc = run_script("scripts.chat_cli", "-i", "base", "-p", "hello", "--max-tokens", "8", "--device-type", "cpu",
                      base=tiny_base_checkpoint, timeout=120)
    assert proc.stdout.strip(), f"no reply:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr


@pytest.fixture
def chat_world(tiny_world, tmp_path):
    """The tiny world's tokenizer plus an SFT checkpoint of a scripted model that answers every
    prompt with a calculator call: <|python_start|>2+3<|python_end|>, then (after the forced
    output) "!" and <|assistant_end|>. Exercises chat mode, history and the tool display."""
    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.tokenizer import Tokenizer
    from test_engine import scripted

    world = tmp_path / "world"
    shutil.copytree(tiny_world / "tokenizer", world / "tokenizer")
    tok = Tokenizer.load(world / "tokenizer")
    sp = {name: tok.encode_special(name) for name in tok.get_special_tokens()}
    two, plus, three = tok.encode("2+3")
    (bang,) = tok.encode("!")
    model = scripted(tok, {sp["<|assistant_start|>"]: [sp["<|python_start|>"]], sp["<|python_start|>"]: [two],
                           two: [plus], plus: [three], three: [sp["<|python_end|>"]],
                           sp["<|output_end|>"]: [bang], bang: [sp["<|assistant_end|>"]]}, sequence_len=256)
    save_checkpoint(world / "sft_checkpoints" / "d1", 1, model, None, {"model_config": model.config.to_dict()})
    return world


def test_interactive_chat_via_stdin(chat_world):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(chat_world), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "scripts.chat_cli", "-i", "sft", "--max-tokens", "20",
                           "--device-type", "cpu"],
                          input="hi\n/help\nwhat next?\n/nonsense\nclear\nthe dog\nquit\nnever read\n",
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    assert "User: hi" in out and "User: the dog" in out  # piped input is echoed
    assert "(new conversation)" in out
    # commands are answered by the CLI, never sent to the model
    assert "/clear  start a new conversation" in out and "unknown command /nonsense" in out
    # three replies (the line after 'quit' is never answered), each the scripted tool call
    assert out.count("Assistant: [calculator: 2+3 = 5]!\n") == 3, out


def test_missing_checkpoint_is_one_clear_error(tiny_base_checkpoint):
    # no SFT stage in the tiny world
    proc = run_script("scripts.chat_cli", "-i", "sft", "-p", "hi", "--device-type", "cpu", base=tiny_base_checkpoint,
                      check=False, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chat_cli: ") and "sft_checkpoints" in lines[0], proc.stderr


def test_empty_prompt_is_refused(tiny_base_checkpoint):
    proc = run_script("scripts.chat_cli", "-i", "base", "-p", "  ", "--device-type", "cpu", base=tiny_base_checkpoint,
                      check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "python -m scripts.chat_cli: error: -p/--prompt is empty: give the text to answer, or leave -p out to chat"


class Terminal:
    """A process on a pseudo-terminal: what it prints is read back, keys are written to it."""

    def __init__(self, cmd: list[str], env: dict):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.out, self.pos = b"", 0

    def expect(self, text: bytes, timeout: float = 120) -> None:
        """Wait for `text` after what was already matched; the next expect starts after it."""
        deadline = time.monotonic() + timeout
        while (i := self.out.find(text, self.pos)) < 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in:\n{self.out.decode(errors='replace')[-2000:]}")
            if select.select([self.master], [], [], 1)[0]:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # EIO: the process is gone and its output was read
                    data = b""
                if not data:
                    raise AssertionError(f"exited without {text!r}:\n{self.out.decode(errors='replace')[-2000:]}")
                self.out += data
        self.pos = i + len(text)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


def test_terminal_line_editing_history_and_commands(chat_world):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(chat_world), "OMP_NUM_THREADS": "1", "TERM": "xterm"}
    term = Terminal([sys.executable, "-m", "scripts.chat_cli", "-i", "sft", "--max-tokens", "20",
                     "--device-type", "cpu"], env)
    try:
        term.expect(b"User: ")
        term.type("/help\r")
        term.expect(b"/exit   leave")
        term.expect(b"User: ")
        term.type("hi\r")
        term.expect(b"Assistant: [calculator: 2+3 = 5]!")
        term.expect(b"User: ")
        term.type("/cler\x1b[Da\r")  # readline: cursor left, insert the missing letter -> /clear
        term.expect(b"(new conversation)")
        term.expect(b"User: ")
        term.type("\x1b[A\r")  # arrow up recalls /clear from the history
        term.expect(b"(new conversation)")
        term.expect(b"User: ")
        term.type("/exit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    out = term.out.decode(errors="replace")
    assert "Traceback" not in out and "unknown command" not in out and out.count("Assistant:") == 1, out
    history = (chat_world / "chat_history").read_text().splitlines()
    assert history[-4:] == ["/help", "hi", "/clear", "/exit"], history  # a repeated line is kept once
