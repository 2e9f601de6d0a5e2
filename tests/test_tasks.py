"""tasks/: records -> conversations for every task, scoring, mixtures, and the source resolution,
all on a tiny hand-made offline hub (Hugging Face switched off with HF_HUB_OFFLINE)."""

import json

import pytest

from _fake_hub import ARC_TEST, GSM8K_TEST, HUMANEVAL_TEST, write_fake_hub
from tasks import common
from tasks.arc import ARC
from tasks.common import (Task, TaskDataError, TaskMixture, TaskSequence, completion_text, load_task_records,
                          render_mc)
from tasks.customjson import CustomJSON
from tasks.gsm8k import GSM8K, extract_answer, solution_parts
from tasks.humaneval import HumanEval, extract_code
from tasks.mmlu import MMLU
from tasks.smoltalk import SmolTalk
from tasks.spellingbee import SimpleSpelling, SpellingBee, split_words


@pytest.fixture
def hub_base(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return write_fake_hub(tmp_path)


class ListTask(Task):
    def __init__(self, items, **kwargs):
        super().__init__(**kwargs)
        self.items = items

    def num_examples(self):
        return len(self.items)

    def get_example(self, index):
        return self.items[index]


# ------------------------------------------------------------------------------------------------
# common


def test_render_mc():
    text = render_mc("  Which is a gas? ", ["A", "B", "C"], ["ice", "steam ", "rock"])
    assert text == "Which is a gas?\n\nA. ice\nB. steam\nC. rock\n\nAnswer with the letter of the correct choice."
    with pytest.raises(ValueError, match="one letter per choice"):
        render_mc("q", ["A", "B"], ["x"])


def test_render_mc_nanochat_template():
    text = render_mc("Which is a gas? ", ["A", "B"], ["ice", "steam "], template="nanochat")  # nothing stripped
    assert text == ("Multiple Choice question: Which is a gas? \n- ice=A\n- steam =B\n\n"
                    "Respond only with the letter of the correct answer.")
    with pytest.raises(ValueError, match="template must be one of ours, nanochat"):
        render_mc("q", ["A"], ["x"], template="mine")


def test_nanochat_indices_are_the_hugging_face_seed_42_shuffle():
    from datasets import Dataset

    from nanochat.chat_metrics import nanochat_indices

    shuffled = Dataset.from_dict({"i": list(range(50))}).shuffle(seed=42)["i"]
    assert nanochat_indices(50, 7) == shuffled[:7] and nanochat_indices(50, -1) == shuffled
    assert nanochat_indices(50, 3, shuffled=False) == [0, 1, 2]


def test_mc_letters_are_the_prompt_tokens(tiny_world):
    from nanochat.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_world / "tokenizer")
    prompt = tok.encode(render_mc("q?", list("ABCD"), ["w", "x", "y", "z"]))
    for letter in "ABCD":
        (lid,) = tok.encode(letter)  # the assistant's answer: one token ...
        assert lid in prompt  # ... which the prompt shows next to its choice


def test_task_view_start_stop_step():
    t = ListTask(list(range(10)), start=2, stop=9, step=3)
    assert len(t) == 3 and list(t) == [2, 5, 8] and t[-1] == 8
    with pytest.raises(IndexError):
        t[3]
    assert len(ListTask(list(range(4)), stop=100)) == 4
    with pytest.raises(ValueError):
        ListTask([], start=3, stop=1)


def test_mixture_is_deterministic_and_oversamples():
    a = ListTask([f"a{i}" for i in range(3)])
    b = ListTask([f"b{i}" for i in range(5)])
    m1, m2 = TaskMixture([a, b, a], seed=7), TaskMixture([a, b, a], seed=7)
    assert list(m1) == list(m2)
    assert list(m1) != list(TaskMixture([a, b, a], seed=8))
    items = list(m1)
    assert len(items) == 11 and all(items.count(f"a{i}") == 2 for i in range(3))
    assert sorted(set(items)) == sorted({*a, *b})
    assert list(TaskMixture([a, b], seed=7, stop=4)) == list(TaskMixture([a, b], seed=7))[:4]
    seq = TaskSequence([a, b])
    assert list(seq) == ["a0", "a1", "a2", "b0", "b1", "b2", "b3", "b4"] and seq[-1] == "b4"


