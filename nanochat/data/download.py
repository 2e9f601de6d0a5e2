"""The one way nanochat fetches a file over HTTP(S): locked, retried, resumable, verified, atomic.

    from nanochat.data.download import download_file
    download_file(url, dest, expected_size=None, sha256=None, verify=check_fn)

- A file lock (kept in <base>/.locks/, so data directories hold no .lock files) makes concurrent
  callers (ranks, processes, threads) download once; the others wait and then find the finished file.
- Bytes stream into `<dest>.part`; only a verified file is renamed to `dest`, so a broken file is
  never left under the final name. A partial `.part` is kept and resumed with an HTTP Range
  request on the next attempt (or the next run); a server that answers 200 instead of 206
  restarts it from zero.
- Failures (connection errors, timeouts, 5xx, short bodies, failed verification, a transfer slower
  than `min_rate` bytes/s over any `rate_window` seconds) are retried with exponential backoff;
  4xx other than 408/429 fail at once, since asking again will not help. `retrying()` is that
  policy on its own, for other requests (e.g. probing a server before downloading from it).
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
from typing import TypeVar

from nanochat.common import file_lock, sha256_file

logger = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK_BYTES = 1 << 20
USER_AGENT = "nanochat-downloader/1"
MAX_BACKOFF_S = 60.0
# a server trickling bytes never trips the per-read timeout: below this rate the attempt fails
MIN_RATE_BYTES_S = 4096
RATE_WINDOW_S = 60.0


class DownloadError(RuntimeError):
    """A file could not be downloaded (or verified) after all attempts. `reason`: the short why."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


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


def _fetch_once(url: str, part: Path, timeout: float, expected_size: int | None, min_rate: float,
                rate_window: float) -> None:
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
            # read1 returns what one socket read brings (read() would wait for a whole chunk, so a
            # trickle could block it for ever); b"" when the connection closes, early or not: the
            # size check below (not an exception) is what catches a truncated body
            window_start, window_bytes = time.monotonic(), 0
            while chunk := resp.read1(CHUNK_BYTES):
                f.write(chunk)
                window_bytes += len(chunk)
                elapsed = time.monotonic() - window_start
                if elapsed >= rate_window:
                    if window_bytes / elapsed < min_rate:
                        raise _Retry(f"too slow: {window_bytes / elapsed:.0f} bytes/s over {elapsed:.0f} s "
                                     f"(the minimum is {min_rate:.0f})")
                    window_start, window_bytes = time.monotonic(), 0
            f.flush()
            os.fsync(f.fileno())
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retry(f"connection closed after {size} of {total} bytes")


def retrying(attempt: Callable[[], T], url: str, *, retries: int = 5, backoff: float = 1.0,
             failed: str = "could not reach", advice: str = "check the network or the URL and run again") -> T:
    """attempt(), retried on failures another attempt may fix (connection errors, timeouts, 5xx,
    408/429, _Retry); attempt k waits backoff * 2**(k-1) seconds first. Raises DownloadError (one
    sentence ending in `advice`) on a 4xx or when every attempt failed."""
    last_error = "no attempt made"
    for k in range(retries + 1):
        if k:
            time.sleep(min(MAX_BACKOFF_S, backoff * 2 ** (k - 1)))
        try:
            return attempt()
        except urllib.error.HTTPError as e:
            e.close()
            if 400 <= e.code < 500 and e.code not in (408, 429):
                raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}; check the URL "
                                    f"(or the mirror it points at)", f"HTTP {e.code} {e.reason}") from None
            last_error = f"HTTP {e.code} {e.reason}"
        except urllib.error.URLError as e:
            last_error = str(e.reason)
        except (_Retry, OSError, http.client.HTTPException) as e:  # OSError covers timeouts and resets
            last_error = str(e) or type(e).__name__
        logger.warning("request to %s failed (attempt %d of %d): %s", url, k + 1, retries + 1, last_error)
    raise DownloadError(f"{failed} {url} after {retries + 1} attempts (last error: {last_error}); {advice}",
                        f"{retries + 1} attempts failed, the last with {last_error}")


def download_file(url: str, dest: str | os.PathLike, *, expected_size: int | None = None,
                  sha256: str | None = None, verify: Callable[[Path], None] | None = None,
                  retries: int = 5, timeout: float = 30.0, backoff: float = 1.0,
                  min_rate: float = MIN_RATE_BYTES_S, rate_window: float = RATE_WINDOW_S) -> Path:
    """Download `url` to `dest` (atomically) unless a good copy is already there; return dest.

    retries: extra attempts after the first; attempt k waits backoff * 2**(k-1) seconds first.
    timeout: seconds allowed for connecting and for each read (a stalled server counts as failed).
    min_rate, rate_window: an attempt slower than min_rate bytes/s over rate_window seconds fails.
    verify: called with the finished temporary file; it raises to reject the content.
    Raises DownloadError (one sentence: what failed and what to do) when every attempt failed."""
    dest = Path(dest)
    if dest.exists() and _problem(dest, expected_size, sha256, verify) is None:
        return dest  # fast path without touching the lock
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    def attempt() -> Path:
        _fetch_once(url, part, timeout, expected_size, min_rate, rate_window)
        why = _problem(part, expected_size, sha256, verify)
        if why is not None:
            part.unlink()  # wrong bytes cannot be resumed into right ones
            raise _Retry(f"downloaded file {why}")
        os.replace(part, dest)
        return dest

    with file_lock(dest):
        if dest.exists():
            why = _problem(dest, expected_size, sha256, verify)
            if why is None:
                return dest  # another process finished it while we waited for the lock
            logger.warning("%s is corrupt (%s); downloading it again", dest, why)
            dest.unlink()
        return retrying(attempt, url, retries=retries, backoff=backoff, failed="could not download",
                        advice="check the network or the URL and run again (partial data is kept and resumed)")
