"""Markup to plain text for the offline corpus: reStructuredText, POD, roff (man pages), HTML.

Each `strip_*` takes a file's text and returns what a reader would see, keeping code blocks and
indentation; none of them is a full parser, they handle what the packaged documentation uses.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser


# reStructuredText (Python and Linux docs). Directives whose content is not text are dropped whole;
# code/table-like ones lose their header line but keep their body; admonitions become "Note:" etc.;
# the rest (API entries: function, class, option, ...) keep their argument as a line of text.
_RST_DROP = {"toctree", "index", "image", "figure", "raw", "include", "literalinclude", "kernel-doc",
             "kernel-abi", "kernel-feat", "kernel-include", "highlight", "module", "currentmodule",
             "sectionauthor", "moduleauthor", "tabularcolumns", "contents", "default-role", "role", "meta",
             "program", "audit-event", "audit-event-table", "productionlist", "graphviz", "sectnum",
             "c:namespace", "c:namespace-push", "c:namespace-pop", "cpp:namespace", "miscnews", "maintainers-include"}
_RST_BODY_ONLY = {"code-block", "code", "sourcecode", "testcode", "testsetup", "testcleanup", "testoutput",
                  "doctest", "parsed-literal", "math", "only", "table", "list-table", "csv-table", "container",
                  "flat-table", "cssclass", "rst-class", "epigraph", "highlights", "compound"}
_RST_ADMONITIONS = {"note": "Note:", "warning": "Warning:", "seealso": "See also:", "tip": "Tip:",
                    "important": "Important:", "caution": "Caution:", "attention": "Attention:",
                    "danger": "Danger:", "hint": "Hint:", "todo": "To do:", "admonition": "",
                    "impl-detail": "CPython implementation detail:"}
_RST_VERSION = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}.",
                "deprecated": "Deprecated since version {}.", "deprecated-removed": "Deprecated since version {}."}
_RST_DIRECTIVE_RE = re.compile(r"^(\s*)\.\.\s+([\w:.+-]+)::\s*(.*)$")
_RST_ADORNMENT_RE = re.compile(r"^\s*([%=\-~^\"'`#*+<>_:.])\1{2,}\s*$")


def strip_rst(text: str) -> str:
    out: list[str] = []
    drop_indent: int | None = None  # dropping a block: lines indented deeper than this, and blanks
    skip_options = False
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip())
        if drop_indent is not None:
            if not line.strip() or indent > drop_indent:
                continue
            drop_indent = None
        if skip_options:
            if re.match(r"^\s+:[\w -]+:", line):
                continue
            skip_options = False
        m = _RST_DIRECTIVE_RE.match(line)
        if m:
            name, arg = m.group(2).lower(), m.group(3).strip()
            if name in _RST_DROP:
                drop_indent = indent
            elif name in _RST_VERSION:
                out.append(m.group(1) + _RST_VERSION[name].format((arg.split() or [""])[0].rstrip(",")))
            elif name in _RST_ADMONITIONS:
                out.append(m.group(1) + " ".join(filter(None, (_RST_ADMONITIONS[name], arg))))
            elif name not in _RST_BODY_ONLY and arg:
                out.append(m.group(1) + arg)  # .. function:: spam(eggs) -> "spam(eggs)"
            skip_options = True
            continue
        if re.match(r"^\s*\.\.(\s|$)", line):  # comment, link target or substitution definition
            drop_indent = indent
            continue
        if _RST_ADORNMENT_RE.match(line) or line.strip() == "::":
            continue
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r":(pep|rfc):`(\d+)[^`]*`", lambda m: f"{m.group(1).upper()} {m.group(2)}", text)
    text = re.sub(r":[\w:.+-]+:`([^`<]*?)\s*<[^`>]*>`", r"\1", text)  # :ref:`title <target>` -> title
    text = re.sub(r":[\w:.+-]+:`[~!]?([^`]*)`", r"\1", text)  # :func:`os.path` -> os.path
    text = re.sub(r"`([^`<\n]+?)\s*<[^`>\n]+>`__?", r"\1", text)  # `text <url>`_ -> text
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`\n]+)`_{0,2}", r"\1", text)
    text = re.sub(r"\*\*([^*\n]+)\*\*", r"\1", text)
    text = re.sub(r"\|(\w[\w -]*)\|_?", r"\1", text)  # |substitution| -> its name
    return re.sub(r"(\S)::$", r"\1:", text, flags=re.M)  # "Example::" introduces a literal block


# POD (Perl). Formatting codes nest, so unwrap innermost first; E<lt>/E<gt> become placeholders
# until the end so that they do not look like new codes.
_POD_ESCAPES = {"lt": "\ue000", "gt": "\ue001", "verbar": "|", "sol": "/", "quot": '"', "amp": "&", "apos": "'"}


def _pod_code(code: str, body: str) -> str:
    if code == "E":
        if body in _POD_ESCAPES:
            return _POD_ESCAPES[body]
        if body.isdigit() or body.lower().startswith("0x"):
            return chr(int(body, 0))
        return html.unescape(f"&{body};")
    if code in "XZ":
        return ""
    if code == "L":
        text, bar, _ = body.partition("|")
        return text if bar else body.replace('/"', ' "').strip("/")
    return body


def _pod_codes(text: str) -> str:
    for n in (4, 3, 2):  # C<< $a <=> $b >> forms: the body may contain single angle brackets
        pattern = r"([A-Z])" + "<" * n + r"\s+(.+?)\s+" + ">" * n
        text = re.sub(pattern, lambda m: _pod_code(*m.groups()), text, flags=re.S)
    text = re.sub(r"E<(\w+)>", lambda m: _pod_code("E", m.group(1)), text)
    prev = None
    while prev != text:
        prev, text = text, re.sub(r"([A-Z])<([^<>]*)>", lambda m: _pod_code(*m.groups()), text)
    return text.replace("\ue000", "<").replace("\ue001", ">")


def strip_pod(text: str) -> str:
    out: list[str] = []
    in_begin = False  # =begin html ... =end html: formats other than text
    for para in re.split(r"\n[ \t]*\n", text):
        if para.startswith("="):
            cmd, _, rest = para[1:].partition(" ")
            cmd = cmd.split("\n")[0]
            rest = rest.strip()
            if cmd == "begin":
                in_begin = True
            elif cmd == "end":
                in_begin = False
            elif in_begin:
                pass
            elif cmd.startswith("head"):
                out.append(_pod_codes(rest))
            elif cmd == "item":
                rest = rest.lstrip("*").strip()
                if rest:
                    out.append("- " + _pod_codes(rest))
            continue  # =over =back =cut =pod =for =encoding: structure only
        if in_begin:
            continue
        out.append(para if para[:1] in " \t" else _pod_codes(para))  # indented = verbatim code
    return "\n\n".join(out)


# roff (man pages made by pod2man): keep section titles, items and text, drop layout requests.
_ROFF_CHARS = {"aq": "'", "bu": "*", "em": "\u2014", "en": "\u2013", "co": "\u00a9", "rg": "\u00ae",
               "dq": '"', "lq": "\u201c", "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "hy": "-",
               "mi": "-", "pl": "+", "mu": "\u00d7", "di": "\u00f7", "de": "\u00b0", "ti": "~",
               "ha": "^", "rs": "\\", "ga": "`", "aa": "\u00b4", "L\"": '"', "R\"": '"', "--": "--",
               "PI": "pi", "Aq": "'", "Tr": "", "C`": "", "C'": ""}
_ROFF_ESC_RE = re.compile(r"\\(\(..|\*\(..|\*\[[^\]]*\]|\*.|\[[^\]]*\]|f\(..|f\[[^\]]*\]|f.|s[+-]?\d|.)")


def _roff_escape(m: re.Match) -> str:
    e = m.group(1)
    if e[0] in "fs" and len(e) > 1:
        return ""  # font and size changes
    if e.startswith(("(", "*(")):
        return _ROFF_CHARS.get(e[-2:], "")
    if e.startswith(("[", "*[")):
        return _ROFF_CHARS.get(e.split("[", 1)[1][:-1], "")
    if e.startswith("*"):
        return ""
    return {"-": "-", "e": "\\", "\\": "\\", " ": " ", "0": " ", "~": " "}.get(e, "" if e in "&|^c%" else e)


def strip_roff(text: str) -> str:
    out: list[str] = []
    in_macro_def = False
    for line in text.split("\n"):
        if in_macro_def:
            in_macro_def = not line.startswith("..")
            continue
        line = re.sub(r'\\".*$', "", line)  # \" starts a comment
        line = re.sub(r"^[.']\s*i[ef]\s+n\s+(?:\\\{\\?\s*)?", "", line)  # `.ie n .IP "x"`: the nroff branch is ours
        if not line.strip():
            continue
        if line[:1] in ".'":
            m = re.match(r"[.']\s*(\w+)\s*(.*)", line)
            if not m:
                continue
            macro, arg = m.groups()
            args = [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', arg)]
            if macro == "de":
                in_macro_def = True
            elif macro in ("SH", "SS"):
                out += ["", " ".join(args), ""]
            elif macro in ("IP", "TP", "Ip", "Item") and args:
                out += ["", args[0]]
            elif macro in ("PP", "LP", "P", "Sp", "sp", "br"):
                out.append("")
            elif macro in ("B", "I", "BI", "IB", "BR", "RB", "IR", "RI", "SM"):
                out.append(" ".join(args))
            continue  # .TH .IX .Vb .Ve .ds .nr .if .ie .el .ft ...: layout only
        out.append(line)
    return _ROFF_ESC_RE.sub(_roff_escape, "\n".join(out))


class _HTMLText(HTMLParser):
    """Visible text of an HTML page: block elements become line breaks, <pre> keeps its spacing."""

    BLOCKS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "table",
              "dt", "dd", "dl", "section", "blockquote", "hr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        self.hidden += tag in ("script", "style", "head")
        self.pre += tag == "pre"
        if tag in self.BLOCKS:
            self.parts.append("\n\n" if tag in ("p", "pre", "h1", "h2", "h3", "h4", "h5", "h6") else "\n")

    def handle_endtag(self, tag):
        self.hidden -= tag in ("script", "style", "head") and self.hidden > 0
        self.pre -= tag == "pre" and self.pre > 0
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            if not self.pre:
                data = re.sub(r"\s+", " ", data)
                if not self.parts or self.parts[-1].endswith("\n"):
                    data = data.lstrip()
            self.parts.append(data)


def strip_html(text: str) -> str:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)
