"""The headline: what changed, where, why we think so, and how sure, from the summary alone.

``headline(summary)`` reads only the summary document (rates, baseline changes,
slices, attribution, drift, gates), so it can be recomputed from any
``summary.json``. Its fields:

- ``verdict``: the gates' status when gates are configured; otherwise ``warn`` when
  a failure class got worse beyond its interval or a slice is new or worse since the
  baseline, else ``pass``;
- ``story``: one sentence;
- ``moved``: the classes whose rate moved beyond its interval against the baseline;
- ``slice``: the slice that concentrates the change (the first new-or-worse slice of
  the class that moved most; without a baseline, the first excess slice);
- ``evidence``: the components whose attribution supports the call there;
- ``explained_by``: per moved class ``traffic``, ``component`` or ``both`` (item 3);
- ``excess``: without a baseline, the biggest within-night excess slices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fpi.numbers import stable_round

_TITLES = {"false_wake": "false wakes", "asr": "ASR", "nlu": "NLU", "er": "entity resolution",
           "result": "result", "failure": "all failures", "correct": "correct"}


def _moved(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    changes = (summary.get("baseline") or {}).get("changes") or {}
    out = [{"class": c, "baseline": v["baseline"], "current": v["current"],
            "change": v["change"], "low": v["low"], "high": v["high"],
            "direction": "up" if v["change"] > 0 else "down"}
           for c, v in changes.items() if c != "correct" and v.get("significant")]
    return sorted(out, key=lambda m: (m["direction"] != "up", -abs(m["change"]), m["class"]))


def _slice_of(summary: Mapping[str, Any], cls: str | None) -> dict[str, Any] | None:
    sl = summary.get("slices") or {}
    vs = (sl.get("vs_baseline") or {}).get("top") or []
    pool = vs if summary.get("baseline") else (sl.get("top") or [])
    pick = [t for t in pool if cls is None or t["class"] == cls] or pool
    if not pick:
        return None
    t = pick[0]
    keep = ("dimension", "value", "class", "turns", "rate", "baseline_rate", "rest_rate",
            "change", "extra_failures", "excess_failures", "q_value", "new", "also")
    return {k: t[k] for k in keep if k in t}


def _evidence(summary: Mapping[str, Any], cls: str | None, sl: Mapping[str, Any] | None
              ) -> dict[str, Any] | None:
    a = summary.get("attribution") or {}
    comps = None
    where = "class"
    if sl is not None:
        for s in a.get("by_slice") or []:
            if (s.get("dimension"), s.get("value"), s.get("class")) == (
                    sl["dimension"], sl["value"], sl["class"]) and s.get("turns_attributed"):
                comps, where = s["components"], "slice"
                break
    c = cls or (sl or {}).get("class")
    if comps is None and c is not None:
        bc = (a.get("by_class") or {}).get(c) or {}
        if bc.get("turns_attributed"):
            comps = bc.get("components")
    if not comps:
        return None
    ranked = sorted(((g, v["mean"]) for g, v in comps.items() if v.get("mean") is not None),
                    key=lambda x: (-x[1], x[0]))
    return {"from": where, "class": c,
            "components": [{"component": g, "mean": stable_round(m, 4)} for g, m in ranked[:3]]}


def _explained(summary: Mapping[str, Any], moved: list[dict[str, Any]]) -> dict[str, Any]:
    mix = (summary.get("drift") or {}).get("mix") or {}
    out = {}
    for m in moved:
        d = mix.get(m["class"]) or {}
        out[m["class"]] = {"by": d.get("explained_by") or "component",
                           "share": d.get("explained_share"), "dimension": d.get("dimension"),
                           "mix_effect": d.get("mix_effect")}
    return out


def headline(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The ``headline`` block (see the module docstring)."""
    has_base = bool(summary.get("baseline"))
    moved = _moved(summary) if has_base else []
    up = [m for m in moved if m["direction"] == "up"]
    cls = up[0]["class"] if up else None
    sl = _slice_of(summary, cls)
    evidence = _evidence(summary, cls, sl)
    explained = _explained(summary, moved)
    drifting = list((summary.get("drift") or {}).get("drifting") or [])
    gate = summary.get("gate_status", "none")
    worse = bool(up) or (has_base and sl is not None)
    verdict = gate if gate != "none" else ("warn" if worse else "pass")
    doc: dict[str, Any] = {
        "verdict": verdict, "baseline": has_base, "moved": moved, "slice": sl,
        "evidence": evidence, "explained_by": explained, "drifting_inputs": drifting,
        "excess": [] if has_base else [
            {k: t[k] for k in ("dimension", "value", "class", "turns", "excess_failures",
                               "also") if k in t}
            for t in ((summary.get("slices") or {}).get("top") or [])[:3]],
    }
    doc["story"] = story(doc)
    return doc


def _slice_words(sl: Mapping[str, Any], quote: Callable[[Any], str]) -> str:
    defs = [sl, *(sl.get("also") or [])]
    return " / ".join(f"{quote(d['dimension'])}={quote(d['value'])}" for d in defs)


def story(h: Mapping[str, Any], quote: Callable[[Any], str] = str) -> str:
    """One sentence from a headline block, without the verdict; slice values (from the
    logs) go through ``quote`` (Markdown: a code span; the stored story is plain text)."""
    up = [m for m in h["moved"] if m["direction"] == "up"]
    if not h["baseline"]:
        head = "No baseline given"
        if h["excess"]:
            t = h["excess"][0]
            return (f"{head}; most excess failures in {_slice_words(t, quote)} "
                    f"({_TITLES.get(t['class'], t['class'])}, {t['excess_failures']:,.0f} "
                    "more than the night's rate).")
        return f"{head}; no slice has significantly more failures than the rest of the night."
    if not up:
        down = [m for m in h["moved"] if m["direction"] == "down"]
        tail = (f"; lower: {', '.join(_TITLES[m['class']] for m in down)}" if down else "")
        if h["drifting_inputs"]:
            tail += f"; traffic drifted in {', '.join(h['drifting_inputs'])}"
        return ("No failure class got worse beyond its interval "
                f"against the baseline{tail}.")
    m = up[0]
    title = _TITLES.get(m["class"], m["class"])
    parts = [f"{title[0].upper()}{title[1:]} failures "
             f"{100 * m['baseline']:.2f}% → {100 * m['current']:.2f}% "
             f"({100 * m['change']:+.2f} pp, interval {100 * m['low']:+.2f} to "
             f"{100 * m['high']:+.2f})"]
    if h["slice"] is not None and h["slice"]["class"] == m["class"]:
        parts.append(f"concentrated in {_slice_words(h['slice'], quote)}")
    if h["evidence"]:
        parts.append(f"evidence from {h['evidence']['components'][0]['component']}")
    ex = h["explained_by"].get(m["class"]) or {}
    if ex.get("by") == "traffic":
        parts.append(f"explained by a traffic shift in {ex['dimension']}")
    elif ex.get("by") == "both":
        parts.append(f"partly ({100 * (ex['share'] or 0):.0f}%) explained by a traffic shift in "
                     f"{ex['dimension']}")
    else:
        parts.append("not explained by traffic mix")
    more = len(up) - 1
    return "; ".join(parts) + (f"; {more} more class(es) worse." if more else ".")
