"""The code sandbox: results, timeouts that kill the whole process tree, memory and output limits,
scrubbed environment, temporary directory, no stdin; namespace isolation where the machine has it."""

import os
import random
import socket
import tempfile
import textwrap
import time

import pytest

from nanochat import execution
from nanochat.execution import MAX_OUTPUT_BYTES, execute_code

NAMESPACES = execution.isolation() == "namespaces"


@pytest.fixture(params=["namespaces", "basic"])
def mode(request, monkeypatch):
    """Run a test in both modes: with namespaces where available, and always without them."""
    if request.param == "namespaces" and not NAMESPACES:
        pytest.skip("user namespaces are not available here")
    monkeypatch.setattr(execution, "isolation", lambda: request.param)
    return request.param


def processes_with(marker: str) -> list[int]:
    """Pids (outside any namespace) of live processes whose command line contains `marker`."""
    pids = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except (OSError, ValueError):
            pass
    return pids


def test_passing_and_failing_code(mode):
    ok = execute_code("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('fine')")
    assert ok.passed and not ok.timeout and not ok.memory_exceeded and ok.error == ""
    assert ok.stdout == "fine\n"
    bad = execute_code("assert 1 + 1 == 3, 'math is broken'")
    assert not bad.passed and not bad.timeout and not bad.memory_exceeded
    assert bad.error == "AssertionError: math is broken"
    assert "Traceback" in bad.stderr
    assert execute_code("import sys; sys.exit(3)").error == "exited with status 3"
    assert not execute_code("def f(:\n  pass").passed  # syntax error


