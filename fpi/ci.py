"""CI integration: which CI run this is, GitHub job summaries and annotations.

``ci_info`` reads the standard environment variables of GitHub Actions, GitLab
CI and generic CI servers (Jenkins' ``BUILD_URL``). ``step_summary`` renders a
compact Markdown verdict for ``$GITHUB_STEP_SUMMARY`` and ``annotations`` the
``::error::``/``::warning::`` workflow commands for failed and warned gates,
escaped per GitHub's rules. Nothing here prints: the CLI writes them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fpi.errors import InputError


def ci_info(env: Mapping[str, str]) -> dict[str, Any] | None:
    """``provider``, ``url`` (of the run or job) and ``commit``, or None outside CI."""
    if env.get("GITHUB_ACTIONS") == "true":
        server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        repo, run_id = env.get("GITHUB_REPOSITORY"), env.get("GITHUB_RUN_ID")
        url = f"{server}/{repo}/actions/runs/{run_id}" if repo and run_id else None
        return {"provider": "github", "url": url, "commit": env.get("GITHUB_SHA")}
    if env.get("GITLAB_CI") == "true":
        return {"provider": "gitlab", "url": env.get("CI_JOB_URL") or env.get("CI_PIPELINE_URL"),
                "commit": env.get("CI_COMMIT_SHA")}
    if env.get("CI", "").lower() in ("true", "1", "yes") or env.get("BUILD_URL"):
        return {"provider": "ci", "url": env.get("BUILD_URL"),
                "commit": env.get("GIT_COMMIT") or env.get("CI_COMMIT_SHA")}
    return None


def github_enabled(flag: bool | None, env: Mapping[str, str]) -> bool:
    """``--github``/``--no-github`` when given, else whether this runs in GitHub Actions."""
    return flag if flag is not None else env.get("GITHUB_ACTIONS") == "true"


# ---------------------------------------------------------------------------
# Workflow commands
# ---------------------------------------------------------------------------


def escape_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF percent-encoded (``%`` first)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value: as :func:`escape_data`, plus ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def gate_annotations(summary: Mapping[str, Any]) -> list[str]:
    """One ``::error``/``::warning`` line per failed/warned gate, in gate order."""
    out = []
    for g in summary.get("gates") or []:
        level = {"FAIL": "error", "WARN": "warning"}.get(g.get("status", ""))
        if level is None:
            continue
        title = f"fpi gate {'failed' if level == 'error' else 'warned'}: {g.get('name', '')}"
        out.append(f"::{level} title={escape_property(title)}::"
                   f"{escape_data(str(g.get('name', '')) + ': ' + str(g.get('message', '')))}")
    return out


# ---------------------------------------------------------------------------
# Job summary
# ---------------------------------------------------------------------------


def step_summary(summary: Mapping[str, Any]) -> str:
    """A compact Markdown verdict: gates, rates against the baseline, run facts."""
    from fpi.report._fmt import CLASS_TITLES, FAILURE_CLASSES, STATUS_ICON, gate_value, pct, pp
    from fpi.report.markdown import md

    status = summary.get("gate_status", "none")
    gates = summary.get("gates") or []
    verdict = {"pass": "✅ PASS", "warn": "⚠️ WARN", "fail": "❌ FAIL",
               "none": "no gates"}.get(status, md(status))
    failed = sum(g["status"] == "FAIL" for g in gates)
    warned = sum(g["status"] == "WARN" for g in gates)
    inputs = ", ".join(md(i) for i in summary.get("inputs", [])) or "input"
    out = ["", f"### fpi diagnose: {verdict}", ""]
    if summary.get("headline"):
        from fpi.headline import story

        out += [story(summary["headline"], md), ""]
    if gates:
        out += [f"{failed} failed, {warned} warned of {len(gates)} gates · {inputs} · "
                f"{summary.get('turns', 0):,} turns", ""]
        out += ["| | gate | value | bound |", "|---|---|---:|---:|"]
        for g in gates:
            out.append(f"| {STATUS_ICON.get(g['status'], '')} | {md(g['name'])} | "
                       f"{gate_value(g['key'], g['value'])} | "
                       f"{md(g['op'])} {gate_value(g['key'], g['bound'])} |")
    else:
        out.append(f"{inputs} · {summary.get('turns', 0):,} turns")
    changes = (summary.get("baseline") or {}).get("changes") or {}
    out += ["", "| failure point | rate | interval |" + (" vs baseline |" if changes else ""),
            "|---|---:|---|" + ("---:|" if changes else "")]
    for c in FAILURE_CLASSES:
        r = summary["rates"][c]
        line = f"| {CLASS_TITLES[c]} | {pct(r['estimate'])} | [{pct(r['low'])}, {pct(r['high'])}] |"
        if changes:
            ch = changes.get(c)
            mark = " ⬆️" if ch and ch["significant"] and ch["change"] > 0 else (
                " ⬇️" if ch and ch["significant"] else "")
            line += f" {pp(ch['change']) + mark if ch else ''} |"
        out.append(line)
    out += ["", _facts(summary), ""]
    return "\n".join(out)


def _facts(summary: Mapping[str, Any]) -> str:
    from fpi.report.markdown import md

    run = summary.get("run") or {}
    bits = [f"fpi {md(summary.get('fpi_version', ''))}"]
    tr = run.get("time_range")
    if tr:
        bits.append(f"logs {md(tr['first'])} to {md(tr['last'])}")
    if run.get("bundle_id"):
        bits.append(f"model `{md(str(run['bundle_id']).removeprefix('sha256:')[:12])}`")
    if summary.get("redacted"):
        bits.append("text redacted")
    bits.append("full report: report.html")
    return "<sub>" + " · ".join(bits) + "</sub>"


def append_step_summary(text: str, env: Mapping[str, str]) -> Path | None:
    """Append ``text`` to the file ``$GITHUB_STEP_SUMMARY`` names (never truncates it).

    Returns the path, or None when the variable is unset (not in GitHub Actions).
    """
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        raise InputError(f"{path}: cannot append the job summary "
                         f"($GITHUB_STEP_SUMMARY): {exc.strerror or exc}") from None
    return path
