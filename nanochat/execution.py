"""Run untrusted Python (HumanEval completions) in a separate, limited interpreter process.

    result = execute_code(program, timeout=5.0)
    result.passed, result.timeout, result.memory_exceeded, result.error, result.stdout, result.stderr

What every run gets, on any Linux:
- a fresh `python -I -S` process of the base interpreter (isolated mode: no PYTHON* variables, no
  cwd on sys.path; no site-packages: the standard library only) in its own session and process
  group; at the wall-clock deadline, and as soon as the program itself exits, it and everything
  it started are killed with SIGKILL (background children and grandchildren too);
- rlimits: CPU seconds (deadline + 1), address space (`max_memory_bytes`), size of any file it
  writes (MAX_FILE_BYTES), open files (MAX_OPEN_FILES), no core dumps;
- a fresh temporary working directory (also its HOME and TMPDIR), removed afterwards;
- a scrubbed environment (PATH, HOME, TMPDIR, LANG, LC_ALL only), stdin from /dev/null;
- stdout and stderr captured, each capped at MAX_OUTPUT_BYTES (the rest is read and dropped).

Where unprivileged user namespaces work (probed once: `unshare --net --mount --map-root-user
--pid ... true`; bwrap is not used), the process also runs inside new user, network, mount and PID
namespaces:
- no network: only a loopback interface that is down (every connect fails); abstract Unix
  sockets belong to the network namespace, so the host's are out of reach too;
- its own filesystem view (pivot_root into a tmpfs): read-only binds of /usr, /bin, /lib* and the
  Python installation, a private writable /tmp (the temporary directory, also the cwd), /proc of
  its own PID namespace, /dev/null, zero, full, random, urandom and a private /dev/shm. Nothing
  else: no /etc, no /home, /root, /run or /var, no checkout of this repository, so no host
  socket files to connect() to and no files of the caller to read;
- its own PID namespace: it cannot see or signal processes outside, and when the program exits or
  is killed every process it started dies with it, even ones that called setsid();
- no capabilities (bounding set dropped, no_new_privs), and RLIMIT_NPROC = MAX_PROCESSES, counted
  inside the namespace. Linux exempts a caller that is root outside the namespace from that
  limit, so when you run as root a fork bomb is contained only by the deadline, the CPU limit
  and the PID namespace being killed.
Without namespaces none of these hold: the code runs as the calling user with all its privileges
(root if you are root), can use the network, read and write wherever that user can, and see
other processes; the number of processes is not limited (the limit would count every process of
the calling user). Its descendants are still ended with it: the bootstrap forks, and the parent
stays behind as a child subreaper (prctl PR_SET_CHILD_SUBREAPER) that adopts any orphan, even
one that called setsid(), and kills them all once the program has exited; at the deadline the
caller stops the whole tree (found through /proc) and then kills it.
`isolation()` says which mode this machine gets; tests/test_execution.py runs both.

Not isolated in either mode: CPU cache/timing side channels, kernel exploits.
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

# Runs inside the sandbox before the program: limits, then the program as __main__. With supervise=1
# it forks first; the parent adopts orphans (child subreaper) and kills them when the program ends.
# Its descendants() repeats _descendants() below: it runs under `python -I -S` and cannot import nanochat.
_BOOTSTRAP = """
import os, resource, runpy, signal, sys, time
cpu, mem, fsize, nofile, nproc, supervise = (int(a) for a in sys.argv[1:7])
path = sys.argv[7]
limits = [(resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
          (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_NOFILE, nofile, nofile),
          (resource.RLIMIT_CORE, 0, 0)]
if nproc > 0:
    limits.append((resource.RLIMIT_NPROC, nproc, nproc))
for which, soft, hard in limits:
    resource.setrlimit(which, (soft, hard))

def descendants():
    children = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []  # no procfs (not Linux): only the process group kill remains
    for name in filter(str.isdigit, names):
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found

if supervise:
    import ctypes
    try:
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us, not to init
    except (AttributeError, OSError):
        pass  # not Linux
    child = os.fork()
    if child:
        status = os.waitpid(child, 0)[1]
        while True:  # kill what the program left behind; orphans keep arriving until none is left
            left = descendants()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)
            try:  # reap what has died (never block: one forked after the scan is still alive)
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        os._exit(os.WEXITSTATUS(status))

