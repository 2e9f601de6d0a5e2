"""The Hugging Face format: a nanochat model as a folder that stock `transformers` (>= 5, class
NanoChatForCausalLM, model_type "nanochat") loads with no custom code, and the way back.

    config.json              shapes, in transformers' names
    model.safetensors        weights, in transformers' names
    generation_config.json   stop on <|assistant_end|> or <|bos|> (as our Engine does)
    tokenizer.json           byte-level BPE equal to our tiktoken ranks, our split regex, special tokens
    tokenizer_config.json    special tokens and a Jinja chat template equal to render_conversation

The two implementations compute the same function but for one sign. Our rotary embedding turns
each pair (x[i], x[i + D/2]) of a head by +θ; transformers' turns it by -θ (as reference nanochat
does). With S = negate the second half of a head, R(-θ)·S = S·R(+θ), so storing S·W for the query
and key projections makes transformers produce S·q and S·k where we produce q and k. S commutes
with the weightless per-head QK-norm and (S q)·(S k) = q·k, so attention, and everything after it,
is unchanged. S is its own inverse: the same flip converts in both directions.

Limits of the string chat template (a tokenizer sees only the rendered text): two adjacent text
parts in one assistant message are encoded together, where render_conversation encodes them one by
one; and text that spells a special token (a user typing "<|user_end|>") becomes that special
token, where our tokenizer keeps it ordinary text.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from nanochat.gpt import LOGIT_SOFTCAP, ROTARY_BASE, GPTConfig
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer

MODEL_TYPE = "nanochat"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # sharded checkpoints on the Hub
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# our norm is F.rms_norm with eps=None, i.e. the float32 machine epsilon (transformers normalises in float32)
RMS_NORM_EPS = torch.finfo(torch.float32).eps

# per block: our parameter name -> transformers' (prefixes transformer.h.{i}. / model.layers.{i}.)
_BLOCK_NAMES = {
    "attn.c_q.weight": "self_attn.q_proj.weight",
    "attn.c_k.weight": "self_attn.k_proj.weight",
    "attn.c_v.weight": "self_attn.v_proj.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_proj.weight": "mlp.fc2.weight",
}
_ROTATED = ("attn.c_q.weight", "attn.c_k.weight")  # the projections whose rows the rotary flip touches


class HFFormatError(RuntimeError):
    """A Hugging Face folder that is missing files or holds a model nanochat cannot represent."""


# -------------------------------------------------------------------------------------------------
# Weights and config


def flip_rotary_sign(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Negate the second half of every head's rows of a q/k projection (H·D, C): turns a rotation by
    +θ into one by -θ and back (see the module docstring)."""
    rows, cols = w.shape
    heads = w.view(rows // head_dim, 2, head_dim // 2, cols)  # (H, 2, D/2, C): the two halves of each head
    sign = torch.tensor([1.0, -1.0], dtype=w.dtype, device=w.device).view(1, 2, 1, 1)
    return (heads * sign).reshape(rows, cols)


def to_hf_state_dict(state: dict[str, torch.Tensor], config: GPTConfig,
                     dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Our GPT state dict -> NanoChatForCausalLM's, cast to `dtype`, contiguous, on the CPU."""
    out = {"model.embed_tokens.weight": state["transformer.wte.weight"], "lm_head.weight": state["lm_head.weight"]}
    for i in range(config.n_layer):
        for ours, theirs in _BLOCK_NAMES.items():
            w = state[f"transformer.h.{i}.{ours}"]
            out[f"model.layers.{i}.{theirs}"] = flip_rotary_sign(w, config.head_dim) if ours in _ROTATED else w
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in out.items()}


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """NanoChatForCausalLM's state dict -> our GPT's, float32 (our weights always are)."""
    def take(name: str) -> torch.Tensor:
        if name not in hf_state:
            raise HFFormatError(f"the weights have no tensor {name!r}: not a NanoChatForCausalLM checkpoint")
        return hf_state[name].to(torch.float32)

    out = {"transformer.wte.weight": take("model.embed_tokens.weight"), "lm_head.weight": take("lm_head.weight")}
    for i in range(config.n_layer):
        for ours, theirs in _BLOCK_NAMES.items():
            w = take(f"model.layers.{i}.{theirs}")
            out[f"transformer.h.{i}.{ours}"] = flip_rotary_sign(w, config.head_dim) if ours in _ROTATED else w
    # a vocabulary padded past the tokenizer (for matmul-friendly shapes) is cut back: padded rows never win
    for name in ("transformer.wte.weight", "lm_head.weight"):
        out[name] = out[name][: config.vocab_size].contiguous()
    return out


def hf_config(config: GPTConfig, tokenizer: Tokenizer, dtype: str = "float32") -> dict:
    """config.json for NanoChatForCausalLM. max_position_embeddings is the trained context
    (sequence_len); transformers computes rotary angles for any position."""
    bos = tokenizer.get_bos_token_id()
    return {
        "architectures": ["NanoChatForCausalLM"],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": 4 * config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.sequence_len,
        "hidden_act": "relu2",
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROTARY_BASE},
        "final_logit_softcapping": LOGIT_SOFTCAP,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": tokenizer.encode_special("<|assistant_end|>"),
        "pad_token_id": bos,
        "use_cache": True,
        "dtype": dtype,
    }


