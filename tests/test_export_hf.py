"""Hugging Face export and import: stock transformers (NanoChatForCausalLM, no custom code, offline)
loads what scripts.export_hf writes and computes what our GPT computes; the tokenizer and the
chat template give our ids; importing the folder gives back the same weights."""

import json
import os
import random
import runpy
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_docs, run_script
from nanochat.checkpoint_manager import build_model, save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.hf_format import HFFormatError, hf_tokenizer, load_hf, save_hf
from nanochat.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers", minversion="5.0")

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "The cat sat on the mat.\nThen what?"},
                  {"role": "assistant", "content": "It ran under the rug."},
                  {"role": "user", "content": "  and the dog?  "}]},
    {"messages": [{"role": "user", "content": "How much is 123*4 + 5?"},
                  {"role": "assistant", "content": [
                      {"type": "text", "text": "Let me compute: "},
                      {"type": "python", "text": "123*4 + 5"},
                      {"type": "python_output", "text": "497"},
                      {"type": "text", "text": " so it is 497."}]},
                  {"role": "user", "content": "Ça va? 日本語 🙂"},
                  {"role": "assistant", "content": "Très bien, merci!"}]},
]


def mixed_text(seed: int, n_chars: int) -> str:
    """Kilobytes of what real text throws at a byte-level BPE: code, accents, CJK, emoji (with
    joiners and flags), contractions in any case, digit runs, whitespace runs and line endings."""
    pieces = [
        "def f(x):\n    return x**2  # square\n", "\tif (a && b) { return -1; }\r\n", "for i in range(10):\n\t\tpass\n",
        "Héllo wörld, naïve café — déjà vu.", "Übergrößenträger ß ñ ø å œ", "Tiếng Việt có dấu",
        "日本語のテキストと漢字", "中文字符，标点。", "한국어 문장입니다", "Привет, мир!", "مرحبا بالعالم",
        "emoji 😀😂 👩‍👩‍👧 🇫🇷🇯🇵 ✨", "I'LL don't WE'VE they're it's", "3.14159 2025-11-26 1234567890 0x1F",
        "    four spaces", "trailing   \n", "\n\n\n", "   \t  \t", "a\u00a0b\u2009c", "«quotes» “smart” 'single'",
        "!!!??? ... --- *** ###", "The cat sat on the mat.", "e\u0301 (combining accent)",
    ]
    rng = random.Random(seed)
    out = []
    while sum(map(len, out)) < n_chars:
        out.append(rng.choice(pieces) + rng.choice(["", " ", "\n", "  ", "\r\n"]))
    return "".join(out)


def run_in_process(module: str, *args: str, base) -> str | int | None:
    """`python -m module args` with NANOCHAT_BASE_DIR=base inside this process (a subprocess would
    import torch again: seconds on a loaded machine). Returns the exit message, None on success."""
    saved_argv, saved_base = sys.argv, os.environ.get("NANOCHAT_BASE_DIR")
    sys.argv, os.environ["NANOCHAT_BASE_DIR"] = [module, *args], str(base)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = saved_argv
        if saved_base is None:
            del os.environ["NANOCHAT_BASE_DIR"]
        else:
            os.environ["NANOCHAT_BASE_DIR"] = saved_base
    return None


