"""Run untrusted Python (HumanEval completions) in a separate, limited interpreter process.

    result = execute_code(program, timeout=5.0)
    result.passed, result.timeout, result.memory_exceeded, result.error, result.stdout, result.stderr

What every run gets, on any Linux:
- a fresh `python -I` process (isolated mode: no PYTHON* variables, no user site, no cwd on sys.path)
  in its own session and process group; at the wall-clock deadline, and as soon as the program
  itself exits, the whole group is killed with SIGKILL (background children and grandchildren too);
- rlimits: CPU seconds (deadline + 1), address space (`max_memory_bytes`), size of any file it
  writes (MAX_FILE_BYTES), open files (MAX_OPEN_FILES), no core dumps;
- a fresh temporary working directory (also its HOME and TMPDIR), removed afterwards;
- a scrubbed environment (PATH, HOME, TMPDIR, LANG, LC_ALL only), stdin from /dev/null;
- stdout and stderr captured, each capped at MAX_OUTPUT_BYTES (the rest is read and dropped).

Where unprivileged user namespaces work (probed once: `unshare --net --mount --map-root-user
--pid ... true`; bwrap is not used), the process also runs inside new user, network, mount and PID
namespaces:
- no network: only a loopback interface that is down (every connect fails);
- the whole filesystem is read-only except the temporary directory (every mount is remounted
  read-only in the private mount namespace) — but still READABLE: the code can read every file
  the calling user's uid can read by its permission bits;
- its own PID namespace: it cannot see or signal processes outside, and when the program exits or
  is killed every process it started dies with it, even ones that called setsid();
- no capabilities (bounding set dropped, no_new_privs), and RLIMIT_NPROC = MAX_PROCESSES, counted
  inside the namespace. Linux exempts a caller that is root outside the namespace from that
  limit, so when you run as root a fork bomb is contained only by the deadline, the CPU limit
  and the PID namespace being killed.
Without namespaces none of these four hold: the code runs as the calling user with all its
privileges (root if you are root), can use the network, write wherever that user can and see
other processes, and a child that leaves the process group (setsid) escapes the kill; the number
of processes is not limited (the limit would count every process of the calling user).
`isolation()` says which mode this machine gets; tests/test_execution.py runs both.

Not isolated in either mode: reading files, CPU cache/timing side channels, kernel exploits.
This is a sandbox for buggy model-written code, not a security boundary against an attacker.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 64 * 1024  # per stream
MAX_FILE_BYTES = 16 * 2**20
MAX_OPEN_FILES = 64
MAX_PROCESSES = 32  # only enforced inside a user namespace (see module docstring)
EXIT_GRACE_SECONDS = 1.0  # after the program exits, how long we wait for pipes held by escaped children
MEMORY_EXIT_CODE = 86  # the bootstrap's exit status after a MemoryError

# Runs inside the sandbox before the program: limits, then the program as __main__.
_BOOTSTRAP = """
import os, resource, runpy, sys
cpu, mem, fsize, nofile, nproc = (int(a) for a in sys.argv[1:6])
path = sys.argv[6]
limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
          (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_NOFILE, nofile, nofile),
          (resource.RLIMIT_CORE, 0, 0)]
if nproc > 0:
    limits.append((resource.RLIMIT_NPROC, nproc, nproc))
for which, soft, hard in limits:
    resource.setrlimit(which, (soft, hard))
sys.argv = [path]
try:
    runpy.run_path(path, run_name="__main__")
except MemoryError:
    os.write(2, b"MemoryError: memory limit exceeded\\n")
    os._exit(%d)
""" % MEMORY_EXIT_CODE

# Runs as root of the new user namespace: keep the box writable, make every other mount read-only,
# then drop every capability and exec the bootstrap. mountinfo escapes spaces as \\040 (printf %b).
_NAMESPACE_SETUP = r"""
set -e
box=$1; shift
mount --bind "$box" "$box"
cd "$box"  # the inherited cwd still points into the original (soon read-only) mount
for m in $(awk '{print $5}' /proc/self/mountinfo); do
  m=$(printf '%b' "$m")
  [ "$m" = "$box" ] || mount -o remount,bind,ro "$m" 2>/dev/null || true
