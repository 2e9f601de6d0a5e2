"""nanochat.core_eval: prompts, few-shot draws, truncation, the batched scorer against a naive
per-sequence reference, and hand-computed accuracies / CORE on a bigram model that knows the answers."""

from types import SimpleNamespace

import pytest
import torch

from _fake_hub import write_fake_hub
from nanochat import core_eval
from nanochat.core_eval import (CoreTask, centered_accuracy, evaluate_core, evaluate_task, fewshot_indices,
                                load_core_tasks, render_item, tokenize_item)
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_world):
    return Tokenizer.load(tiny_world / "tokenizer")


class Bigram(torch.nn.Module):
    """logits[b, t] = table[idx[b, t]]: the next token depends on the current one only."""

    def __init__(self, vocab_size: int, sequence_len: int = 512):
        super().__init__()
        self.table = torch.zeros(vocab_size, vocab_size)
        self.config = SimpleNamespace(sequence_len=sequence_len, vocab_size=vocab_size)

    def forward(self, idx):
        return self.table[idx]  # (B, T, V)

    def prefer(self, chain: list[int], strength: float = 10.0):
        for a, b in zip(chain, chain[1:]):
            self.table[a, b] = strength


def mc_task():
    golds = [1, 1, 1, 0]
    items = [{"query": f"Item {i} happened, therefore", "choices": ["it rained.", "the cat slept."], "gold": g}
             for i, g in enumerate(golds)]
    return CoreTask("mc", "multiple_choice", 1, " ", 50, items)


def schema_task():
    items = [{"context_options": [f"Ann {i} helped Bob so Ann", f"Ann {i} helped Bob so Bob"],
              "continuation": "said thanks.", "gold": 1} for i in range(3)]
    return CoreTask("schema", "schema", 2, " ", 50, items)


def lm_task():
    items = [{"context": f"  The dog {i} sat on the ", "continuation": c}
             for i, c in enumerate(["mat", "mat", "rug", "mat"])]
    return CoreTask("lm", "language_modeling", 1, "\nAnswer: ", 0, items)


# ------------------------------------------------------------------------------------------------
# prompts


def test_fewshot_indices():
    draw = fewshot_indices(10, 3, 5)
    assert draw == fewshot_indices(10, 3, 5) and len(set(draw)) == 5 and 3 not in draw
    assert all(0 <= j < 10 for j in draw)
    assert sorted(fewshot_indices(4, 0, 10)) == [1, 2, 3]  # clamped to the other items
    assert fewshot_indices(1, 0, 3) == [] and fewshot_indices(10, 2, 0) == []
    assert all(i not in fewshot_indices(5, i, 4) for i in range(5))


def test_render_item_each_type():
    t = mc_task()
    (shot,) = fewshot_indices(4, 0, 1)
    ex = t.items[shot]
    prefix = f"{ex['query']} {ex['choices'][ex['gold']]}\n\n"
    assert render_item(t, 0) == [(prefix + "Item 0 happened, therefore", " it rained."),
                                 (prefix + "Item 0 happened, therefore", " the cat slept.")]
    s = schema_task()
    pairs = render_item(s, 1)
    assert [c.split("\n\n")[-1] for c, _ in pairs] == ["Ann 1 helped Bob so Ann", "Ann 1 helped Bob so Bob"]
    assert all(x == " said thanks." for _, x in pairs) and pairs[0][0].count("said thanks.") == 2
    lm = lm_task()
    ((context, continuation),) = render_item(lm, 2)
    assert context.endswith("The dog 2 sat on the\nAnswer:") and continuation == " rug"
    assert context.count("\n\n") == 1 and "\nAnswer: mat\n\n" in context


def test_tokenize_item_and_left_truncation(tok):
    t = lm_task()
    ((ids, start, end),) = tokenize_item(tok, t, 0, max_len=10_000)
    cont = tok.encode(" mat")
    assert ids[0] == tok.get_bos_token_id() and ids[start:end] == cont and end == len(ids)
    assert tok.decode(ids[1:start]) == render_item(t, 0)[0][0]
    ((short, s2, e2),) = tokenize_item(tok, t, 0, max_len=8)
    assert len(short) == 8 and short[0] == tok.get_bos_token_id()
    assert short[1:] == ids[len(ids) - 7:] and short[s2:e2] == cont


# ------------------------------------------------------------------------------------------------
# the batched scorer is the naive one