def random_weights(model: GPT, seed: int) -> None:
    """Random values everywhere: the zero-initialised projections and head would make every logit
    equal and the comparison vacuous."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 1.0 if "wte" in name else 0.3
            p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.fixture(scope="module")
def exported(tiny_world, tmp_path_factory):
    """An SFT checkpoint of a 2-layer 64-wide GQA model (4 query heads, 2 key/value heads) in a base
    dir of its own, a report card, the export folder, and the folder loaded by transformers."""
    base = tmp_path_factory.mktemp("hf_base")
    shutil.copytree(tiny_world / "tokenizer", base / "tokenizer")
    tokenizer = Tokenizer.load(base / "tokenizer")
    config = GPTConfig(sequence_len=64, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = GPT(config)
    model.init_weights()
    random_weights(model, seed=0)
    model.eval()
    save_checkpoint(base / "sft_checkpoints" / "d2", 7, model, None,
                    {"model_config": config.to_dict(), "args": {"model_tag": "d2"}, "loop_state": {}})
    (base / "report").mkdir()
    (base / "report" / "report.md").write_text("# nanochat report\n\n## Summary\n\n| Metric | BASE | SFT |\n"
                                               "|---|---:|---:|\n| CORE | 0.1234 | - |\n| MMLU | - | 0.3141 |\n\n"
                                               "## Environment\n\n- python: 3\n")
    out = tmp_path_factory.mktemp("hf_export") / "nanochat-d2"
    run_script("scripts.export_hf", "-i", "sft", "-o", str(out), base=base)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32)
    hf_model.eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    return {"base": base, "out": out, "model": model, "tokenizer": tokenizer, "hf_model": hf_model, "hf_tok": hf_tok}


def test_folder_loads_with_stock_transformers(exported):
    out = exported["out"]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "README.md"):
        assert (out / name).is_file(), name
    assert type(exported["hf_model"]).__name__ == "NanoChatForCausalLM"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "nanochat" and "auto_map" not in config  # no custom code
    tok = exported["tokenizer"]
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.encode_special("<|assistant_end|>"), tok.get_bos_token_id()]
    card = (out / "README.md").read_text()
    assert "| MMLU | - | 0.3141 |" in card and "d2 (sft, step 7)" in card


def test_logits_match(exported):
    ids = torch.randint(0, exported["tokenizer"].vocab_size, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = exported["model"](ids)  # (3, 48, V)
        theirs = exported["hf_model"](ids).logits  # (3, 48, V)
    assert ours.std() > 1.0  # the weights are not the degenerate initial ones
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


def test_bfloat16_export(exported, tmp_path):
    model, tok = exported["model"], exported["tokenizer"]
    out = save_hf(tmp_path / "bf16", model.state_dict(), model.config, tok, dtype="bfloat16")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert hf_model.dtype == torch.bfloat16
    ids = torch.randint(0, tok.vocab_size, (1, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours = model(ids)  # our own bf16 inference: float32 weights, bf16 matmuls
    theirs = hf_model(ids).logits.float()
    assert (ours - theirs).abs().max() < 0.1 * ours.abs().max()  # rounding, not a wrong weight


def test_greedy_generation_matches(exported):
    tok, hf_model = exported["tokenizer"], exported["hf_model"]
    prompt = tok.render_for_completion(CONVERSATIONS[1])
    ours = list(exported["model"].generate(prompt, max_tokens=24, temperature=0.0))
    # our reference sampler has no stop tokens: let transformers run the full 24 as well (KV cache on)
    gen = transformers.GenerationConfig(max_new_tokens=24, do_sample=False, eos_token_id=None,
                                        pad_token_id=tok.get_bos_token_id())
    out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                            generation_config=gen)
    assert out[0, len(prompt):].tolist() == ours
    assert len(set(ours)) > 3  # a sequence that exercises the model, not one repeated token


def test_tokenizer_encodes_identically(exported, tiny_world):
    text = mixed_text(seed=0, n_chars=6000)
    assert len(text.encode()) > 6000
    # the exported tokenizer (trained on a dozen English words: everything else falls to bytes) ...
    tok, hf_tok = exported["tokenizer"], exported["hf_tok"]
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    for line in text.splitlines(keepends=True):
        assert hf_tok(line)["input_ids"] == tok.encode(line), repr(line)
    assert hf_tok.decode(tok.encode(text)) == text
    # ... and one trained on the mixed text itself, so that merges cover multi-byte characters
    texts = [mixed_text(seed=s, n_chars=3000) for s in range(20)] + make_docs(100, 0)
    rich = Tokenizer.train_from_iterator(texts, 2048)
    converted = hf_tokenizer(rich)
    for seed in (1, 2):
        sample = mixed_text(seed=seed, n_chars=4000)
        assert converted.encode(sample).ids == rich.encode(sample)
        assert converted.decode(rich.encode(sample)) == sample


def test_chat_template_matches_render(exported):
    tok, hf_tok = exported["tokenizer"], exported["hf_tok"]
    for conv in CONVERSATIONS:
        prompt = hf_tok.apply_chat_template(conv["messages"], add_generation_prompt=True, return_dict=True)
        assert prompt["input_ids"] == tok.render_for_completion(conv)
        ids, mask = tok.render_conversation(conv)
        full = hf_tok.apply_chat_template(conv["messages"], return_dict=True, return_assistant_tokens_mask=True)
        assert full["input_ids"] == ids
        assert full["assistant_masks"] == mask
    with pytest.raises(Exception, match="roles must alternate"):
        hf_tok.apply_chat_template([{"role": "assistant", "content": "hi"}], tokenize=False)


def test_import_round_trip(exported, tmp_path):
    # into a fresh base dir: the tokenizer comes along in our format
    fresh = tmp_path / "fresh"
    assert run_in_process("scripts.export_hf", "--import", str(exported["out"]), "-i", "sft", base=fresh) is None
    tokenizer = Tokenizer.load(fresh / "tokenizer")
    original = exported["tokenizer"]
    text = mixed_text(seed=3, n_chars=2000)
    assert tokenizer.encode(text) == original.encode(text) and tokenizer.get_pattern() == original.get_pattern()
    model, _, meta = build_model(fresh / "sft_checkpoints" / "d2", 0, "cpu", tokenizer=tokenizer)
    assert meta["model_config"] == exported["model"].config.to_dict()
    ours = exported["model"].state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ours[name]), name
    ids = torch.randint(0, tokenizer.vocab_size, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(ids), exported["model"](ids))

    # a base dir whose tokenizer differs is refused in one sentence, and left as it was
    other = tmp_path / "other"
    Tokenizer.train_from_iterator(make_docs(50, 9), 300).save(other / "tokenizer")
    message = run_in_process("scripts.export_hf", "--import", str(exported["out"]), base=other)
    assert isinstance(message, str) and "holds a different tokenizer" in message
    assert not (other / "sft_checkpoints").exists()


def test_import_cuts_a_padded_vocabulary(exported, tmp_path):
    """Checkpoints converted elsewhere may pad the embedding past the tokenizer for matmul-friendly
    shapes: the padded rows are dropped. A model we cannot represent is refused by name."""
    padded = tmp_path / "padded"
    shutil.copytree(exported["out"], padded)
    weights = load_file(padded / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = torch.cat([weights[name], torch.randn(12, weights[name].size(1))])
    save_file(weights, padded / "model.safetensors")
    config = json.loads((padded / "config.json").read_text())
    config["vocab_size"] += 12
    (padded / "config.json").write_text(json.dumps(config))
    state, gpt_config, _ = load_hf(padded)
    assert gpt_config == exported["model"].config
    ours = exported["model"].state_dict()
    assert all(torch.equal(tensor, ours[name]) for name, tensor in state.items())

    config["hidden_act"] = "silu"
    (padded / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFFormatError, match="hidden_act='silu'"):
        load_hf(padded)