sys.argv = [path]
try:
    runpy.run_path(path, run_name="__main__")
except MemoryError:
    os.write(2, b"MemoryError: memory limit exceeded\\n")
    os._exit(MEMORY_EXIT_CODE)
""".replace("MEMORY_EXIT_CODE", str(MEMORY_EXIT_CODE))

# Runs as root of the new user namespace: build the box's filesystem view in a tmpfs, pivot into it,
# then drop every capability and exec the bootstrap. Arguments: the box directory (becomes /tmp),
# an empty directory to mount the new root on, the number of host paths to bind read-only, those
# paths, then the command.
_NAMESPACE_SETUP = r"""
set -e
box=$1 root=$2 n=$3
shift 3
mount -t tmpfs -o mode=755,size=4m nanochat-box "$root"
while [ "$n" -gt 0 ]; do
  p=$1; shift; n=$((n - 1))
  if [ -L "$p" ]; then  # /lib -> usr/lib on merged-/usr systems: the same link inside
    mkdir -p "$root$(dirname "$p")"
    ln -s "$(readlink "$p")" "$root$p"
  elif [ -d "$p" ]; then
    mkdir -p "$root$p"
    mount --rbind "$p" "$root$p"
    mount -o remount,bind,ro "$root$p"
  fi
done
mkdir -p "$root/tmp" "$root/proc" "$root/dev/shm" "$root/.old"
mount --bind "$box" "$root/tmp"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777,size=16m shm "$root/dev/shm"
for d in null zero full random urandom; do
  touch "$root/dev/$d"
  mount --bind "/dev/$d" "$root/dev/$d"
