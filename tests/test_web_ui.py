"""The chat UI (nanochat/ui.html): self-contained and escaping by inspection, then driven in a real
headless chromium against the real script."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from _browser import Browser, needs_chromium, run_chromium
from _http import chat_web, metric
from conftest import REPO

UI_PATH = REPO / "nanochat" / "ui.html"


@pytest.fixture(scope="module")
def server(tiny_base_checkpoint, tmp_path_factory):
    """The real script on the tiny base checkpoint, queue of 4, default max_tokens 16."""
    log = tmp_path_factory.mktemp("chat_web") / "server.log"
    with chat_web(tiny_base_checkpoint, log, "--queue-size=4", "--max-tokens=16") as addr:
        yield addr


# -------------------------------------------------------------------------------------------------
# The UI


def test_ui_is_self_contained_and_escapes():
    html = UI_PATH.read_text()
    # no external requests: no absolute URLs, no protocol-relative ones, a CSP that forbids them
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), "the UI references another origin"
    assert "connect-src 'self'" in html and "default-src 'none'" in html
    # untrusted text only ever goes in as text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in html, sink




@pytest.mark.slow
@needs_chromium
def test_ui_conversation_in_chromium(server, tmp_path):
    from urllib.parse import quote

    question = "What is <b>2+3</b>? <img src=x onerror=alert(1)>"
    browser = Browser()
    try:  # ?q= sends a first message as soon as the page loads
        browser.send("Page.navigate", url=f"http://{server}/?q={quote(question)}")
        browser.wait("document.querySelectorAll('#thread .msg').length === 2 && !document.querySelector('.pending')"
                     " && document.getElementById('status').className === 'ok'", "the reply")
        thread = browser.js("document.getElementById('thread').outerHTML")
        dom_images = browser.js("document.querySelectorAll('#thread img, #thread b').length")
        browser.screenshot(tmp_path / "ui.png")
    finally:
        browser.close()
    # the question is shown as text, escaped; no element was created from it
    assert 'class="msg user"' in thread and "What is &lt;b&gt;2+3&lt;/b&gt;? &lt;img src=x" in thread
    assert dom_images == 0
    # the streamed reply arrived and finished (Regenerate appears once generation is over)
    assert 'class="msg assistant"' in thread and ">Regenerate</button>" in thread
    assert (tmp_path / "ui.png").stat().st_size > 5000


@pytest.mark.slow
@needs_chromium
def test_ui_says_when_the_server_is_down():
    dom = run_chromium(UI_PATH.as_uri() + "?q=hello", "--dump-dom", budget_ms=3000)
    banner = re.search(r'<div id="banner"[^>]*class="show"[^>]*>(.*?)</div>', dom, re.S)
    assert banner and "Cannot reach the nanochat server" in banner.group(1), dom[:3000]
    assert re.search(r'id="status"[^>]*class="down"', dom)


@pytest.mark.slow
@needs_chromium
def test_ui_send_regenerate_edit_new_chat(server, tmp_path):
    browser = Browser()
    count = "document.querySelectorAll('#thread .msg').length"
    idle = "document.getElementById('send').style.display !== 'none' && !document.querySelector('.pending')"
    try:
        browser.send("Page.navigate", url=f"http://{server}/")
        browser.wait("document.getElementById('status').className === 'ok'", "the UI to see the server")
        # Shift+Enter does not send; Enter does
        browser.js("const i = document.getElementById('input'); i.focus(); i.value = 'Hello'; true")
        browser.key("Enter", shift=True)
        assert browser.js(count) == 0
        browser.key("Enter")
        browser.wait(f"{count} === 2 && ({idle})", "the first reply")
        assert browser.js("document.querySelector('#thread .msg.user').textContent") == "Hello"
        assert browser.js("document.getElementById('input').value") == ""
        # Regenerate replaces the last answer with a new request
        finished = metric(server, "nanochat_requests_finished_total", '{reason="stop"}') + \
            metric(server, "nanochat_requests_finished_total", '{reason="length"}')
        browser.js("[...document.querySelectorAll('button')].find(b => b.textContent === 'Regenerate').click(); true")
        browser.wait(f"{count} === 2 && ({idle})", "the regenerated reply")
        assert metric(server, "nanochat_requests_finished_total", '{reason="stop"}') + \
            metric(server, "nanochat_requests_finished_total", '{reason="length"}') == finished + 1
        # click the question, edit it, resend: the old answer is replaced
        browser.js("document.querySelector('#thread .msg.user').click(); true")
        browser.wait("!!document.querySelector('.editor textarea')", "the editor")
        browser.js("document.querySelector('.editor textarea').value = 'Edited question'; "
                   "[...document.querySelectorAll('.editor button')].find(b => b.textContent === 'Send').click(); true")
        browser.wait(f"{count} === 2 && ({idle}) && !document.querySelector('.editor')", "the edited conversation")
        assert browser.js("document.querySelector('#thread .msg.user').textContent") == "Edited question"
        # a second turn, then a screenshot of a real conversation
        browser.js("const j = document.getElementById('input'); j.focus(); j.value = 'And then? 🙂'; true")
        browser.key("Enter")
        browser.wait(f"{count} === 4 && ({idle})", "the second reply")
        browser.screenshot(tmp_path / "conversation.png")
        if os.environ.get("NANOCHAT_UI_SCREENSHOT"):
            shutil.copy(tmp_path / "conversation.png", os.environ["NANOCHAT_UI_SCREENSHOT"])
        # tool calls render as a chip, built from text nodes (markup in the expression stays text)
        chip = browser.js("const n = document.createElement('div'); "
                          "fillAssistant(n, 'so [calculator: 2+3 = 5] and [calculator: <b>x</b>', false); "
                          "[n.querySelectorAll('.tool').length, n.querySelector('.tool').textContent, "
                          " n.querySelectorAll('b').length]")
        assert chip == [2, "calculator2+3 = 5", 0]
        # New chat empties the thread
        browser.js("document.getElementById('new-chat').click(); true")
        assert browser.js(count) == 0 and browser.js("!!document.querySelector('.empty')")
    finally:
        browser.close()
