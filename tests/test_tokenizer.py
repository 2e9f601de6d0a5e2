"""rustbpe against a pure-Python reference BPE; tiktoken export; chat rendering; storage."""

import json
from collections import Counter

import pytest
import regex
from hypothesis import given, settings, strategies as st

import nanochat_rustbpe
from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, TokenizerError

# ---------------------------------------------------------------------------------------------
# the slow twin: BPE training in plain Python, with the same tie-break and the same reuse of ids
# for merges that spell an existing token


def reference_bpe(texts, vocab_size, pattern=SPLIT_PATTERN):
    chunks = Counter(c for t in texts for c in regex.findall(pattern, t))
    words = {tuple(c.encode()): n for c, n in chunks.items() if len(c.encode()) >= 2}
    vocab = [bytes([b]) for b in range(256)]
    id_of = {b: i for i, b in enumerate(vocab)}
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for w, n in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += n
        if not pairs:
            break
        pair = min(pairs, key=lambda p: (-pairs[p], p))  # highest count, then smallest pair
        new_bytes = vocab[pair[0]] + vocab[pair[1]]
        if new_bytes not in id_of:
            id_of[new_bytes] = len(vocab)
            vocab.append(new_bytes)
        new_id = id_of[new_bytes]
        merges.append((pair, new_id))
        merged = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges, vocab


CORPORA = {
    "ascii": ["the quick brown fox jumps over the lazy dog " * 3, "hello hello world, 1234567 + 89 = ?",
              "aaaa bbbb aaaa"],
    "accents": ["café crème brûlée à la carte", "naïve façade señor über Ärger", "Ελληνικά κείμενα εδώ"],
    "cjk": ["中文字符测试中文字符", "日本語のテキストです。日本語", "한국어 텍스트 한국어"],
    "emoji": ["😀😀 👍🏽 family 👨‍👩‍👧 🎉🎉🎉", "smile 😀 smile 😀 ok"],
    "digits": ["3.14159 2.71828 1000000 2024-01-01 12:30", "0x1F 0b1010 1e-9 42 42 42"],
    "whitespace": ["a   b\t\tc\n\n\nd  \r\n e    ", "    indented\n        more\n\tx", "", "   "],
}


@pytest.mark.parametrize("name", sorted(CORPORA))
@pytest.mark.parametrize("vocab_size", [260, 300, 400])
def test_rustbpe_merges_equal_reference(name, vocab_size):
    texts = CORPORA[name]
    tok = nanochat_rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size, buffer_size=2)
    ref_merges, ref_vocab = reference_bpe(texts, vocab_size)
    assert tok.get_merges() == ref_merges
    assert [b for b, _ in tok.get_mergeable_ranks()] == ref_vocab


def test_rustbpe_merges_equal_reference_mixed():
    texts = [t for ts in CORPORA.values() for t in ts] * 2
    tok = nanochat_rustbpe.Tokenizer()
    tok.train_from_iterator(texts, 600, buffer_size=5)
    assert tok.get_merges() == reference_bpe(texts, 600)[0]


def test_rustbpe_errors():
    tok = nanochat_rustbpe.Tokenizer()
    with pytest.raises(ValueError, match="at least 256"):
        tok.train_from_iterator(["abc"], 100)
    with pytest.raises(ValueError, match="invalid split pattern"):
        tok.train_from_iterator(["abc"], 300, pattern="(")
    with pytest.raises(TypeError, match="item 1 is bytes"):
        tok.train_from_iterator(["abc", b"abc"], 300)
    with pytest.raises(TypeError, match="iterable of str"):
        tok.train_from_iterator(42, 300)
    with pytest.raises(ValueError, match="dropped"):  # a pattern that cannot cover the text
        tok.train_from_iterator(["ab cd"], 300, pattern="[a-z]+")
    with pytest.raises(RuntimeError, match="not trained"):
        tok.encode("x")


def test_rustbpe_iterator_errors_propagate():
    def gen():
        yield "fine"
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        nanochat_rustbpe.Tokenizer().train_from_iterator(gen(), 300)


# ---------------------------------------------------------------------------------------------
# tiktoken export


@pytest.fixture(scope="module")
def tok():
    texts = [t for ts in CORPORA.values() for t in ts] * 3 + ["def f(x):\n    return x ** 2  # square\n"] * 5
    return Tokenizer.train_from_iterator(texts, 256 + len(SPECIAL_TOKENS) + 200)


def test_special_tokens_are_last(tok):
    n = tok.vocab_size
    assert [tok.encode_special(s) for s in SPECIAL_TOKENS] == list(range(n - len(SPECIAL_TOKENS), n))
    assert tok.get_bos_token_id() == n - len(SPECIAL_TOKENS)


def test_tiktoken_matches_rustbpe_encode():
    texts = [t for ts in CORPORA.values() for t in ts] * 3
    bpe = nanochat_rustbpe.Tokenizer()
    bpe.train_from_iterator(texts, 500)
    tok = Tokenizer.from_ranks(dict(bpe.get_mergeable_ranks()), bpe.get_pattern())
    probes = texts + ["unseen words, héllo wörld 中文 😀 12345", "   x\n\n\ty  ", "it's we'll THEY'RE"]
    for text in probes:
        assert tok.encode(text) == bpe.encode(text), text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_arbitrary_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.characters(max_codepoint=0x7F)))
def test_lone_surrogates_do_not_crash(tok, text):
    # paired surrogates join into their code point, lone ones become U+FFFD (tiktoken's rule)
    expected = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert tok.decode(tok.encode(text)) == expected