def gpt_config_from_hf(hf: dict, vocab_size: int) -> GPTConfig:
    """GPTConfig from a config.json, refusing what our GPT does not implement. `vocab_size` is the
    tokenizer's (a padded embedding is cut back to it)."""
    if hf.get("model_type") != MODEL_TYPE:
        raise HFFormatError(f"config.json has model_type {hf.get('model_type')!r}, not {MODEL_TYPE!r}: "
                            "only NanoChatForCausalLM checkpoints can be imported")
    try:
        n_embd, n_head = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        n_kv_head = int(hf.get("num_key_value_heads") or n_head)
        n_layer, seq_len = int(hf["num_hidden_layers"]), int(hf.get("max_position_embeddings", 2048))
        theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", ROTARY_BASE))
        differences = {
            "hidden_act": (hf.get("hidden_act", "relu2"), "relu2"),
            "intermediate_size": (hf.get("intermediate_size", 4 * n_embd), 4 * n_embd),
            "head_dim": (hf.get("head_dim") or n_embd // n_head, n_embd // n_head),
            "final_logit_softcapping": (hf.get("final_logit_softcapping"), LOGIT_SOFTCAP),
            "rope_theta": (float(theta), ROTARY_BASE),
            "rope_type": ((hf.get("rope_parameters") or {}).get("rope_type", "default"), "default"),
            "attention_bias": (bool(hf.get("attention_bias", False)), False),
            "tie_word_embeddings": (bool(hf.get("tie_word_embeddings", False)), False),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise HFFormatError(f"config.json is incomplete or malformed ({e!r})") from None
    for key, (got, ours) in differences.items():
        if got != ours:
            raise HFFormatError(f"config.json has {key}={got!r} but nanochat's GPT implements only {ours!r}")
    if int(hf["vocab_size"]) < vocab_size:
        raise HFFormatError(f"config.json has vocab_size {hf['vocab_size']} but the tokenizer has {vocab_size} "
                            "tokens: the tokenizer does not belong to this model")
    try:
        return GPTConfig(sequence_len=seq_len, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                         n_kv_head=n_kv_head, n_embd=n_embd)
    except ValueError as e:
        raise HFFormatError(f"config.json describes a shape nanochat cannot build: {e}") from None


# -------------------------------------------------------------------------------------------------
# Tokenizer


def _byte_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet (GPT-2's): printable bytes stand for themselves, the other 68
    are moved to code points 256.. so every byte is one visible character in tokenizer.json."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def hf_tokenizer(tokenizer: Tokenizer) -> HFTokenizer:
    """A `tokenizers.Tokenizer` that encodes every text to the same ids as ours.

    Vocabulary: our ranks as ids. Merges: every split of every token into two tokens, ordered by
    the merged token's rank, so that BPE merging the best-ranked pair reproduces tiktoken's
    lowest-rank-first merging; `ignore_merges` makes a whole pre-token found in the vocabulary one
    token, as tiktoken does. Pre-tokenizer: our split regex, then bytes -> the byte-level alphabet."""
    to_char = _byte_to_unicode()
    n_ordinary = tokenizer.vocab_size - len(SPECIAL_TOKENS)
    token_bytes = [tokenizer.id_to_token(i) for i in range(n_ordinary)]
    rank = {b: i for i, b in enumerate(token_bytes)}
    merges = []  # (rank of the merged token, rank of left, rank of right, left, right)
    for i, b in enumerate(token_bytes):
        for cut in range(1, len(b)):
            left, right = b[:cut], b[cut:]
            if left in rank and right in rank:
                merges.append((i, rank[left], rank[right], left, right))
    merges.sort()

    def as_str(b: bytes) -> str:
        return "".join(to_char[x] for x in b)

    vocab = {as_str(b): i for i, b in enumerate(token_bytes)}
    bpe = models.BPE(vocab=vocab, merges=[(as_str(m[3]), as_str(m[4])) for m in merges],
                     ignore_merges=True, fuse_unk=False)
    hf = HFTokenizer(bpe)
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.get_pattern()), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets only; adds no tokens
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in SPECIAL_TOKENS])
    for name in SPECIAL_TOKENS:  # they must land on our ids: right after the ordinary tokens, in order
        assert hf.token_to_id(name) == tokenizer.encode_special(name), name
    return hf


