"""Checkpoints: one format for every stage, written atomically, read without unpickling.

    <base>/<stage>_checkpoints/<model_tag>/step_<NNNNNN>/
        model.safetensors          weights (rank 0)
        rank<R>.safetensors        this rank's optimizer shard + RNG states
        rank<R>.json               this rank's optimizer scalars + loop state (e.g. dataloader cursor)
        meta.json                  model config, args, step, loop state, world size, file checksums

All files are written into `step_<NNNNNN>.tmp/`, fsynced, and the directory is renamed into place
only when every rank is done: the final name is the commit marker, so a run killed mid-save
leaves the previous step as the last valid checkpoint. Re-saving an existing step renames it to
`step_<NNNNNN>.old/` first; a crash between the two renames is repaired the next time the
directory is listed or loaded (the new save is finished if its meta.json was written, else the
old one is put back). Loading validates meta.json as a whole before building anything, verifies
the sha256 of each file it reads and names the file when something is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nanochat.common import file_lock, get_base_dir, sha256_file
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer, get_tokenizer

logger = logging.getLogger(__name__)

STAGE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "sft_checkpoints", "rl": "rl_checkpoints"}
STEP_RE = re.compile(r"^step_(\d{6,})$")
FORMAT = "nanochat-checkpoint-1"
# Upper bounds a model config from meta.json must respect: a corrupt or hostile file must not make
# us allocate gigabytes (rotary tables are 10x sequence_len long; embeddings are vocab x width).
CONFIG_LIMITS = {"sequence_len": 1 << 17, "vocab_size": 1 << 21, "n_layer": 1024, "n_head": 1024,
                 "n_kv_head": 1024, "n_embd": 1 << 16}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or does not fit."""


def stage_dir(stage: str) -> Path:
    if stage not in STAGE_DIRS:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGE_DIRS)}")
    return get_base_dir() / STAGE_DIRS[stage]


def step_dir(checkpoint_dir: str | os.PathLike, step: int) -> Path:
    return Path(checkpoint_dir) / f"step_{step:06d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
    _fsync(path)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def save_checkpoint(checkpoint_dir: str | os.PathLike, step: int, model: torch.nn.Module | None,
                    optimizers: list | None, meta: dict, rank_state: dict | None = None,
                    rank: int = 0, world_size: int = 1) -> Path:
    """Save one step. Every rank calls this (collectively when distributed); rank 0 writes the weights
    and meta.json, each rank its optimizer shard, RNG states and `rank_state`."""
    final = step_dir(checkpoint_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    if rank == 0 and model is not None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        _fsync(tmp / "model.safetensors")
    tensors = _rng_tensors()
    opt_meta = []
    for i, opt in enumerate(optimizers or []):
        t, m = opt.flat_state_dict()
        tensors.update({f"opt{i}.{k}": v for k, v in t.items()})
        opt_meta.append(m)
    save_file(tensors, tmp / f"rank{rank}.safetensors")
    _fsync(tmp / f"rank{rank}.safetensors")
    _write_json(tmp / f"rank{rank}.json", {"optimizers": opt_meta, "rank_state": rank_state or {}})
    _barrier()
    if rank == 0:
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        _write_json(tmp / "meta.json",
                    {"format": FORMAT, "step": step, "world_size": world_size, **meta, "files": files})
        # commit: swap the directory into place (an older save of the same step is replaced);
        # _recover() repairs a crash between the two renames
        old = final.with_name(final.name + ".old")
        with file_lock(final):
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                _fsync(final.parent)
            os.replace(tmp, final)
            _fsync(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    _barrier()
    return final


def _recover(checkpoint_dir: Path) -> None:
    """Finish or roll back a re-save that crashed between `final -> .old` and `.tmp -> final`."""
    for old in checkpoint_dir.glob("step_*.old"):
        final = old.with_name(old.name.removesuffix(".old"))
        tmp = final.with_name(final.name + ".tmp")
        with file_lock(final):  # the same lock as the commit: never repair a save in progress
            if not old.is_dir():
                continue  # repaired by another process while we waited
            if not final.exists():
                if (tmp / "meta.json").is_file():  # meta.json is the last file written before the commit
                    os.replace(tmp, final)
                    logger.warning("finished the interrupted commit of %s", final)
                else:
                    os.replace(old, final)
                    logger.warning("rolled back the interrupted commit of %s to its previous save", final)
                _fsync(checkpoint_dir)
            shutil.rmtree(old, ignore_errors=True)


def committed_steps(checkpoint_dir: str | os.PathLike) -> list[int]:
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return []
    _recover(d)
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := STEP_RE.match(p.name)) and (p / "meta.json").is_file())


def last_step(checkpoint_dir: str | os.PathLike) -> int:
    steps = committed_steps(checkpoint_dir)
    if not steps:
        raise CheckpointError(f"no checkpoint in {checkpoint_dir}")
    return steps[-1]


def read_meta(checkpoint_dir: str | os.PathLike, step: int) -> dict:
    """meta.json of a committed step, validated as a whole (see validate_meta)."""
    path = step_dir(checkpoint_dir, step) / "meta.json"
    if Path(checkpoint_dir).is_dir():
        _recover(Path(checkpoint_dir))
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path.parent} does not exist (or was never committed)") from None
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from None
    problem = validate_meta(meta)
    if problem:
        raise CheckpointError(f"{path} is not a valid checkpoint description: {problem}; "
                              "save the checkpoint again (or restore the file)")
    return meta


