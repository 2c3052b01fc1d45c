"""Markdown report of ``fpi labels check``: the top suspects with their context.

Every string that came from the logs goes through :func:`fpi.report.markdown.md`
(an inert code span; pipes escaped in table cells), so no log text becomes markup,
an HTML tag or a link.
"""

from __future__ import annotations

import polars as pl

from fpi.labels.check import LabelCheck
from fpi.labels.export import context_view, turn_view
from fpi.report.markdown import md, md_cell
from fpi.schema import KEY_COLUMNS

KEY = list(KEY_COLUMNS)


def suspects_with_context(check: LabelCheck, turns: pl.DataFrame, top: int) -> pl.DataFrame:
    """The ``top`` suspects joined with their turn view and session context."""
    sus = check.suspects.head(top)
    view = turn_view(turns.join(sus.select(KEY), on=KEY, how="semi"))
    ctx = context_view(turns, sus.select(KEY))
    return sus.join(view, on=KEY, how="left").join(ctx, on=KEY, how="left").sort("rank")


def render_markdown(check: LabelCheck, detail: pl.DataFrame) -> str:
    """The report: summary, thresholds, the suspects table and each suspect's context."""
    doc = check.to_dict(top=0)
    lines = ["# Probably wrong labels", "",
             f"{doc['suspects']} of {doc['labelled_turns']} labelled turns are suspects; about "
             f"{doc['estimated_errors']} labels are estimated wrong "
             f"({check.options.folds}-fold out-of-fold probabilities by session, seed "
             f"{check.options.seed}; confident learning). Ranked by the out-of-fold "
             "probability of the given label, lowest first.", "",
             "| class | threshold | estimated wrong labels of this class |", "|---|---:|---:|"]
    wrong = check.errors_by_label or {}
    lines += [f"| {c} | {t:.3f} | {wrong.get(c, '-')} |" for c, t in check.thresholds.items()]
    lines += ["", "| rank | session | turn | label | suggested | p(label) | p(suggested) |",
              "|---:|---|---:|---|---|---:|---:|"]
    for r in detail.iter_rows(named=True):
        lines.append(f"| {r['rank']} | {md_cell(r['session_id'])} | {r['turn_index']} | "
                     f"{r['label']} | {r['suggested']} | {r['self_confidence']:.3f} | "
                     f"{r['suggested_probability']:.3f} |")
    for r in detail.iter_rows(named=True):
        lines += ["", f"## {r['rank']}. session {md(r['session_id'])} turn "
                      f"{r['turn_index']}: labelled {r['label']}, probably {r['suggested']}", "",
                  f"- ASR: {md(r['asr_text'])} (n-best: {md(r['nbest'])})",
                  f"- NLU: {md(r['nlu'])}",
                  f"- entities: {md(r['entities'])}",
                  f"- response: {md(r['response'])}", "", "Session context:", ""]
        lines += [f"- {md(line)}" for line in (r["context_turns"] or [])]
    return "\n".join(lines) + "\n"