def test_timeout_kills_the_whole_process_group(mode):
    marker = f"{1000 + random.random():.9f}"  # a unique argument to find the grandchild by
    code = textwrap.dedent(f"""
        import subprocess
        subprocess.Popen(["sleep", "{marker}"])   # a grandchild of ours
        subprocess.Popen(["sh", "-c", "sleep {marker}; :"])   # and a great-grandchild
        print("started", flush=True)
        while True:
            pass
    """)
    t0 = time.monotonic()
    r = execute_code(code, timeout=1.5)
    assert r.timeout and not r.passed and "timed out" in r.error
    assert r.stdout == "started\n"
    assert time.monotonic() - t0 < 5
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_background_children_die_when_the_program_exits(mode):
    marker = f"{1000 + random.random():.9f}"
    r = execute_code(f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'])\nprint('bye')", timeout=5)
    assert r.passed and r.stdout == "bye\n"
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_sleeping_code_times_out(mode):
    r = execute_code("import time\ntime.sleep(60)", timeout=1.0)
    assert r.timeout and not r.passed
    # closing its output does not end the program early (nor make it fail)
    r = execute_code("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(0.3)", timeout=5)
    assert r.passed


def test_memory_bomb(mode):
    r = execute_code("x = bytearray(2 ** 30)\nprint('allocated')", max_memory_bytes=256 * 2**20)
    assert r.memory_exceeded and not r.passed and not r.timeout
    assert r.stdout == ""
    r = execute_code("chunks = []\nwhile True:\n    chunks.append(b'x' * 2**20)", max_memory_bytes=128 * 2**20)
    assert r.memory_exceeded


def test_huge_output_is_capped(mode):
    r = execute_code("import sys\n"
                     "for _ in range(20000):\n    sys.stdout.write('x' * 1000)\n"
                     "sys.stderr.write('e' * 10**6)")
    assert r.passed
    assert r.stdout.startswith("x" * MAX_OUTPUT_BYTES) and "more bytes dropped" in r.stdout
    assert len(r.stdout) < MAX_OUTPUT_BYTES + 100
    assert len(r.stderr) < MAX_OUTPUT_BYTES + 100


def test_environment_is_scrubbed_and_stdin_closed(mode, monkeypatch):
    monkeypatch.setenv("NANOCHAT_TEST_SECRET", "hunter2")
    r = execute_code("import os, sys\nprint(sorted(os.environ))\nprint(repr(sys.stdin.read()))")
    assert r.passed, r.stderr
    names, stdin = r.stdout.splitlines()
    assert "NANOCHAT_TEST_SECRET" not in names and "hunter2" not in r.stdout
    assert set(eval(names)) == {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"}
    assert stdin == "''"
    assert not execute_code("input()").passed  # EOFError


def boxes() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("nanochat_exec_")}


def test_temporary_directory_is_the_cwd_and_is_removed(mode):
    code = textwrap.dedent("""
        import os
        print(os.getcwd())
        os.makedirs("a/b")
        open("a/b/f.txt", "w").write("data")
        os.symlink("/", "root_link")   # cleanup must neither follow it nor crash on it
        os.symlink("/", "a/b/root_link")
        os.chmod("a", 0)   # even an unreadable directory is cleaned up
    """)
    before = boxes()
    r = execute_code(code)
    assert r.passed, r.stderr
    box = r.stdout.strip()
    if mode == "namespaces":
        assert box == "/tmp"
    else:
        assert os.path.basename(os.path.dirname(box)).startswith("nanochat_exec_")
    assert boxes() <= before  # nothing left behind
    assert os.stat("/").st_mode & 0o777 != 0o700  # the link to / was not chmod-ed through


def test_program_killed_by_a_realtime_signal(mode):
    r = execute_code("import os\nos.kill(os.getpid(), 40)")
    # in a PID namespace the program is its init, which the kernel shields from its own signals
    assert r.passed if mode == "namespaces" else r.error == "killed by signal 40"


@pytest.mark.parametrize("loop", [False, True], ids=["exits", "deadline"])
def test_setsid_grandchild_dies_with_the_program(mode, loop):
    marker = f"{1000 + random.random():.9f}"
    code = textwrap.dedent(f"""
        import subprocess, time
        subprocess.Popen(["sh", "-c", "sleep {marker}; :"], start_new_session=True)
        subprocess.Popen(["setsid", "sh", "-c", "sleep {marker}; :"])
        time.sleep(0.3)
        while {loop}:
            pass
    """)
    r = execute_code(code, timeout=1.5)
    assert r.timeout if loop else r.passed, r.stderr
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_file_size_limit(mode):
    code = f"with open('big', 'wb') as f:\n    f.write(b'x' * {execution.MAX_FILE_BYTES + 1})"
    r = execute_code(code)
    assert not r.passed and "File too large" in r.error


@pytest.mark.skipif(not NAMESPACES, reason="user namespaces are not available here")
def test_namespace_isolation():
    assert execution.isolation() == "namespaces"
    home = os.path.expanduser("~")
    marker = f"{1000 + random.random():.9f}"
    code = textwrap.dedent(f"""
        import os, socket
        open("mine.txt", "w").write("the box is writable")
        for path in ["/usr/nanochat_sandbox_escape", {home!r} + "/nanochat_sandbox_escape",
                     "/nanochat_sandbox_escape", {os.getcwd()!r} + "/nanochat_sandbox_escape"]:
            try:
                open(path, "w")
                print("WROTE", path)
            except OSError:
                pass
        try:
            socket.create_connection(("127.0.0.1", 22), timeout=1)
            print("CONNECTED")
        except OSError:
            pass
        print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
        import subprocess
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)  # leaves the process group
    """)
    r = execute_code(code)
    assert r.passed, r.stderr
    assert "WROTE" not in r.stdout and "CONNECTED" not in r.stdout
    pids = eval(r.stdout.split("pids", 1)[1].strip().splitlines()[0])
    assert max(pids) < 10  # its own PID namespace: it sees only itself
    for path in ["/tmp", os.path.expanduser("~"), "/dev/shm", os.getcwd(), "/usr", "/"]:
        assert not os.path.exists(os.path.join(path, "nanochat_sandbox_escape"))
    time.sleep(0.2)
    assert processes_with(marker) == []  # the PID namespace died with the program


@pytest.mark.skipif(not NAMESPACES, reason="user namespaces are not available here")
def test_namespace_filesystem_view(tmp_path):
    """Only what Python needs: no host socket files, no /etc, no repository files; /tmp is private."""
    sock_path = str(tmp_path / "host.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen()
    socket.socket(socket.AF_UNIX).connect(sock_path)  # reachable from outside the box
    (tmp_path / "secret.txt").write_text("host data")
    repo_file = os.path.abspath(__file__)
    code = textwrap.dedent(f"""
        import os, socket
        try:
            socket.socket(socket.AF_UNIX).connect({sock_path!r})
            print("CONNECTED")
        except OSError:
            pass
        for path in ["/etc/passwd", "/etc/hostname", {repo_file!r}, {str(tmp_path / "secret.txt")!r}]:
            try:
                open(path).read()
                print("READ", path)
            except OSError:
                pass
        print("tmp", os.listdir("/tmp"))
        print("top", sorted(os.listdir("/")))
    """)
    try:
        r = execute_code(code)
    finally:
        server.close()
    assert r.passed, r.stderr
    assert "CONNECTED" not in r.stdout and "READ" not in r.stdout
    assert "tmp ['program.py']" in r.stdout
    top = eval(r.stdout.split("top", 1)[1].strip())
    assert not {"etc", "home", "run", "var", "work"} & set(top)

    humaneval_style = textwrap.dedent("""
        import collections, heapq, itertools, json, math, re, string, hashlib, random, fractions
        from typing import List

        def has_close_elements(numbers: List[float], threshold: float) -> bool:
            return any(abs(a - b) < threshold for a, b in itertools.combinations(numbers, 2))

        assert has_close_elements([1.0, 2.8, 3.0], 0.3) and not has_close_elements([1.0, 2.0], 0.5)
        assert heapq.nsmallest(2, [5, 1, 4]) == [1, 4] and math.gcd(12, 18) == 6
        assert json.loads(json.dumps({"a": [1, 2]})) == {"a": [1, 2]} and re.findall(r"\\d+", "a1b22") == ["1", "22"]
        open("scratch.txt", "w").write("x")
        print(collections.Counter("hello").most_common(1), random.Random(0).random() < 1)
    """)
    r = execute_code(humaneval_style)
    assert r.passed, r.stderr