def tokenizer_from_hf(path: str | os.PathLike) -> Tokenizer:
    """Our Tokenizer from a tokenizer.json written by `hf_tokenizer` (or converted the same way from
    reference nanochat's tiktoken file): ids are the ranks, the Split pre-tokenizer is the pattern."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
        added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    except FileNotFoundError:
        raise HFFormatError(f"{path} is missing: the folder has no Hugging Face tokenizer") from None
    except (ValueError, KeyError, TypeError) as e:
        raise HFFormatError(f"{path} is not a BPE tokenizer.json ({e!r})") from None
    if data["model"].get("type") != "BPE":
        raise HFFormatError(f"{path} holds a {data['model'].get('type')} model; only byte-level BPE can be imported")
    pattern = _split_pattern(data.get("pre_tokenizer"))
    if pattern is None:
        raise HFFormatError(f"{path} has no regex Split pre-tokenizer followed by ByteLevel: "
                            "not a tiktoken-style tokenizer")
    to_byte = {c: b for b, c in _byte_to_unicode().items()}
    try:
        ranks = {bytes(to_byte[c] for c in token): i for token, i in vocab.items()}
    except KeyError as e:
        raise HFFormatError(f"{path} has a token with character {e} outside the byte-level alphabet") from None
    n = len(ranks)
    expected = {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}
    if any(added.get(name) != i for name, i in expected.items()):
        raise HFFormatError(f"{path} does not have nanochat's special tokens {SPECIAL_TOKENS} "
                            f"at ids {n}..{n + len(SPECIAL_TOKENS) - 1}")
    try:
        return Tokenizer.from_ranks(ranks, pattern)
    except Exception as e:  # tiktoken rejects a pattern it cannot compile, ranks with holes, ...
        raise HFFormatError(f"{path} cannot be turned into a nanochat tokenizer: {e}") from None


def _split_pattern(pre: dict | None) -> str | None:
    """The regex of a Sequence[Split(regex, isolated), ByteLevel(use_regex=False)] pre-tokenizer."""
    if not pre or pre.get("type") != "Sequence":
        return None
    steps = pre.get("pretokenizers", [])
    if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel":
        return None
    if steps[0].get("behavior") != "Isolated" or steps[0].get("invert") or steps[1].get("use_regex", True):
        return None
    return (steps[0].get("pattern") or {}).get("Regex")


# The chat template, Jinja, equal to Tokenizer.render_conversation (ids) and render_for_completion
# (add_generation_prompt=True); {% generation %} marks the tokens whose mask is 1 there, for
# apply_chat_template(..., return_assistant_tokens_mask=True).
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages|length < 2 or messages[1]['role'] != 'user' -%}"
    "{{- raise_exception('a system message must be followed by a user message') -}}{%- endif -%}"
    "{%- set system_prefix = messages[0]['content'] ~ '\\n\\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system_prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- if add_generation_prompt and turns and turns[-1]['role'] == 'assistant' -%}"
    "{%- set turns = turns[:-1] -%}{%- endif -%}"
    "<|bos|>"
    "{%- for message in turns -%}"
    "{%- if message['role'] != ('user' if loop.index0 % 2 == 0 else 'assistant') -%}"
    "{{- raise_exception('roles must alternate user/assistant, starting with the user "
    "(a system message may come first)') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<|user_start|>' ~ (system_prefix if loop.first else '') ~ message['content'] ~ '<|user_end|>' -}}"
    "{%- else -%}"
    "{{- '<|assistant_start|>' -}}"
    "{%- if message['content'] is string -%}"
    "{%- generation -%}{{- message['content'] -}}{%- endgeneration -%}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{%- generation -%}{{- part['text'] -}}{%- endgeneration -%}"
    "{%- elif part['type'] == 'python' -%}"
    "{%- generation -%}{{- '<|python_start|>' ~ part['text'] ~ '<|python_end|>' -}}{%- endgeneration -%}"
    "{%- elif part['type'] == 'python_output' -%}{{- '<|output_start|>' ~ part['text'] ~ '<|output_end|>' -}}"
    "{%- else -%}{{- raise_exception('assistant parts are text, python or python_output') -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- generation -%}{{- '<|assistant_end|>' -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}"
)


def tokenizer_config() -> dict:
    """tokenizer_config.json: the fast tokenizer class, the special tokens' roles, the chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|assistant_end|>",
        "pad_token": "<|bos|>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        "chat_template": CHAT_TEMPLATE,
    }