def test_batched_forward_matches_per_sequence_reference(tok):
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=32)
    model = GPT(config)
    model.init_weights()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # the zero-initialised head would make every token tie
    model.eval()
    seqs = []
    for task in (mc_task(), schema_task(), lm_task()):
        for i in range(len(task.items)):
            seqs += tokenize_item(tok, task, i, max_len=64)
    no_autocast = torch.autocast("cpu", enabled=False)
    losses, greedy = core_eval._forward_sequences(model, seqs, tok.get_bos_token_id(), "cpu", no_autocast)
    for (ids, start, end), loss, ok in zip(seqs, losses, greedy):
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0]  # (T, V), alone and unpadded
        logp = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(ids[start:end])
        ref = -logp[start - 1 : end - 1].gather(1, targets[:, None]).mean().item()
        assert loss == pytest.approx(ref, rel=1e-5, abs=1e-5)
        assert ok == bool((logits[start - 1 : end - 1].argmax(-1) == targets).all())
    results = {b: [evaluate_task(model, tok, t, "cpu", batch_tokens=b) for t in (mc_task(), schema_task(), lm_task())]
               for b in (1, 50, 100_000)}
    assert results[1] == results[50] == results[100_000]


# ------------------------------------------------------------------------------------------------
# hand-computed accuracies on a bigram model that knows some of the answers


def oracle(tok) -> Bigram:
    """A bigram model that prefers choice 1 of mc_task, option "...Bob" of schema_task, and " mat"
    after "Answer:" in lm_task."""
    model = Bigram(tok.vocab_size)
    for t in tok.encode(" the cat slept."):  # every token of choice 1 likely after anything
        model.table[:, t] = 5.0
    last_bob = tok.encode("Ann 0 helped Bob so Bob")[-1]
    assert last_bob != tok.encode("Ann 0 helped Bob so Ann")[-1]
    model.prefer([last_bob, tok.encode(" said thanks.")[0]])
    model.prefer([tok.encode("Answer:")[-1]] + tok.encode(" mat"))
    return model


def test_accuracy_per_type_and_core_by_hand(tok):
    mc, schema, lm = mc_task(), schema_task(), lm_task()
    model = oracle(tok)
    assert evaluate_task(model, tok, mc, "cpu") == 0.75  # golds 1, 1, 1, 0: the last item misses
    assert evaluate_task(model, tok, schema, "cpu") == 1.0
    assert evaluate_task(model, tok, lm, "cpu") == 0.75  # the "rug" item misses
    assert evaluate_task(model, tok, lm, "cpu", max_items=2) in (0.5, 1.0)

    assert centered_accuracy(0.75, 50) == pytest.approx(0.5)
    assert centered_accuracy(0.25, 25) == 0.0 and centered_accuracy(1.0, 9.1) == pytest.approx(1.0)
    result = evaluate_core(model, tok, "cpu", tasks=[mc, schema, lm], label="CORE (test, 3 tasks)")
    by_task = {k: (v["accuracy"], v["centered"]) for k, v in result["tasks"].items()}
    assert by_task == {"mc": (0.75, pytest.approx(0.5)), "schema": (1.0, 1.0), "lm": (0.75, 0.75)}
    assert result["label"] == "CORE (test, 3 tasks)"
    assert result["core"] == pytest.approx((0.5 + 1.0 + 0.75) / 3)


# ------------------------------------------------------------------------------------------------
# where the tasks come from


def test_offline_tasks_from_the_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    write_fake_hub(tmp_path)
    import tasks.common

    monkeypatch.setattr(tasks.common, "probe_url", lambda url: f"{url} unreachable: test")
    core_tasks, label, where = load_core_tasks("auto")
    assert label == "CORE (offline, 3 tasks)"
    assert [t.label for t in core_tasks] == ["copa", "winogrande", "lambada_openai"]
    assert "unreachable: test" in where and "not the published CORE" in capsys.readouterr().out
    copa = core_tasks[0]
    summary = (copa.icl_task_type, copa.num_fewshot, copa.random_baseline, len(copa.items))
    assert summary == ("multiple_choice", 0, 50, 6)
    with pytest.raises(ValueError, match="source must be"):
        load_core_tasks("sometimes")