def test_completion_text():
    parts = [{"type": "text", "text": "x = "}, {"type": "python", "text": "1+1"},
             {"type": "python_output", "text": "2"}]
    assert completion_text(parts) == "x = 1+12"
    assert completion_text({"role": "assistant", "content": "hi"}) == "hi"


# ------------------------------------------------------------------------------------------------
# source resolution


def test_offline_source_says_so(hub_base, capsys):
    records, source = load_task_records("ARC-Easy test", ("allenai/ai2_arc", "ARC-Easy", "test"),
                                        [("arc_easy", "test")])
    assert source == "offline" and records == ARC_TEST
    assert "records from the offline hub (arc_easy/test; HF_HUB_OFFLINE is set)" in capsys.readouterr().out


def test_online_source_and_fallback(hub_base, monkeypatch, capsys):
    import datasets

    class FakeDataset:
        def to_list(self):
            return [{"question": "online"}]

    calls = []
    monkeypatch.setattr(common, "hf_unavailable", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or FakeDataset())
    records, source = load_task_records("X", ("some/dataset", "cfg", "test"), [("gsm8k", "test")])
    assert (records, source) == ([{"question": "online"}], "online")
    assert calls == [(("some/dataset", "cfg"), {"split": "test"})]
    assert "from Hugging Face some/dataset/cfg [test]" in capsys.readouterr().out

    def broken(*a, **k):
        raise ConnectionError("gone")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    records, source = load_task_records("Y", ("other/dataset", None, "test"), [("gsm8k", "test")])
    assert source == "offline" and records == GSM8K_TEST
    assert "loading other/dataset from Hugging Face failed: ConnectionError: gone" in capsys.readouterr().out


def test_online_only_split_is_a_clear_error(hub_base):
    with pytest.raises(TaskDataError, match="only available online.*openai/gsm8k.*HF_HUB_OFFLINE"):
        GSM8K("main", "train")


def test_hf_offline_flag_skips_the_probe(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # conftest sets it for the whole suite
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "true")
    monkeypatch.setattr(common, "probe_url", lambda url: pytest.fail("probed"))
    assert common.hf_unavailable() == "HF_DATASETS_OFFLINE is set"


# ------------------------------------------------------------------------------------------------
# multiple choice


def test_arc_conversations(hub_base):
    task = ARC("ARC-Easy", "test")
    assert task.eval_type == "categorical" and len(task) == 4 and task.source == "offline"
    conv = task[0]
    assert conv["letters"] == ["A", "B", "C", "D"]
    prompt = render_mc("Which is a gas?", "ABCD", ["ice", "rock", "steam", "wood"])
    assert conv["messages"] == [{"role": "user", "content": prompt},
                                {"role": "assistant", "content": "C"}]
    assert [task[i]["messages"][-1]["content"] for i in range(4)] == ["C", "A", "C", "B"]
    assert task[1]["letters"] == ["A", "B", "C"] and task[3]["letters"] == list("ABCDE")
    assert task[2]["messages"][0]["content"].splitlines()[2] == "A. one"  # "1".."4" labels become letters
    assert task.evaluate(conv, "C") and task.evaluate(conv, " C\n") and not task.evaluate(conv, "A")
    assert len(ARC("ARC-Challenge", "validation")) == 2
    nano = ARC("ARC-Easy", "test", template="nanochat")
    assert nano[0]["messages"][0]["content"].startswith("Multiple Choice question: Which is a gas?\n- ice=A\n")
    conv = nano[2]  # nanochat keeps the "1".."4" labels
    assert conv["letters"] == ["1", "2", "3", "4"] and conv["messages"][-1]["content"] == "3"
    assert "- three=3\n" in conv["messages"][0]["content"] and nano.evaluate(conv, "3")
    with pytest.raises(ValueError, match="subset"):
        ARC("ARC-Medium", "test")


