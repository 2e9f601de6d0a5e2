"""scripts.base_eval and scripts.chat_eval end to end on tiny checkpoints and the tiny offline hub."""

import csv

import pytest
import torch

from _fake_hub import write_fake_hub
from conftest import run_script


@pytest.fixture(scope="module")
def eval_base(tiny_base_checkpoint, tmp_path_factory):
    """A base dir holding the tiny base checkpoint (6 steps of training) and the fake hub."""
    base = tmp_path_factory.mktemp("eval_base")
    for name in ("tokenizer", "base_checkpoints"):
        (base / name).symlink_to(tiny_base_checkpoint / name)
    return write_fake_hub(base)


@pytest.fixture(scope="module")
def letter_c_base(tiny_world, tmp_path_factory):
    """A checkpoint whose next-token logits after <|assistant_start|> are, in order: " the" (not a
    letter), then "C", then "A". Zero output projections make every block the identity, so the last
    position's logits are lm_head @ norm(norm(wte[<|assistant_start|>])) = 8 * lm_head[:, 0]."""
    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import Tokenizer

    base = tmp_path_factory.mktemp("letter_c")
    (base / "tokenizer").symlink_to(tiny_world / "tokenizer")
    write_fake_hub(base)
    tok = Tokenizer.load(tiny_world / "tokenizer")
    config = GPTConfig(sequence_len=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=64)
    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        model.transformer.wte.weight[tok.encode_special("<|assistant_start|>")] = torch.eye(64)[0]
        for token, score in ((tok.encode(" the")[0], 1.0), (tok.encode("C")[0], 0.5), (tok.encode("A")[0], 0.2)):
            model.lm_head.weight[token, 0] = score
    save_checkpoint(base / "base_checkpoints" / "d1", 1, model, None, {"model_config": config.to_dict()})
    return base