def generation_config(tokenizer: Tokenizer) -> dict:
    bos = tokenizer.get_bos_token_id()
    return {"bos_token_id": bos, "eos_token_id": [tokenizer.encode_special("<|assistant_end|>"), bos],
            "pad_token_id": bos}


# -------------------------------------------------------------------------------------------------
# Folders


def save_hf(out_dir: str | os.PathLike, state: dict[str, torch.Tensor], config: GPTConfig, tokenizer: Tokenizer,
            dtype: str = "float32", readme: str | None = None) -> Path:
    """Write the folder into `<out_dir>.tmp`, then rename it into place, replacing an earlier export.
    A non-empty `out_dir` that is not an export is left alone (HFFormatError)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not _is_export(out):
        raise HFFormatError(f"{out} exists and is not a nanochat export; pick an empty or new folder")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    def write_json(name: str, obj: dict) -> None:
        (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    save_file(to_hf_state_dict(state, config, DTYPES[dtype]), tmp / WEIGHTS_FILE, metadata={"format": "pt"})
    write_json("config.json", hf_config(config, tokenizer, dtype))
    write_json("generation_config.json", generation_config(tokenizer))
    hf_tokenizer(tokenizer).save(str(tmp / "tokenizer.json"))
    write_json("tokenizer_config.json", tokenizer_config())
    write_json("special_tokens_map.json", {"bos_token": "<|bos|>", "eos_token": "<|assistant_end|>",
                                           "pad_token": "<|bos|>"})
    if readme is not None:
        (tmp / "README.md").write_text(readme, encoding="utf-8")
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out


def _is_export(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def load_hf(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], GPTConfig, Tokenizer]:
    """(our state dict, GPTConfig, Tokenizer) from a NanoChatForCausalLM folder: one
    model.safetensors or shards listed in model.safetensors.index.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HFFormatError(f"{folder} is not a folder; download a model first "
                            f"(`hf download REPO --local-dir {folder}`)")
    try:
        hf = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise HFFormatError(f"{folder} has no config.json: not a Hugging Face model folder") from None
    except ValueError as e:
        raise HFFormatError(f"{folder / 'config.json'} is not valid JSON ({e})") from None
    tokenizer = tokenizer_from_hf(folder / "tokenizer.json")
    config = gpt_config_from_hf(hf, tokenizer.vocab_size)
    if (folder / WEIGHTS_INDEX_FILE).is_file():
        try:
            shards = sorted(set(json.loads((folder / WEIGHTS_INDEX_FILE).read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise HFFormatError(f"{folder / WEIGHTS_INDEX_FILE} is malformed ({e!r})") from None
    else:
        shards = [WEIGHTS_FILE]
    hf_state = {}
    for shard in shards:
        try:
            hf_state.update(load_file(folder / shard))
        except FileNotFoundError:
            raise HFFormatError(f"{folder / shard} is missing (only safetensors weights can be imported)") from None
        except (SafetensorError, OSError, ValueError) as e:
            raise HFFormatError(f"{folder / shard} cannot be read: {e}") from None
    try:
        return from_hf_state_dict(hf_state, config), config, tokenizer
    except RuntimeError as e:  # a tensor whose shape does not fit config.json
        raise HFFormatError(f"the weights in {folder} do not fit its config.json: {e}") from None