def test_mmlu_and_auxiliary_train(hub_base, capsys):
    task = MMLU("all", "test")
    assert len(task) == 4 and [c["messages"][-1]["content"] for c in task] == ["C", "D", "A", "C"]
    assert task[1]["subject"] == "geography" and task[1]["letters"] == list("ABCD")
    assert "Paris" in task[1]["messages"][0]["content"]
    assert len(MMLU("all", "dev")) == 2
    assert "\n- Paris=D\n" in MMLU("all", "test", template="nanochat")[1]["messages"][0]["content"]
    aux = MMLU("auxiliary_train", "train")
    assert "mc_train" in capsys.readouterr().out
    assert len(aux) == 2 and aux[0]["letters"] == ["A", "B"] and aux[0]["messages"][-1]["content"] == "B"
    assert aux[1]["letters"] == list("ABCDE") and aux[1]["subject"] == "CommonsenseQA"
    with pytest.raises(ValueError, match="splits"):
        MMLU("all", "train")


# ------------------------------------------------------------------------------------------------
# GSM8K


def test_gsm8k_tool_calls_and_answers(hub_base):
    parts = solution_parts("Janet sells 16 - 3 = <<16-3=13>>13 eggs.\nShe makes 13 * 2 = $<<13*2=26>>26.\n#### 26")
    assert parts == [
        {"type": "text", "text": "Janet sells 16 - 3 = "},
        {"type": "python", "text": "16-3"}, {"type": "python_output", "text": "13"},
        {"type": "text", "text": "13 eggs.\nShe makes 13 * 2 = $"},
        {"type": "python", "text": "13*2"}, {"type": "python_output", "text": "26"},
        {"type": "text", "text": "26.\n#### 26"},
    ]
    assert solution_parts("no calls here\n#### 1") == [{"type": "text", "text": "no calls here\n#### 1"}]
    assert extract_answer("so #### 1,234") == "1234" and extract_answer("#### -3.5") == "-3.5"
    assert extract_answer("#### $18.") == "18" and extract_answer("the answer is 5") is None

    task = GSM8K("main", "test")
    conv = task[1]
    assert conv["messages"][0]["content"] == GSM8K_TEST[1]["question"]
    assert [p["type"] for p in conv["messages"][1]["content"]] == ["text", "python", "python_output", "text", "python",
                                                                   "python_output", "text"]
    assert task.evaluate(conv, "It is 6000.\n#### 6,000") and task.evaluate(conv, "#### 6000.00")
    assert not task.evaluate(conv, "#### 600") and not task.evaluate(conv, "6000")  # the number after ####
    assert task.reward(conv, "#### 6000") == 1.0 and task.reward(conv, "#### 5") == 0.0
    assert task.evaluate(conv, conv["messages"][1]["content"])  # its own solution passes


def test_gsm8k_renders_tool_calls(hub_base, tiny_world):
    from nanochat.tokenizer import Tokenizer

    tok = Tokenizer.load(tiny_world / "tokenizer")
    ids, mask = tok.render_conversation(GSM8K("main", "test")[0])
    py, out = tok.encode_special("<|python_start|>"), tok.encode_special("<|output_start|>")
    assert ids.count(py) == 1 and ids.count(out) == 1
    assert mask[ids.index(py)] == 1 and mask[ids.index(out)] == 0


# ------------------------------------------------------------------------------------------------
# HumanEval (through the real sandbox)


def test_humaneval_scoring(hub_base):
    task = HumanEval()
    assert len(task) == 2 and task.eval_type == "generative"
    conv = task[0]
    assert conv["messages"][1]["content"] == HUMANEVAL_TEST[0]["prompt"] + HUMANEVAL_TEST[0]["canonical_solution"]
    right = "Here you go:\n```python\ndef add(a: int, b: int) -> int:\n    return math.fsum([a, b])\n```\nDone."
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    assert task.evaluate(conv, right)  # uses the prompt's `import math`
    assert not task.evaluate(conv, wrong)
    assert task.evaluate(conv, "    return a + b\n")  # body only: continues the prompt
    assert task.evaluate(conv, conv["messages"][1]["content"])
    assert task.reward(conv, wrong) == 0.0 and task.reward(conv, right) == 1.0
    assert not task.evaluate(task[1], "```python\ndef double(x):\n    while True: pass\n```")  # killed at the deadline


