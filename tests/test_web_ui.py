"""The chat UI (nanochat/ui.html): self-contained and escaping by inspection, then driven in a real
headless chromium against the real script, and against the app in-process with a scripted model
(Markdown, a reply that fills the context, reload, the status dot)."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from _browser import Browser, needs_chromium, run_chromium
from _http import ScriptedEngine, chat_web, load_tiny, metric, serve
from conftest import REPO
from nanochat.openai_api import SamplingDefaults
from nanochat.serving import ServerSettings, create_app

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


MARKDOWN = """Here is **bold** and `inline <b>code</b>` text.

```python
print("<img src=x onerror=alert(1)>")
```

- one
- two **<i>three</i>**

1. first
2. second

| name | value |
|------|-------|
| <b>x</b> | `2` |

<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> [calculator: 2+3 = 5]
"""


@pytest.fixture(scope="module")
def tiny(tiny_base_checkpoint):
    return load_tiny(tiny_base_checkpoint)


@pytest.mark.slow
@needs_chromium
def test_ui_markdown_persistence_system_prompt_and_a_long_reply(tiny):
    """A scripted model whose reply is hostile Markdown followed by filler, long enough to fill the
    512-token context: the reply renders as Markdown without any injected element, a second turn
    still gets an answer (the server leaves out the first turn and the UI says so), the
    conversation and the system prompt survive a reload, and the status dot follows /health."""
    _, tokenizer = tiny
    ids = tokenizer.encode(MARKDOWN + "\n" + "the cat sat on the mat. " * 120)
    assert len(tokenizer.encode(MARKDOWN)) < 400 < 512 < len(ids)  # the Markdown fits, the whole does not
    app = create_app(ServerSettings(defaults=SamplingDefaults(max_tokens=2000)),
                     lambda: ([ScriptedEngine(ids)], tokenizer, 512))
    count = "document.querySelectorAll('#thread .msg').length"
    idle = "document.getElementById('send').style.display !== 'none' && !document.querySelector('.pending')"
    reply = "document.querySelector('#thread .msg.assistant')"
    browser = Browser()
    try:
        with serve(app) as addr:
            browser.send("Page.navigate", url=f"http://{addr}/")
            browser.wait("document.getElementById('status').className === 'ok'", "the UI to see the server")
            browser.js("window.sent = []; const f = window.fetch; window.fetch = (url, opts) => { "
                       "if (opts && opts.body) sent.push(JSON.parse(opts.body)); return f(url, opts); }; "
                       "const s = document.getElementById('system'); s.value = 'Answer in Markdown.'; "
                       "s.dispatchEvent(new Event('input')); true")
            browser.js("const i = document.getElementById('input'); i.focus(); i.value = 'Hello'; true")
            browser.key("Enter")
            browser.wait(f"{count} === 2 && ({idle})", "the first reply")
            assert browser.js("sent[0].messages") == [{"role": "system", "content": "Answer in Markdown."},
                                                      {"role": "user", "content": "Hello"}]
            check_markdown(browser, reply)
            assert "length limit" in browser.js("document.querySelector('#thread .note').textContent")
            # the copy button copies the code
            browser.js("Object.defineProperty(navigator.clipboard, 'writeText', "
                       "{value: async (t) => { window.copied = t; }}); "
                       f"{reply}.querySelector('.code .copy').click(); true")
            browser.wait("window.copied !== undefined", "the copy")
            assert browser.js("window.copied") == 'print("<img src=x onerror=alert(1)>")'
            # the first reply filled the context; a second turn still gets an answer
            browser.js("const j = document.getElementById('input'); j.focus(); j.value = 'And then?'; true")
            browser.key("Enter")
            browser.wait(f"{count} === 4 && ({idle})", "the second reply")
            assert not browser.js("document.getElementById('banner').classList.contains('show')")
            notes = browser.js("[...document.querySelectorAll('#thread .note')].map(n => n.textContent)")
            assert len(notes) == 2 and "The 2 oldest messages were left out" in notes[1], notes
            # a reload brings back the conversation, its notes and the system prompt
            browser.send("Page.reload")
            browser.wait(f"{count} === 4 && document.getElementById('status').className === 'ok'", "the reload")
            check_markdown(browser, reply)
            assert browser.js("[...document.querySelectorAll('#thread .note')].map(n => n.textContent)") == notes
            assert browser.js("document.getElementById('system').value") == "Answer in Markdown."
            # New chat empties the stored conversation too
            browser.js("document.getElementById('new-chat').click(); true")
            browser.send("Page.reload")
            browser.wait("!!document.querySelector('.empty') && document.getElementById('status').className === 'ok'",
                         "an empty thread after reload")
            assert browser.js(count) == 0
        # the server stops: the dot turns red within a few polls
        browser.wait("document.getElementById('status').className === 'down'", "the status dot", timeout=10)
    finally:
        browser.close()


def check_markdown(browser: Browser, reply: str) -> None:
    md = browser.js(f"""(() => {{ const r = {reply};
        return {{code: r.querySelector('.code pre code').textContent,
                 font: getComputedStyle(r.querySelector('.code pre code')).fontFamily,
                 copy: r.querySelector('.code button.copy').textContent,
                 inline: [...r.querySelectorAll('p code, td code')].map(c => c.textContent),
                 bold: [...r.querySelectorAll('strong')].map(b => b.textContent),
                 ul: [...r.querySelectorAll('ul li')].map(li => li.textContent),
                 ol: [...r.querySelectorAll('ol li')].map(li => li.textContent),
                 th: [...r.querySelectorAll('th')].map(c => c.textContent),
                 td: [...r.querySelectorAll('td')].map(c => c.textContent),
                 tool: r.querySelector('.tool').textContent,
                 injected: document.querySelectorAll('#thread img, #thread script, #thread b, #thread i, #thread a')
                     .length,
                 pwned: window.pwned === undefined ? null : window.pwned}}; }})()""")
    assert md["code"] == 'print("<img src=x onerror=alert(1)>")' and "monospace" in md["font"]
    assert md["copy"] == "Copy"
    assert md["inline"] == ["inline <b>code</b>", "2"] and md["bold"] == ["bold", "<i>three</i>"]
    assert md["ul"] == ["one", "two <i>three</i>"] and md["ol"] == ["first", "second"]
    assert md["th"] == ["name", "value"] and md["td"] == ["<b>x</b>", "2"]
    assert md["tool"] == "calculator2+3 = 5"
    assert md["injected"] == 0 and md["pwned"] is None
