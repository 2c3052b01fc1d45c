"""Reports, all rendered from one summary document (a JSON-ready dict).

``summary.json`` (the document itself), ``report.md``, ``report.html`` and the
terminal summary never compute anything: they only format what the summary
holds, so every report agrees with every other. The keys are documented in
``docs/reports.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fpi.files import write_text_atomic
from fpi.report.html import render_html
from fpi.report.markdown import render_markdown
from fpi.report.terminal import render_terminal

#: Version of the summary document's keys; bumped on any incompatible change.
SUMMARY_SCHEMA_VERSION = 1

__all__ = [
    "SUMMARY_SCHEMA_VERSION",
    "render_html",
    "render_json",
    "render_markdown",
    "render_terminal",
    "write_reports",
]


def render_json(summary: Mapping[str, Any]) -> str:
    """``summary.json`` text: sorted keys, two-space indent, trailing newline (diff-friendly)."""
    return json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_reports(summary: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.json``, ``report.md`` and ``report.html`` into ``out_dir`` atomically."""
    out = Path(out_dir)
    return {
        "summary": write_text_atomic(out / "summary.json", render_json(summary)),
        "markdown": write_text_atomic(out / "report.md", render_markdown(summary)),
        "html": write_text_atomic(out / "report.html", render_html(summary)),
    }
