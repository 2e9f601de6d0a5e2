"""Chat training: mid_train, chat_sft and chat_rl end to end on a tiny base checkpoint; the SFT mask;
the RL mechanism on a toy task whose reward is easy to get."""

import json
import re

import pytest
import torch

from _fake_hub import write_fake_hub
from conftest import run_script
from nanochat.checkpoint_manager import build_model, last_step
from nanochat.dataloader import padded_batch
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.rl import policy_gradient_backward, rollout
from nanochat.tokenizer import Tokenizer
from tasks.common import Task

from dev.gen_identity import generate


@pytest.fixture(scope="module")
def chat_base(tiny_base_checkpoint, tmp_path_factory):
    """A base dir with the tiny base checkpoint, the fake offline hub and identity conversations."""
    base = tmp_path_factory.mktemp("chat_base")
    for name in ("tokenizer", "base_checkpoints"):
        (base / name).symlink_to(tiny_base_checkpoint / name)
    (base / "identity_conversations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in generate(20, 0)))
    return write_fake_hub(base)


CPU = ["--device-type=cpu", "--dtype=float32"]


def losses(out: str) -> list[float]:
    return [float(x) for x in re.findall(r"\| loss ([\d.]+)", out)]


def test_mid_train(chat_base):
    out = run_script("scripts.mid_train", *CPU, "--device-batch-size=2", "--total-batch-size=256",
                     "--num-iterations=6", "--eval-every=3", "--eval-tokens=256", base=chat_base).stdout
    assert len(losses(out)) == 6 and all(x == x for x in losses(out))
    assert len(re.findall(r"\| val bpb ([\d.]+)", out)) == 3
    ckpt = chat_base / "mid_checkpoints" / "d1"
    assert last_step(ckpt) == 6
    build_model(ckpt, 6, "cpu", tokenizer=Tokenizer.load(chat_base / "tokenizer"))


def test_chat_sft_from_base(chat_base):
    out = run_script("scripts.chat_sft", *CPU, "-i", "base", "--device-batch-size=2", "--target-examples-per-step=4",
                     "--num-iterations=4", "--eval-every=2", "--eval-examples=4", "--metrics-max-problems=4",
                     base=chat_base).stdout
    assert len(losses(out)) == 4 and "ARC-Easy" in out and "MMLU" in out
    build_model(chat_base / "sft_checkpoints" / "d1", 4, "cpu", tokenizer=Tokenizer.load(chat_base / "tokenizer"))


def test_chat_rl_from_base(chat_base):
    out = run_script("scripts.chat_rl", *CPU, "-i", "base", "--num-steps=2", "--examples-per-step=2",
                     "--num-samples=2", "--max-new-tokens=8", "--eval-every=1", "--eval-examples=2",
                     "--eval-samples=2", base=chat_base).stdout
    assert len(re.findall(r"mean reward ([\d.]+)", out)) == 2 and "pass@2" in out
    build_model(chat_base / "rl_checkpoints" / "d1", 2, "cpu", tokenizer=Tokenizer.load(chat_base / "tokenizer"))


@pytest.mark.slow  # two SFT runs end to end
def test_chat_sft_resume_and_auto_batch(chat_base, tmp_path):
    base = tmp_path / "base"  # chat_base without its SFT checkpoints
    base.mkdir()
    for entry in chat_base.iterdir():
        if entry.name != "sft_checkpoints":
            (base / entry.name).symlink_to(entry)
    # stop at step 2 (move its checkpoint aside), resume to 4: the same losses as straight through
    common = [*CPU, "-i", "base", "--target-examples-per-step=4", "--num-iterations=4", "--eval-every=-1",
              "--eval-examples=2", "--metrics-every=-1", "--metrics-max-problems=2", "--save-every=2"]
    straight = run_script("scripts.chat_sft", *common, "--device-batch-size=auto", base=base).stdout
    assert "--device-batch-size auto: 4" in straight  # CPU: the largest candidate up to 8 that divides 4
    root = base / "sft_checkpoints"
    (root / "d1").rename(root / "straight")
    (root / "d1").mkdir()
    (root / "straight" / "step_000002").rename(root / "d1" / "step_000002")
    resumed = run_script("scripts.chat_sft", *common, "--device-batch-size=2", "--resume", base=base).stdout
    assert "resumed from" in resumed
    # micro-batches of 4 vs 2 add up to the same step: equal up to float rounding
    assert losses(resumed)[-2:] == pytest.approx(losses(straight)[-2:], rel=1e-4)


def test_missing_source_checkpoint_is_one_sentence(tmp_path):
    for script in ("scripts.mid_train", "scripts.chat_sft"):
        proc = run_script(script, *CPU, base=tmp_path, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(f"{script.split('.')[1]}: no checkpoints in")


@pytest.mark.slow
def test_chat_sft_two_processes(chat_base):
    out = run_script("scripts.chat_sft", *CPU, "-i", "base", "--device-batch-size=1", "--target-examples-per-step=4",
                     "--num-iterations=2", "--eval-every=-1", "--eval-examples=2", "--metrics-max-problems=2",
                     base=chat_base, nproc=2).stdout
    assert len(losses(out)) == 2


# ---------------------------------------------------------------------------------------------
# units


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_from_iterator(["hello there, the quick brown fox jumps over the lazy dog"] * 20, 300)


def test_only_supervised_tokens_carry_loss(tok):
    conv = {"messages": [{"role": "user", "content": "hi there"},
                         {"role": "assistant", "content": [{"type": "text", "text": "sum "},
                                                           {"type": "python", "text": "1+2"},
                                                           {"type": "python_output", "text": "3"},
                                                           {"type": "text", "text": " done"}]}]}
    ids, mask = tok.render_conversation(conv)
    short = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    x, y = padded_batch([(ids, mask), tok.render_conversation(short)], pad_id=0)
    supervised = [t for t, m in zip(ids[1:], mask[1:]) if m == 1]
    assert y[0][y[0] >= 0].tolist() == supervised
    assert (x[0, : len(ids) - 1] == torch.tensor(ids[:-1])).all()
    user_and_tool = {tok.encode_special(s) for s in ("<|user_start|>", "<|user_end|>", "<|output_start|>",
                                                      "<|output_end|>", "<|assistant_start|>")}
    assert not user_and_tool & set(y[0].tolist())
    # a fully masked row gives a zero loss sum, never NaN
    model = _tiny_model(tok.vocab_size)
    none = torch.full_like(y, -1)
    loss = model(x, none, loss_reduction="none").sum()
    assert loss.item() == 0.0


def _tiny_model(vocab: int) -> GPT:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(GPTConfig(sequence_len=64, vocab_size=vocab, n_layer=1, n_head=2, n_kv_head=2, n_embd=64))
    model.to_empty(device="cpu")
    model.init_weights()
    return model


class LetterE(Task):
    """Toy RL task: reward 1 when the completion contains the letter e."""

    def num_examples(self):
        return 100

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": "say something"}, {"role": "assistant", "content": ""}]}

    def reward(self, conversation, completion):
        return float("e" in completion)


def test_rl_raises_an_easy_reward(tok):
    torch.set_num_threads(1)
    model = _tiny_model(tok.vocab_size)
    engine = Engine(model, tok)
    task = LetterE()
    optimizers = model.setup_optimizers()
    means = []
    for step in range(12):
        rollouts = [rollout(engine, tok, task, i, num_samples=8, max_tokens=3, seed=100 * step + i) for i in range(4)]
        means.append(float(torch.cat([r.rewards for r in rollouts]).mean()))
        num_tokens = sum(r.num_sampled() for r in rollouts)
        for r in rollouts:
            policy_gradient_backward(model, r, num_tokens)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    assert sum(means[-3:]) / 3 > sum(means[:3]) / 3 + 0.2, means
