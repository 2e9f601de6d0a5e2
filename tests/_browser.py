"""Headless chromium for the UI tests: a one-shot run (--dump-dom) and a driver over the DevTools
protocol on a pipe, stdlib only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from _http import wait_until
from nanochat.common import stop_process


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="chromium is not installed "
                                    "(apt-get install -y chromium) - the browser tests need it")


def run_chromium(url: str, *extra: str, budget_ms: int = 8000) -> str:
    with contextlib.ExitStack() as stack:
        import tempfile

        profile = stack.enter_context(tempfile.TemporaryDirectory())
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1100,800",
               f"--virtual-time-budget={budget_ms}", *extra, url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
    the browser reads NUL-terminated JSON commands on fd 3 and answers on fd 4): stdlib only."""

    def __init__(self):
        import tempfile

        self.profile = tempfile.TemporaryDirectory()
        import fcntl

        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        # the child's ends move to fds >= 10 first, so that placing them on 3 and 4 cannot clobber one another
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
        os.close(to_browser_r)
        os.close(from_browser_w)
        to_browser_r, from_browser_w = high
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={self.profile.name}", "--hide-scrollbars", "--window-size=1100,800",
               "--remote-debugging-pipe", "about:blank"]
        # bash moves our pipe ends to the fds 3 and 4 that chromium expects
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}', "bash", *cmd],
                                     pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer, self.next_id, self.session = b"", 0, None
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        while True:  # events and answers arrive interleaved; keep the answer to this command
            while b"\0" not in self.buffer:
                data = os.read(self.from_browser, 1 << 16)
                if not data:
                    raise AssertionError("chromium closed the DevTools pipe")
                self.buffer += data
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 60) -> None:
        def holds():
            try:
                return self.js(expression)
            except AssertionError:  # e.g. the page is still loading
                return False

        wait_until(holds, what, timeout)

    def key(self, key: str, shift: bool = False) -> None:
        params = {"key": key, "code": key, "windowsVirtualKeyCode": 13 if key == "Enter" else 0,
                  "modifiers": 8 if shift else 0}
        self.send("Input.dispatchKeyEvent", type="keyDown", **params)
        self.send("Input.dispatchKeyEvent", type="keyUp", **params)

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.to_browser)
        stop_process(self.proc)
        os.close(self.from_browser)
        self.profile.cleanup()