done
unset PWD OLDPWD  # sh's own variables: the program sees exactly the environment we passed
exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"
"""
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child",
            "--mount-proc"]


@dataclass
class ExecutionResult:
    passed: bool  # exited with status 0 before the deadline
    timeout: bool = False  # killed at the wall-clock deadline or by the CPU limit
    memory_exceeded: bool = False
    error: str = ""  # one line: why it did not pass ("" when it passed)
    stdout: str = ""
    stderr: str = ""


SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def _sandbox_env(box: str) -> dict[str, str]:
    return {"PATH": SANDBOX_PATH, "HOME": box, "TMPDIR": box, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


@functools.lru_cache(maxsize=1)
def isolation() -> str:
    """'namespaces' when user/net/mount/pid namespaces work here, else 'basic' (see module docstring)."""
    if not all(shutil.which(tool, path=SANDBOX_PATH) for tool in ("unshare", "sh", "setpriv", "mount", "awk")):
        return "basic"
    with tempfile.TemporaryDirectory(prefix="nanochat_probe_") as box:
        try:
            proc = subprocess.run([*_UNSHARE, "sh", "-c", _NAMESPACE_SETUP, "sh", box, "true"], cwd=box,
                                  env=_sandbox_env(box), stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "basic"
    if proc.returncode != 0:
        logger.info("sandbox without namespaces (unshare failed: %s)", proc.stderr.decode(errors="replace").strip()[:200])
        return "basic"
    return "namespaces"


def execute_code(code: str, timeout: float = 5.0, max_memory_bytes: int = 256 * 2**20) -> ExecutionResult:
    """Run `code` as a Python program in the sandbox described above and report how it went."""
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    box = tempfile.mkdtemp(prefix="nanochat_exec_")
    try:
        path = os.path.join(box, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)
        namespaces = isolation() == "namespaces"
        limits = [math.ceil(timeout) + 1, max_memory_bytes, MAX_FILE_BYTES, MAX_OPEN_FILES,
                  MAX_PROCESSES if namespaces else 0]
        cmd = [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, *map(str, limits), path]
        if namespaces:
            cmd = [*_UNSHARE, "sh", "-c", _NAMESPACE_SETUP, "sh", box, *cmd]
        proc = subprocess.Popen(cmd, cwd=box, env=_sandbox_env(box), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        try:
            stdout, stderr, killed_at_deadline = _collect(proc, time.monotonic() + timeout)
        finally:
            _kill_group(proc.pid)
            proc.wait()
        return _result(proc.returncode, killed_at_deadline, stdout, stderr, timeout)
    finally:
        _remove_tree(box)


def _collect(proc: subprocess.Popen, deadline: float) -> tuple[str, str, bool]:
    """Read both pipes (capped) until they close; kill the group at the deadline or once the
    program has exited. Returns (stdout, stderr, killed_at_deadline)."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    buffers = {out_fd: bytearray(), err_fd: bytearray()}
    dropped = dict.fromkeys(buffers, 0)
    sel = selectors.DefaultSelector()
    for fd in buffers:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    killed_at_deadline, exited_at = False, None
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and _has_exited(proc.pid):
                exited_at = now
                _kill_group(proc.pid)  # the program is over: so are its background children
            elif exited_at is None and now >= deadline:
                killed_at_deadline = True
                _kill_group(proc.pid)
                exited_at = now
            if not sel.get_map():  # both pipes closed
                if exited_at is not None:
                    break
                time.sleep(0.05)  # ... but the program still runs
                continue
            if exited_at is not None and now - exited_at > EXIT_GRACE_SECONDS:
                break  # a process outside the group still holds a pipe
            for key, _ in sel.select(timeout=0.05):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(key.fd)
                    continue
                buf = buffers[key.fd]
                room = MAX_OUTPUT_BYTES - len(buf)
                buf += data[:room]
                dropped[key.fd] += max(0, len(data) - room)
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()

    def text(fd: int) -> str:
        out = buffers[fd].decode("utf-8", errors="replace")
        return out + (f"\n[... {dropped[fd]:,} more bytes dropped]" if dropped[fd] else "")

    return text(out_fd), text(err_fd), killed_at_deadline


def _has_exited(pid: int) -> bool:
    """True once `pid` has exited, without reaping it: its pid (= the group id) cannot be reused
    before we have killed the group."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _result(returncode: int, killed_at_deadline: bool, stdout: str, stderr: str, timeout: float) -> ExecutionResult:
    if killed_at_deadline or returncode == -signal.SIGXCPU:  # SIGXCPU: the CPU-seconds rlimit
        return ExecutionResult(False, timeout=True, error=f"timed out after {timeout:g} s", stdout=stdout, stderr=stderr)
    if returncode == MEMORY_EXIT_CODE or (returncode != 0 and "MemoryError" in stderr[-2000:]):
        return ExecutionResult(False, memory_exceeded=True, error="memory limit exceeded", stdout=stdout, stderr=stderr)
    if returncode == 0:
        return ExecutionResult(True, stdout=stdout, stderr=stderr)
    if returncode < 0:
        error = f"killed by signal {signal.Signals(-returncode).name}"
    else:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        error = lines[-1][:300] if lines else f"exited with status {returncode}"
    return ExecutionResult(False, error=error, stdout=stdout, stderr=stderr)


def _remove_tree(path: str) -> None:
    """rmtree that also removes what the program made unreadable (chmod 000 directories)."""
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o700, follow_symlinks=False)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