def test_user_text_with_special_names_is_ordinary(tok):
    for text in ["<|bos|>", "hi <|assistant_start|> there", "<|python_start|>1+1<|python_end|>"]:
        ids = tok.encode(text)
        assert not set(ids) & {tok.encode_special(s) for s in SPECIAL_TOKENS}
        assert tok.decode(ids) == text


def test_encode_batch_and_prepend(tok):
    texts = ["hello world", "", "café"]
    batch = tok.encode(texts, prepend="<|bos|>", append=tok.encode_special("<|assistant_end|>"))
    bos, end = tok.get_bos_token_id(), tok.encode_special("<|assistant_end|>")
    assert batch == [[bos] + tok.encode(t) + [end] for t in texts]
    with pytest.raises(ValueError, match="not a special token"):
        tok.encode("x", prepend="<|nope|>")


def test_token_bytes(tok):
    tb = tok.token_bytes()
    assert tb.shape == (tok.vocab_size,)
    assert all(tb[i] == 1 for i in range(256))
    assert all(tb[tok.encode_special(s)] == 0 for s in SPECIAL_TOKENS)
    ids = tok.encode("naïve 中文 😀")
    assert sum(int(tb[i]) for i in ids) == len("naïve 中文 😀".encode())


# ---------------------------------------------------------------------------------------------
# chat rendering


def _specials(tok):
    return {s: tok.encode_special(s) for s in SPECIAL_TOKENS}


def test_render_conversation_text(tok):
    sp = _specials(tok)
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ids, mask = tok.render_conversation(conv)
    u, a = tok.encode("hi"), tok.encode("hello")
    assert ids == [sp["<|bos|>"], sp["<|user_start|>"], *u, sp["<|user_end|>"], sp["<|assistant_start|>"], *a,
                   sp["<|assistant_end|>"]]
    assert mask == [0, 0] + [0] * len(u) + [0, 0] + [1] * len(a) + [1]


def test_render_conversation_tools_and_system(tok):
    sp = _specials(tok)
    conv = {"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is 2+3?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "let me compute "},
            {"type": "python", "text": "2+3"},
            {"type": "python_output", "text": "5"},
            {"type": "text", "text": " so 5"},
        ]},
    ]}
    ids, mask = tok.render_conversation(conv)
    user = tok.encode("be brief\n\nwhat is 2+3?")
    t1, py, out, t2 = tok.encode("let me compute "), tok.encode("2+3"), tok.encode("5"), tok.encode(" so 5")
    expected = [(sp["<|bos|>"], 0), (sp["<|user_start|>"], 0), *[(i, 0) for i in user], (sp["<|user_end|>"], 0),
                (sp["<|assistant_start|>"], 0), *[(i, 1) for i in t1],
                (sp["<|python_start|>"], 1), *[(i, 1) for i in py], (sp["<|python_end|>"], 1),
                (sp["<|output_start|>"], 0), *[(i, 0) for i in out], (sp["<|output_end|>"], 0),
                *[(i, 1) for i in t2], (sp["<|assistant_end|>"], 1)]
    assert list(zip(ids, mask)) == expected
    assert tok.render_conversation(conv, max_tokens=5)[0] == ids[:5]


def test_render_for_completion(tok):
    sp = _specials(tok)
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ids = tok.render_for_completion(conv)
    assert ids == [sp["<|bos|>"], sp["<|user_start|>"], *tok.encode("hi"), sp["<|user_end|>"],
                   sp["<|assistant_start|>"]]
    assert "|" in tok.visualize_tokenization(*tok.render_conversation(conv))


@pytest.mark.parametrize("conv,msg", [
    ({"messages": []}, "no messages"),
    ({}, "messages"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "alternate"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "alternate"),
    ({"messages": [{"role": "wizard", "content": "a"}]}, "unknown role"),
    ({"messages": [{"role": "user", "content": "a"},
                   {"role": "assistant", "content": [{"type": "image", "text": ""}]}]},
     "part 0"),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "user content"),
    ({"messages": [{"role": "system", "content": "s"}]}, "system"),
])
def test_invalid_conversations(tok, conv, msg):
    with pytest.raises(ValueError, match=msg):
        tok.render_conversation(conv)


# ---------------------------------------------------------------------------------------------
# storage


def test_save_load_roundtrip(tok, tmp_path):
    tok.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    text = "round trip: café 中文 😀 <|bos|>"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.get_pattern() == tok.get_pattern()
    assert not list(tmp_path.glob("*.tmp"))
    assert json.loads((tmp_path / "tokenizer.json").read_text())["vocab_size"] == tok.vocab_size


def test_missing_and_corrupt(tok, tmp_path):
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        Tokenizer.load(tmp_path)
    tok.save(tmp_path)
    ranks = tmp_path / "tokenizer.tiktoken"
    data = bytearray(ranks.read_bytes())
    data[10] ^= 0x01
    ranks.write_bytes(bytes(data))
    with pytest.raises(TokenizerError, match="tokenizer.tiktoken is corrupt"):
        Tokenizer.load(tmp_path)
    ranks.unlink()
    with pytest.raises(TokenizerError, match="missing"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="corrupt tokenizer metadata"):
        Tokenizer.load(tmp_path)


def test_visualize_keeps_multibyte_characters_whole():
    tok = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)  # byte tokens only
    ids = tok.encode("naïve 中文")
    assert len(ids) == len("naïve 中文".encode())
    assert tok.visualize_tokenization(ids) == "n|a|ï|v|e| |中|文"
    colored = tok.visualize_tokenization(ids, mask=[0, 0, 1, 1] + [1] * (len(ids) - 4))
    assert colored.split("|")[2] == "\033[92mï\033[0m" and "\ufffd" not in colored