def test_base_eval(eval_base):
    out = run_script("scripts.base_eval", "-i", "base", "--max-per-task", "4", "--device-type", "cpu",
                     "--dtype", "float32", "--data-source", "offline", base=eval_base).stdout
    assert "CORE (offline, 3 tasks): " in out
    with open(eval_base / "base_eval" / "base_d1_step000006.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["copa", "winogrande", "lambada_openai", "CORE (offline, 3 tasks)"]
    assert [int(r["items"]) for r in rows[:3]] == [4, 4, 4]
    for r in rows[:3]:
        acc, b = float(r["accuracy"]), float(r["random_baseline"]) / 100
        assert 0 <= acc <= 1 and float(r["centered"]) == pytest.approx((acc - b) / (1 - b), abs=1e-5)
    assert float(rows[3]["centered"]) == pytest.approx(sum(float(r["centered"]) for r in rows[:3]) / 3, abs=1e-5)
    section = (eval_base / "report" / "base-model-evaluation.md").read_text()
    assert "## Base model evaluation" in section and "- CORE (offline, 3 tasks): " in section
    assert "- scoring: dclm" in section and {r["scoring"] for r in rows} == {"dclm"}
    out = run_script("scripts.base_eval", "-i", "base", "--max-per-task", "4", "--device-type", "cpu",
                     "--dtype", "float32", "--data-source", "offline", "--scoring", "nanochat", base=eval_base).stdout
    assert "CORE (offline, 3 tasks, nanochat scoring): " in out and "\nCORE: " not in out


def test_base_eval_with_a_bundle_gives_both_scorings(tiny_base_checkpoint, tmp_path):
    """With the real (here: a local, hand-made) DCLM bundle the report gives CORE under both scorings."""
    import json

    from _fake_hub import CORE_ITEMS, CORE_META

    for name in ("tokenizer", "base_checkpoints"):
        (tmp_path / name).symlink_to(tiny_base_checkpoint / name)
    bundle = tmp_path / "eval_bundle"
    (bundle / "eval_data").mkdir(parents=True)
    specs, meta_rows = [], ["Eval Task,Random baseline"]
    for m in (m for m in CORE_META if m["available"]):
        lines = "".join(json.dumps(r) + "\n" for r in CORE_ITEMS[m["label"]])
        (bundle / "eval_data" / f"{m['label']}.jsonl").write_text(lines)
        specs.append({"label": m["label"], "dataset_uri": f"{m['label']}.jsonl", "num_fewshot": [m["num_fewshot"]],
                      "icl_task_type": m["icl_task_type"], "continuation_delimiter": m["continuation_delimiter"]})
        meta_rows.append(f"{m['label']},{m['random_baseline']}")
    (bundle / "core.yaml").write_text(json.dumps({"icl_tasks": specs}))  # JSON is YAML
    (bundle / "eval_meta_data.csv").write_text("\n".join(meta_rows) + "\n")
    out = run_script("scripts.base_eval", "--scoring", "nanochat", "--device-type", "cpu", "--dtype", "float32",
                     base=tmp_path).stdout
    assert "CORE (nanochat scoring): " in out and "\nCORE: " in out
    assert out.index("CORE (nanochat scoring): ") < out.index("\nCORE: ")  # --scoring first
    with open(tmp_path / "base_eval" / "base_d1_step000006.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["task"], r["scoring"]) for r in rows if r["task"].startswith("CORE")] == [
        ("CORE (nanochat scoring)", "nanochat"), ("CORE", "dclm")]
    section = (tmp_path / "report" / "base-model-evaluation.md").read_text()
    assert "- scoring: nanochat, dclm" in section and "- CORE: " in section and "- CORE (nanochat scoring): " in section


def test_base_eval_missing_checkpoint_is_one_sentence(eval_base):
    proc = run_script("scripts.base_eval", "-i", "sft", "--device-type", "cpu", base=eval_base, check=False)
    assert proc.returncode == 1 and "error: no checkpoints in" in proc.stderr and "Traceback" not in proc.stderr


def test_chat_eval_all_tasks_on_a_base_checkpoint(eval_base):
    proc = run_script("scripts.chat_eval", "-i", "base", "-x", "4", "-m", "16", "--device-type", "cpu", "--dtype",
                      "float32", "--report", base=eval_base)
    out = proc.stdout
    assert "HumanEval: 100%" in proc.stderr and "ARC-Easy: 100%" in proc.stderr  # a progress bar per task
    for line in ("ARC-Easy: ", "ARC-Challenge: ", "MMLU: ", "GSM8K: ", "HumanEval: ", "SpellingBee: "):
        assert line in out
    assert "GSM8K: 0/2" in out and "/4 = " in out  # the fake GSM8K has 2 problems
    assert "ChatCORE: " in out and "partial" not in out
    section = (eval_base / "report" / "chat-evaluation-base.md").read_text()
    assert "## Chat evaluation base" in section and "- ChatCORE: " in section and "- HumanEval: " in section


def test_chat_eval_one_off_run_leaves_the_report_alone(eval_base):
    section = eval_base / "report" / "chat-evaluation-base.md"
    before = section.read_text() if section.exists() else None
    out = run_script("scripts.chat_eval", "-i", "base", "-a", "ARC-Easy", "-x", "2", "--device-type", "cpu",
                     "--dtype", "float32", base=eval_base).stdout
    assert "ChatCORE (partial, 1 of 6 tasks)" in out and "pass --report" in out
    assert (section.read_text() if section.exists() else None) == before


def test_chat_eval_categorical_is_restricted_to_the_letters(letter_c_base):
    out = run_script("scripts.chat_eval", "-i", "base", "-a", "ARC-Easy|MMLU", "-b", "3", "--device-type", "cpu",
                     "--dtype", "float32", base=letter_c_base).stdout
    # unrestricted argmax would answer " the" everywhere; among the letters "C" wins: golds C A C B / C D A C
    assert "ARC-Easy: 2/4 = 50.00%" in out and "MMLU: 2/4 = 50.00%" in out
    assert "ChatCORE (partial, 2 of 6 tasks): 0.3333" in out


def test_chat_eval_nanochat_template_keeps_arc_number_labels(letter_c_base):
    out = run_script("scripts.chat_eval", "-i", "base", "-a", "ARC-Easy", "--template", "nanochat",
                     "--device-type", "cpu", "--dtype", "float32", "--report", base=letter_c_base).stdout
    # golds C, A, 3, B: "C" wins among A..E as before, but item 3 offers "1".."4" (all tied: "1")
    assert "ARC-Easy: 1/4 = 25.00%" in out
    section = (letter_c_base / "report" / "chat-evaluation-base.md").read_text()
    assert "- template: nanochat" in section


def test_chat_eval_bad_task_name(eval_base):
    proc = run_script("scripts.chat_eval", "-a", "ARC-Easy|Trivia", base=eval_base, check=False)
    assert proc.returncode == 2 and "unknown task(s) Trivia" in proc.stderr


@pytest.mark.slow
def test_eval_scripts_under_torchrun(eval_base):
    single = run_script("scripts.chat_eval", "-i", "base", "-a", "ARC-Easy|MMLU|SpellingBee", "-x", "4", "-m", "8",
                        "--device-type", "cpu", "--dtype", "float32", base=eval_base).stdout
    double = run_script("scripts.chat_eval", "-i", "base", "-a", "ARC-Easy|MMLU|SpellingBee", "-x", "4", "-m", "8",
                        "--device-type", "cpu", "--dtype", "float32", base=eval_base, nproc=2).stdout
    def scores(out: str) -> list[str]:  # "ARC-Easy: 1/4 = 25.00%" without the timing
        return [line.split(" (")[0] for line in out.splitlines()
                if line.startswith(("ARC-Easy:", "MMLU:", "SpellingBee:"))]

    assert scores(single) == scores(double) and len(scores(single)) == 3

    csv_path = eval_base / "base_eval" / "base_d1_step000006.csv"
    args = ("-i", "base", "--max-per-task", "5", "--device-type", "cpu", "--dtype", "float32",
            "--data-source", "offline")
    run_script("scripts.base_eval", *args, base=eval_base)
    one = csv_path.read_text()
    run_script("scripts.base_eval", *args, base=eval_base, nproc=2)
    assert csv_path.read_text() == one