done
cd "$root"
pivot_root . .old
umount -l /.old
rmdir /.old
mount -o remount,bind,ro /
cd /tmp
unset PWD OLDPWD  # sh's own variables: the program sees exactly the environment we passed
exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"
"""
# host paths every Python needs; the interpreter's own installation is added by _bind_paths()
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
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
BOX_IN_NAMESPACE = "/tmp"  # where the box appears inside the namespace's filesystem view


def _sandbox_env(box: str) -> dict[str, str]:
    return {"PATH": SANDBOX_PATH, "HOME": box, "TMPDIR": box, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _bind_paths() -> list[str]:
    """Host paths the box sees (read-only): the system directories and this Python's installation
    (the base interpreter, not a virtualenv: the program runs with -I -S and needs only the stdlib)."""
    exe, prefix = os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)
    extra = [prefix] if exe.startswith(prefix + os.sep) else [prefix, os.path.dirname(exe)]
    covered = lambda p: any(p == s or p.startswith(s + os.sep) for s in _SYSTEM_PATHS)  # noqa: E731
    return [*_SYSTEM_PATHS, *(p for p in extra if not covered(p))]


def _command(namespaces: bool, top: str, box: str, inner: list[str]) -> list[str]:
    """The command line that runs `inner` (whose paths are as seen from inside) in the sandbox."""
    if not namespaces:
        return inner
    binds = _bind_paths()
    root = os.path.join(top, "root")
    os.makedirs(root, exist_ok=True)
    return [*_UNSHARE, "sh", "-c", _NAMESPACE_SETUP, "sh", box, root, str(len(binds)), *binds, *inner]


@functools.lru_cache(maxsize=1)
def isolation() -> str:
    """'namespaces' when user/net/mount/pid namespaces work here, else 'basic' (see module docstring)."""
    tools = ("unshare", "sh", "setpriv", "mount", "umount", "pivot_root")
    if not all(shutil.which(tool, path=SANDBOX_PATH) for tool in tools):
        return "basic"
    top = tempfile.mkdtemp(prefix="nanochat_probe_")
    try:
        box = os.path.join(top, "box")
        os.mkdir(box)
        cmd = _command(True, top, box, [os.path.realpath(sys.executable), "-I", "-S", "-c", "pass"])
        proc = subprocess.run(cmd, cwd=box, env=_sandbox_env(BOX_IN_NAMESPACE), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "basic"
    finally:
        _remove_tree(top)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip()[:200]
        logger.info("sandbox without namespaces (unshare failed: %s)", reason)
        return "basic"
    return "namespaces"


def execute_code(code: str, timeout: float = 5.0, max_memory_bytes: int = 256 * 2**20) -> ExecutionResult:
    """Run `code` as a Python program in the sandbox described above and report how it went."""
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    top = tempfile.mkdtemp(prefix="nanochat_exec_")
    try:
        box = os.path.join(top, "box")
        os.mkdir(box)
        with open(os.path.join(box, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        namespaces = isolation() == "namespaces"
        inside = BOX_IN_NAMESPACE if namespaces else box
        limits = [math.ceil(timeout) + 1, max_memory_bytes, MAX_FILE_BYTES, MAX_OPEN_FILES,
                  MAX_PROCESSES if namespaces else 0, 0 if namespaces else 1]
        inner = [os.path.realpath(sys.executable), "-I", "-S", "-B", "-c", _BOOTSTRAP, *map(str, limits),
                 os.path.join(inside, "program.py")]
        proc = subprocess.Popen(_command(namespaces, top, box, inner), cwd=box, env=_sandbox_env(inside),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True)
        try:
            stdout, stderr, killed_at_deadline = _collect(proc, time.monotonic() + timeout)
        finally:
            _kill_tree(proc.pid)
            proc.wait()
        return _result(proc.returncode, killed_at_deadline, stdout, stderr, timeout)
    finally:
        _remove_tree(top)


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
                _kill_tree(proc.pid)
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


def _descendants(pid: int) -> list[int]:
    """Pids of every live descendant of `pid`, from the parent links in /proc."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in filter(str.isdigit, names):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pid: int) -> None:
    """Kill `pid`, its process group and every descendant, even ones in other sessions: stop them
    all first (a stopped process cannot fork or be re-parented away), until no new one appears."""
    stopped: set[int] = set()
    while new := [p for p in [pid, *_descendants(pid)] if p not in stopped]:
        for p in new:
            try:
                os.kill(p, signal.SIGSTOP)
            except OSError:
                pass
            stopped.add(p)
    _kill_group(pid)
    for p in stopped:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def _result(returncode: int, killed_at_deadline: bool, stdout: str, stderr: str, timeout: float) -> ExecutionResult:
    if killed_at_deadline or returncode == -signal.SIGXCPU:  # SIGXCPU: the CPU-seconds rlimit
        return ExecutionResult(False, timeout=True, error=f"timed out after {timeout:g} s", stdout=stdout,
                               stderr=stderr)
    if returncode == MEMORY_EXIT_CODE or (returncode != 0 and "MemoryError" in stderr[-2000:]):
        return ExecutionResult(False, memory_exceeded=True, error="memory limit exceeded", stdout=stdout, stderr=stderr)
    if returncode == 0:
        return ExecutionResult(True, stdout=stdout, stderr=stderr)
    if returncode < 0:
        try:
            error = f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:  # real-time signals have no name
            error = f"killed by signal {-returncode}"
    else:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        error = lines[-1][:300] if lines else f"exited with status {returncode}"
    return ExecutionResult(False, error=error, stdout=stdout, stderr=stderr)


def _remove_tree(path: str) -> None:
    """rmtree that also removes what the program made unreadable (chmod 000 directories). Symbolic
    links are never followed (a link to / must not make us chmod or delete outside the box)."""
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                try:
                    os.chmod(full, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)