def test_extract_code():
    assert extract_code("a\n```py\nx = 1\n```\nb ```python\ny\n```") == "x = 1\n"
    assert extract_code("```python\nunterminated = 1\n") == "unterminated = 1\n"
    assert extract_code("plain") == "plain"


# ------------------------------------------------------------------------------------------------
# chat data


def test_smoltalk_offline_split(hub_base, capsys):
    train, test = SmolTalk("train"), SmolTalk("test")
    assert len(train) + len(test) == 100 and len(test) == 2
    assert "chitchat" in capsys.readouterr().out
    assert test[0]["messages"][0]["content"] == "chat question 0"
    assert test[1]["messages"][0]["content"] == "chat question 50"
    assert train[0]["messages"][1] == {"role": "assistant", "content": "chat answer 1"}


def test_customjson(tmp_path):
    good = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            [{"role": "system", "content": "be nice"}, {"role": "user", "content": "q"},
             {"role": "assistant", "content": [{"type": "text", "text": "2+2="}, {"type": "python", "text": "2+2"},
                                               {"type": "python_output", "text": "4"}]}]]
    path = tmp_path / "convs.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in good) + "\n\n")
    task = CustomJSON(path)
    assert len(task) == 2 and task[0] == good[0] and task[1] == {"messages": good[1]}

    lines = [json.dumps(good[0]), "{not json", json.dumps({"messages": [{"role": "assistant", "content": "x"}]}),
             json.dumps([{"role": "user", "content": "only a question"}]), json.dumps({"msgs": []}),
             json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "image"}]}])]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskDataError) as e:
        CustomJSON(path)
    msg = str(e.value)
    assert "5 bad line(s)" in msg and f"{path}:1:" not in msg
    assert f"{path}:2: invalid JSON" in msg
    assert f"{path}:3: message 0 should be from the user" in msg
    assert f"{path}:4: the last message must be the assistant's" in msg
    assert f"{path}:5: a conversation is a dict with a 'messages' list" in msg
    assert f"{path}:6: message 1 part 0" in msg
    with pytest.raises(TaskDataError, match="does not exist"):
        CustomJSON(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------------
# spelling


def test_spellingbee(hub_base, tiny_world):
    from nanochat.calculator import evaluate as calculator
    from nanochat.tokenizer import Tokenizer

    a, b = SpellingBee(size=30, split="train", seed=3), SpellingBee(size=30, split="train", seed=3)
    assert list(a) == list(b) and list(a) != list(SpellingBee(size=30, split="train", seed=4))
    test_words = set(split_words(a.words + SpellingBee(size=1, split="test").words, "test"))
    assert test_words and not test_words & set(a.words)
    for conv in a:
        user, parts = conv["messages"][0]["content"], conv["messages"][1]["content"]
        assert [p["type"] for p in parts] == ["text", "python", "python_output", "text"]
        word, letter = parts[1]["text"].split("'")[1], parts[1]["text"].split("'")[3]
        assert word in user and word in a.words
        assert parts[2]["text"] == calculator(parts[1]["text"]) == str(word.count(letter))
        assert parts[3]["text"].endswith(f"#### {word.count(letter)}")
        assert a.evaluate(conv, parts) and a.reward(conv, f"#### {word.count(letter) + 1}") == 0.0
    Tokenizer.load(tiny_world / "tokenizer").render_conversation(a[0])

    spell = SimpleSpelling(size=5, split="test")
    conv = spell[0]
    word = conv["messages"][1]["content"].split(":")[0]
    assert conv["messages"][1]["content"] == f"{word}: {','.join(word)}"
    assert spell.evaluate(conv, f"Sure. {word}: {' '.join(word.upper())}") and not spell.evaluate(conv, "x: y")
