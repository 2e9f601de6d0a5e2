"""The one way nanochat fetches a file over HTTP(S): locked, retried, resumable, verified, atomic.

    from nanochat.data.download import download_file
    download_file(url, dest, expected_size=None, sha256=None, verify=check_fn)

- A file lock (kept in <base>/.locks/, not beside dest) makes concurrent callers (ranks, processes, threads) download once;
  the others wait and then find the finished file.
- Bytes stream into `<dest>.part`; only a verified file is renamed to `dest`, so a broken file is
  never left under the final name. A partial `.part` is kept and resumed with an HTTP Range
  request on the next attempt (or the next run); a server that answers 200 instead of 206
  restarts it from zero.
- Failures (connection errors, timeouts, 5xx, short bodies, failed verification) are retried with
  exponential backoff; 4xx other than 408/429 fail at once, since asking again will not help.
- Verification: size (from `expected_size` and from Content-Length/Content-Range), sha256 when
  given, and an optional `verify(path)` callback that raises on a bad file (e.g. a parquet
  footer check).

Only the standard library does the HTTP (urllib), so this adds no dependency.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from nanochat.common import file_lock, sha256_file

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
USER_AGENT = "nanochat-downloader/1"
MAX_BACKOFF_S = 60.0


class DownloadError(RuntimeError):
    """A file could not be downloaded (or verified) after all attempts."""


class _Retry(Exception):
    """This attempt failed in a way another attempt may fix."""


def _problem(path: Path, expected_size: int | None, sha256: str | None,
             verify: Callable[[Path], None] | None) -> str | None:
    """What is wrong with the file at `path`, or None if it passes every check we can make."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"size {size} bytes, expected {expected_size}"
    if sha256 is not None and sha256_file(path) != sha256.lower():
        return "sha256 mismatch"
    if verify is not None:
        try:
            verify(path)
        except Exception as e:  # the callback's own error says what is wrong with the content
            return f"failed verification ({e})"
    return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000); unknown parts are None."""
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _fetch_once(url: str, part: Path, timeout: float, expected_size: int | None) -> None:
    """One attempt: continue `part` from its current size (or start it), raise _Retry on a short body."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset >= expected_size:
        if offset == expected_size:
            return  # a previous attempt got every byte; verification decides if they are right
        part.unlink()
        offset = 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # our partial file is not a prefix the server can continue
            _, total = _content_range(e.headers.get("Content-Range"))
            e.close()
            if total == offset:
                return
            part.unlink()
            raise _Retry(f"server refused to resume at byte {offset}; starting over") from None
        raise
    with resp:
        total = None
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Retry(f"server resumed at byte {start}, not {offset}; starting over")
            mode = "ab"
        else:  # 200: the server sent the whole file (it ignores Range, or we asked for none)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        with open(part, mode) as f:
            # urllib's read() returns b"" when the connection closes early, so the size check
            # below (not an exception) is what catches a truncated body
            while chunk := resp.read(CHUNK_BYTES):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retry(f"connection closed after {size} of {total} bytes")


def download_file(url: str, dest: str | os.PathLike, *, expected_size: int | None = None,
                  sha256: str | None = None, verify: Callable[[Path], None] | None = None,
                  retries: int = 5, timeout: float = 30.0, backoff: float = 1.0) -> Path:
    """Download `url` to `dest` (atomically) unless a good copy is already there; return dest.

    retries: extra attempts after the first; attempt k waits backoff * 2**(k-1) seconds first.
    timeout: seconds allowed for connecting and for each read (a stalled server counts as failed).
    verify: called with the finished temporary file; it raises to reject the content.
    Raises DownloadError (one sentence: what failed and what to do) when every attempt failed."""
    dest = Path(dest)
    if dest.exists() and _problem(dest, expected_size, sha256, verify) is None:
        return dest  # fast path without touching the lock
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with file_lock(dest):
        if dest.exists():
            why = _problem(dest, expected_size, sha256, verify)
            if why is None:
                return dest  # another process finished it while we waited for the lock
            logger.warning("%s is corrupt (%s); downloading it again", dest, why)
            dest.unlink()
        last_error = "no attempt made"
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(MAX_BACKOFF_S, backoff * 2 ** (attempt - 1)))
            try:
                _fetch_once(url, part, timeout, expected_size)
                why = _problem(part, expected_size, sha256, verify)
                if why is None:
                    os.replace(part, dest)
                    return dest
                part.unlink()  # wrong bytes cannot be resumed into right ones
                last_error = f"downloaded file {why}"
            except urllib.error.HTTPError as e:
                e.close()
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}; check the URL "
                                        f"(or the mirror it points at)") from None
                last_error = f"HTTP {e.code} {e.reason}"
            except urllib.error.URLError as e:
                last_error = str(e.reason)
            except (_Retry, OSError, http.client.HTTPException) as e:  # OSError covers timeouts and resets
                last_error = str(e) or type(e).__name__
            logger.warning("download of %s failed (attempt %d of %d): %s", url, attempt + 1, retries + 1, last_error)
    raise DownloadError(f"could not download {url} after {retries + 1} attempts (last error: {last_error}); "
                        f"check the network or the URL and run again (partial data is kept and resumed)")