def validate_meta(meta) -> str | None:
    """What is wrong with a parsed meta.json, or None. Checked before anything is built from it."""
    if not isinstance(meta, dict):
        return f"expected a JSON object, got {type(meta).__name__}"
    if meta.get("format") != FORMAT:
        return f"format is {meta.get('format')!r}, expected {FORMAT!r}"
    for key, kind in (("step", int), ("world_size", int), ("files", dict), ("model_config", dict)):
        if key not in meta:
            return f"it has no {key!r}"
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            return f"{key!r} must be a {kind.__name__}, got {type(meta[key]).__name__}"
    for name, info in meta["files"].items():
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and type(info.get("bytes")) is int):
            return f"files[{name!r}] must be {{'sha256': str, 'bytes': int}}"
    config = meta["model_config"]
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    if unknown := sorted(set(config) - fields):
        return f"model_config has unknown key(s) {', '.join(unknown)}"
    if missing := sorted(fields - set(config)):
        return f"model_config lacks {', '.join(missing)}"
    for f in dataclasses.fields(GPTConfig):
        value, limit = config[f.name], CONFIG_LIMITS.get(f.name)
        if limit is not None and (type(value) is not int or not 1 <= value <= limit):
            return f"model_config {f.name}={value!r} must be an integer in 1..{limit:,}"
        if limit is None and f.default is not dataclasses.MISSING and type(value) is not type(f.default):
            return f"model_config {f.name}={value!r} must be a {type(f.default).__name__}"
    try:
        GPTConfig(**config)
    except ValueError as e:
        return f"model_config is inconsistent: {e}"
    return None


def _load_verified(path: Path, meta: dict) -> dict[str, torch.Tensor]:
    """safetensors file -> tensors, after checking size and sha256 against meta.json."""
    info = meta["files"].get(path.name)
    if info is None:
        raise CheckpointError(f"{path} is not listed in its meta.json")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    if path.stat().st_size != info["bytes"]:
        raise CheckpointError(f"{path} is truncated or changed ({path.stat().st_size} bytes, expected {info['bytes']})")
    if sha256_file(path) != info["sha256"]:
        raise CheckpointError(f"{path} is corrupt (checksum mismatch)")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read: {e}") from None


def load_checkpoint(checkpoint_dir: str | os.PathLike, step: int, device: str | torch.device = "cpu",
                    load_model_state: bool = True, rank: int | None = 0) -> tuple[dict, dict, dict]:
    """(model_state or {}, rank part {"tensors", "optimizers", "rank_state"} or {}, meta)."""
    meta = read_meta(checkpoint_dir, step)
    d = step_dir(checkpoint_dir, step)
    model_state = {}
    if load_model_state:
        model_state = {k: v.to(device) for k, v in _load_verified(d / "model.safetensors", meta).items()}
    rank_part = {}
    if rank is not None:
        tensors = _load_verified(d / f"rank{rank}.safetensors", meta)
        rank_json = d / f"rank{rank}.json"
        try:
            info = json.loads(rank_json.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{rank_json} cannot be read: {e}") from None
        rank_part = {"tensors": tensors, "optimizers": info["optimizers"], "rank_state": info["rank_state"]}
    return model_state, rank_part, meta


def restore_rank_state(rank_part: dict, optimizers: list) -> dict:
    """Load optimizer shards and RNG states saved by this rank; return its rank_state."""
    tensors = rank_part["tensors"]
    if len(rank_part["optimizers"]) != len(optimizers):
        raise CheckpointError(f"checkpoint has {len(rank_part['optimizers'])} optimizers, the model {len(optimizers)}")
    for i, (opt, m) in enumerate(zip(optimizers, rank_part["optimizers"])):
        prefix = f"opt{i}."
        opt.load_flat_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, m)
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return rank_part["rank_state"]


def build_model(checkpoint_dir: str | os.PathLike, step: int, device: str | torch.device,
                phase: str = "eval", tokenizer: Tokenizer | None = None) -> tuple[GPT, Tokenizer, dict]:
    """A model with the checkpoint's weights (in `phase` train|eval), its tokenizer and meta."""
    if phase not in ("train", "eval"):
        raise ValueError(f"phase must be 'train' or 'eval', got {phase!r}")
    model_state, _, meta = load_checkpoint(checkpoint_dir, step, device, rank=None)
    config = GPTConfig(**meta["model_config"])
    tokenizer = tokenizer or get_tokenizer()
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"checkpoint {step_dir(checkpoint_dir, step)} has vocab size {config.vocab_size:,} but "
                              f"the tokenizer has {tokenizer.vocab_size:,}: it was trained with another tokenizer")
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_rotary()
    try:
        model.load_state_dict(model_state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {step_dir(checkpoint_dir, step)} do not fit the model: {e}") from None
    model.train(phase == "train")
    return model, tokenizer, meta


def find_model_tag(stage_path: Path) -> str:
    """The deepest model (tags d<depth>), else the most recently written tag."""
    tags = [p.name for p in stage_path.iterdir() if p.is_dir()] if stage_path.is_dir() else []
    if not tags:
        raise CheckpointError(f"no checkpoints in {stage_path}: train this stage first")
    depth = {t: int(t[1:]) for t in tags if re.fullmatch(r"d\d+", t)}
    if depth:
        return max(depth, key=depth.get)
    return max(tags, key=lambda t: (stage_path / t).stat().st_mtime)


def load_model(stage: str, device: str | torch.device, phase: str = "eval", model_tag: str | None = None,
               step: int | None = None) -> tuple[GPT, Tokenizer, dict]:
    """Model, tokenizer and meta of any stage (base|mid|sft|rl); latest tag/step unless given."""
    root = stage_dir(stage)
    model_tag = model_tag or find_model_tag(root)
    ckpt_dir = root / model_tag
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"no checkpoints for model tag {model_tag!r} in {root}")
    step = last_step(ckpt_dir) if step is None else step
    logger.info("loading %s model %s step %d", stage, model_tag, step)
    return build_model(ckpt_dir, step, device, phase)