def _bundle_zip(path):
    """A DCLM-style eval bundle with two tasks, zipped under eval_bundle/."""
    import json
    import zipfile

    core_yaml = ("icl_tasks:\n"
                 "- label: copa\n  dataset_uri: commonsense_reasoning/copa.jsonl\n  num_fewshot: [0]\n"
                 "  icl_task_type: multiple_choice\n"
                 "- label: lambada_openai\n  dataset_uri: language_understanding/lambada_openai.jsonl\n"
                 "  num_fewshot: [0]\n  icl_task_type: language_modeling\n  continuation_delimiter: ' '\n")
    meta_csv = "Eval Task,Task Category,Random baseline\ncopa,commonsense reasoning,50\nlambada_openai,lu,0\n"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("eval_bundle/core.yaml", core_yaml)
        zf.writestr("eval_bundle/eval_meta_data.csv", meta_csv)
        zf.writestr("eval_bundle/eval_data/commonsense_reasoning/copa.jsonl",
                    json.dumps({"query": "It rained, therefore", "choices": ["we got wet.", "we flew."],
                                "gold": 0}) + "\n")
        zf.writestr("eval_bundle/eval_data/language_understanding/lambada_openai.jsonl",
                    json.dumps({"context": "He opened the", "continuation": "door"}) + "\n")


