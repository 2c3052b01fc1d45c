"""A small GFM-aware checker: what in a Markdown text GitHub would turn into something.

GitHub renders inline code spans and ``<code>`` elements literally; everywhere
else it makes links of URLs, ``www.`` and e-mail addresses (GFM autolinks),
``@mentions`` and ``#123`` references, and renders raw HTML, links, images and
emphasis. :func:`outside_code` removes code spans by the CommonMark rule (a run
of n backticks closed by the next run of exactly n); :func:`triggers` lists what
is left that GitHub would act on.
"""

from __future__ import annotations

import re

_RUN = re.compile(r"`+")
_HTML_CODE = re.compile(r"<code>.*?</code>", re.S)

#: name -> pattern of what GitHub acts on outside code
TRIGGERS: dict[str, re.Pattern[str]] = {
    "url": re.compile(r"(?i)\b(?:https?|ftp|mailto|xmpp):"),
    "www": re.compile(r"(?i)(?:^|[\s*_~(])www\."),
    "email": re.compile(r"[A-Za-z0-9._+-]\\?@[A-Za-z0-9_-]+\.[A-Za-z0-9]"),
    "mention": re.compile(r"(?:^|[^\w`])@[A-Za-z0-9]"),
    "issue": re.compile(r"(?:^|[^\w&])#\d"),
    "html": re.compile(r"<(?!/?(?:details|summary|sub|code)>)[A-Za-z/!?]"),
    "entity": re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);"),
    "link": re.compile(r"\]\(|\]\["),
    "backslash": re.compile(r"\\[!-/:-@\[-`{-~]"),
}


def outside_code(text: str) -> str:
    """``text`` less its inline code spans and ``<code>`` elements (their content is inert)."""
    text = _HTML_CODE.sub(" ", text)
    out: list[str] = []
    i = 0
    while True:
        m = _RUN.search(text, i)
        if m is None:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:m.start()])
        n = len(m.group())
        close = next((c for c in _RUN.finditer(text, m.end()) if len(c.group()) == n), None)
        if close is None:  # an unmatched run is literal backticks
            out.append(m.group())
            i = m.end()
        else:
            out.append(" ")
            i = close.end()


def code_span(text: str) -> str | None:
    """The content of ``text`` if it is exactly one inline code span, else None."""
    m = _RUN.match(text)
    if m is None:
        return None
    n = len(m.group())
    close = next((c for c in _RUN.finditer(text, m.end()) if len(c.group()) == n), None)
    if close is None or close.end() != len(text):
        return None
    body = text[m.end():close.start()].replace("\n", " ")
    if len(body) > 1 and body[0] == " " and body[-1] == " " and body.strip(" "):
        body = body[1:-1]
    return body


def triggers(markdown: str) -> dict[str, list[str]]:
    """What GitHub would act on outside code spans, by kind (empty: nothing)."""
    rest = outside_code(markdown)
    found = {k: p.findall(rest) for k, p in TRIGGERS.items()}
    return {k: v for k, v in found.items() if v}
