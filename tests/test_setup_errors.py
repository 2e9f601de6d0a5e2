"""A machine that is not set up gets one sentence naming NANOCHAT_BASE_DIR and the fix, never a
traceback: a base dir that is a file, cannot be created or cannot be written; no tokenizer."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


def run(module, *args, base):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    return proc.returncode, proc.stderr.strip()


def one_sentence(err: str) -> str:
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def unwritable_dir(tmp_path):
    """A directory this process cannot create files in: chmod works for a normal user, not for root."""
    if os.geteuid() != 0:
        path = tmp_path / "readonly"
        path.mkdir(mode=0o500)
        return path
    if os.path.isdir("/sys"):
        try:
            open("/sys/nanochat_write_probe", "w").close()
        except OSError:
            return "/sys"  # a read-only (or pseudo) filesystem refuses even root
    pytest.skip("no directory here that root cannot write")


def test_base_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    rc, err = run("nanochat.data", "-n", "1", base=tmp_path / "file")
    assert rc == 1 and one_sentence(err) == (f"NANOCHAT_BASE_DIR={tmp_path / 'file'} is not a directory: set "
                                             "NANOCHAT_BASE_DIR to a directory you can write "
                                             "(it is created if missing)")


def test_base_dir_that_cannot_be_created_or_written(tmp_path):
    (tmp_path / "file").write_text("x")
    rc, err = run("nanochat.data", "-n", "1", base=tmp_path / "file" / "below")
    assert rc == 1 and "cannot be created" in one_sentence(err) and "set NANOCHAT_BASE_DIR to" in err
    rc, err = run("scripts.tok_train", "--vocab-size=300", base=unwritable_dir(tmp_path))
    assert rc == 1 and "is not writable" in one_sentence(err) and err.startswith("NANOCHAT_BASE_DIR=")


def test_missing_tokenizer(tmp_path):
    rc, err = run("scripts.tok_eval", base=tmp_path)
    assert rc == 1 and one_sentence(err) == (
        f"no tokenizer in {tmp_path / 'tokenizer'} (NANOCHAT_BASE_DIR={tmp_path}): train one with "
        "`python -m scripts.tok_train`, or set NANOCHAT_BASE_DIR to the base directory that holds tokenizer/")