def test_online_bundle_over_loopback_then_local_cache(tmp_path, monkeypatch, capsys):
    import functools
    import http.server
    import threading

    served = tmp_path / "www"
    served.mkdir()
    _bundle_zip(served / "eval_bundle.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = tmp_path / "base"
        monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
        monkeypatch.setattr(core_eval, "BUNDLE_URL", f"http://127.0.0.1:{server.server_address[1]}/eval_bundle.zip")
        core_tasks, label, where = load_core_tasks("online")
    finally:
        server.shutdown()
    assert label == "CORE" and "eval bundle from http://127.0.0.1" in where
    assert [(t.label, t.icl_task_type, t.num_fewshot, t.random_baseline, len(t.items)) for t in core_tasks] == [
        ("copa", "multiple_choice", 0, 50.0, 1), ("lambada_openai", "language_modeling", 0, 0.0, 1)]
    assert core_tasks[0].continuation_delimiter == " " and (base / "eval_bundle" / "core.yaml").is_file()
    assert not (base / "eval_bundle.zip").exists()
    core_eval._LOADED.clear()  # a new run: the unpacked bundle is the local cache, no network needed
    monkeypatch.setattr(core_eval, "BUNDLE_URL", "http://127.0.0.1:9/unreachable.zip")
    assert load_core_tasks("auto")[1:] == ("CORE", f"eval bundle in {base / 'eval_bundle'}")
    assert "CORE tasks: 2 from the eval bundle in" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# nanochat scoring: each of its four differences from dclm, on hand-made items


def test_nanochat_span_starts_where_the_choices_differ(tok):
    items = [{"query": "Item 0 happened, therefore", "choices": ["the cat slept.", "the dog slept."], "gold": 0}]
    mc = CoreTask("mc", "multiple_choice", 0, " ", 50, items)
    dclm = tokenize_item(tok, mc, 0, 10_000)
    assert [tok.decode(ids[s:e]) for ids, s, e in dclm] == [" the cat slept.", " the dog slept."]
    seqs = tokenize_item(tok, mc, 0, 10_000, scoring="nanochat")
    (a, start, _), (b, start_b, _) = seqs
    assert start == start_b > dclm[0][1]  # " the" is shared, so nanochat does not score it
    assert a[:start] == b[:start] and a[start] != b[start]
    assert tok.decode(a[:start]).endswith("therefore the") and all(e == len(ids) for ids, _, e in seqs)

    items = [{"context_options": ["Ann called Bob", "Cid called Bob"], "continuation": "at noon.", "gold": 0}]
    schema = CoreTask("schema", "schema", 0, " ", 50, items)
    assert {tok.decode(ids[s:e]) for ids, s, e in tokenize_item(tok, schema, 0, 10_000)} == {" at noon."}
    spans = {tok.decode(ids[s:e]) for ids, s, e in tokenize_item(tok, schema, 0, 10_000, scoring="nanochat")}
    assert spans == {" called Bob at noon."}  # the common suffix reaches back into the options


def test_nanochat_keeps_the_leading_space():
    items = [{"query": "The dog", "choices": [" runs fast.", " sits still."], "gold": 0}]  # hellaswag style
    task = CoreTask("hellaswag", "multiple_choice", 0, " ", 25, items)
    assert render_item(task, 0) == [("The dog", " runs fast."), ("The dog", " sits still.")]
    assert [c + x for c, x in render_item(task, 0, "nanochat")] == ["The dog  runs fast.", "The dog  sits still."]


def test_nanochat_does_not_truncate(tok):
    t = lm_task()
    ((ids, start, end),) = tokenize_item(tok, t, 0, max_len=10_000, scoring="nanochat")
    assert tokenize_item(tok, t, 0, max_len=8, scoring="nanochat") == [(ids, start, end)]
    assert len(tokenize_item(tok, t, 0, max_len=8)[0][0]) == 8  # dclm drops the oldest tokens
    assert tok.decode(ids[start:end]) == " mat" and tok.decode(ids[1:start]).endswith("sat on the\nAnswer:")


class Recording(Tokenizer):
    """The real tokenizer, keeping every text it encodes."""

    def __init__(self, enc):
        super().__init__(enc)
        self.texts = []

    def encode(self, text, *args, **kwargs):
        self.texts += [text] if isinstance(text, str) else text
        return super().encode(text, *args, **kwargs)


def test_nanochat_fewshot_from_the_shuffled_cropped_list(tok):
    import random

    items = [{"query": f"Q{i} is", "choices": [f"a{i}", f"b{i}"], "gold": i % 2} for i in range(10)]
    task = CoreTask("mc", "multiple_choice", 2, " ", 50, items)
    rec = Recording(tok.enc)
    used, predicted = core_eval.predict_task(Bigram(tok.vocab_size), rec, task, "cpu", max_items=4, scoring="nanochat")
    data = list(items)  # nanochat: shuffle with Random(1337), crop, then draw shots from the cropped list by position
    random.Random(1337).shuffle(data)
    data = data[:4]
    expected = []
    for idx, item in enumerate(data):
        shots = [data[j] for j in random.Random(1234 + idx).sample([j for j in range(4) if j != idx], 2)]
        prefix = "".join(f"{s['query']} {s['choices'][s['gold']]}\n\n" for s in shots)
        expected += [f"{prefix}{item['query']} {c}" for c in item["choices"]]
    assert rec.texts == expected
    assert [items[i] for i in used] == data and predicted == [0, 0, 0, 0]  # a flat model: all tie, first wins

    # 2 items, 2 shots: nanochat's pool holds one other item (nanochat itself crashes), dclm's all ten
    for scoring, shots in (("nanochat", 1), ("dclm", 2)):
        rec.texts.clear()
        predictions = core_eval.predict_task(Bigram(tok.vocab_size), rec, task, "cpu", max_items=2, scoring=scoring)[1]
        assert predictions == [0, 0]
        prompts = [t for t in rec.texts if "Q" in t]  # dclm encodes the continuations " a0" apart
        assert len(prompts) == 4 and all(t.count("\n\n") == shots for t in prompts)


def test_nanochat_empty_span_and_labels():
    nan = float("nan")
    assert core_eval._predict([nan, 1.0], "nanochat") == 0  # min() keeps a leading nan
    assert core_eval._predict([1.0, nan, 0.5], "nanochat") == 2  # and never picks a later one
    assert core_eval._predict([nan, 1.0], "dclm") == 1 and core_eval._predict([0.5, 0.5], "dclm") == 0
    assert core_eval.scored_label("CORE", "dclm") == "CORE"
    assert core_eval.scored_label("CORE", "nanochat") == "CORE (nanochat scoring)"
    label = core_eval.scored_label("CORE (offline, 20 tasks)", "nanochat")
    assert label == "CORE (offline, 20 tasks, nanochat scoring)"
    with pytest.raises(ValueError, match="scoring must be one of"):
        core_eval.predict_task(Bigram(8), None, lm_task(), "cpu", scoring="lm-eval")


def test_nanochat_scoring_end_to_end_on_the_oracle(tok):
    """The oracle knows the answers either way; evaluate_core names the scoring in its label."""
    model = oracle(tok)
    result = evaluate_core(model, tok, "cpu", tasks=[mc_task(), schema_task(), lm_task()], label="CORE (test, 3 tasks)",
                           scoring="nanochat")
    assert result["label"] == "CORE (test, 3 tasks, nanochat scoring)" and result["scoring"] == "nanochat"
    assert result["tasks"]["schema"]["accuracy"] == 1.0 and result["tasks"]["lm"]["accuracy"] == 0.75
