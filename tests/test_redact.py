"""--redact holds: no log string that can carry user content reaches any output.

The night is full of known secrets (utterances, n-best, slot values, entity
mentions, resolved names and ids, actions, responses, session ids, annotator and
user/device ids in extra fields, and rejected lines quoting them); every output
file's bytes (Parquet decoded to its values and statistics), the terminal and
``--json`` are searched for them. The same night without --redact shows them, so
the search can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from any_text import any_text
from hypothesis import given
from hypothesis import strategies as st
from tiny_turns import make_turns
from typer.testing import CliRunner

from fpi.cli import app
from fpi.diagnose import diagnose, explain
from fpi.errors import InputError
from fpi.ingest import Problem
from fpi.ingest.problems import RULES
from fpi.redact import ID_PREFIX, REDACTED, SALT_ENV, redactor, safe_message
from fpi.schema import TURN_SCHEMA

SECRETS = ("hunter2", "SECRET")
SALT = "test-salt-not-secret"


def _secret_turn(t: dict[str, Any]) -> dict[str, Any]:
    t = dict(t)
    t["session_id"] = f"sess-SECRET-{t['session_id']}"
    t["timestamp"] = t["timestamp"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    asr = dict(t["asr"])
    asr["text"] = f"my password is hunter2 {asr['text']}"
    asr["nbest"] = [{**a, "text": f"{a['text']} SECRETALT"} for a in asr["nbest"]]
    t["asr"] = asr
    t["nlu"] = {**t["nlu"], "slots": [{**s, "value": f"SECRETSLOT {s['value']}"}
                                      for s in t["nlu"]["slots"] or []]}
    t["er"] = {**t["er"], "entities": [
        {**e, "mention": "SECRETMENTION",
         # every entity carries the secret name (even an unresolved one), so whichever
         # turns the report picks as examples, a name is there to be redacted
         "resolved_name": "SECRETNAME",
         "resolved_id": "SECRETID"} for e in t["er"]["entities"] or []]}
    t["result"] = {**t["result"], "action": "SECRETACTION",
                   "response_text": f"{t['result']['response_text']} SECRETRESPONSE"}
    t["label"] = {**t["label"], "annotator": "SECRETANNOTATOR"}
    t["user_id"] = "user-SECRETUSER"
    t["device_id"] = "SECRETDEVICE"
    return t


@pytest.fixture(scope="module")
def secret_night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSON Lines night where every user-content field holds a secret, plus bad lines."""
    turns = [_secret_turn(t) for t in make_turns(150, seed=7).to_dicts()]
    lines = [json.dumps(t, default=str) for t in turns]
    bad_enum = {**turns[0], "session_id": "sess-SECRET-bad", "result": {
        **turns[0]["result"], "status": "hunter2"}}
    lines += [
        json.dumps(bad_enum),  # bad_enum: the message quotes the value
        lines[3],  # duplicate_turn: the message quotes the session id
        '{"session_id": "sess-SECRET-x", "asr": hunter2',  # invalid_json
        json.dumps({"session_id": "sess-SECRET-nowake", "turn_index": 0}),  # missing_wake
    ]
    path = tmp_path_factory.mktemp("redact-night") / "night.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(small_bundle) -> Path:
    return small_bundle.path


def _fpi(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != SALT_ENV}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "fpi", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=300, check=False)


def _visible_text(path: Path) -> str:
    """What a file carries: its bytes as text; a Parquet file's values, metadata and stats."""
    if path.suffix != ".parquet":
        return path.read_bytes().decode("utf-8", errors="replace")
    meta = pq.read_metadata(path)
    parts = [pl.read_parquet(path).write_csv(), str(meta.metadata),
             str(meta.schema), str(pq.read_schema(path).metadata)]
    for rg in range(meta.num_row_groups):
        for col in range(meta.num_columns):
            stats = meta.row_group(rg).column(col).statistics
            if stats is not None and stats.has_min_max:
                parts.append(f"{stats.min!r} {stats.max!r}")
    return "\n".join(parts)


def _leaks(out: Path, *streams: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        text = _visible_text(path)
        hits = [s for s in SECRETS if s in text]
        if hits:
            found[path.name] = hits
    for i, text in enumerate(streams):
        hits = [s for s in SECRETS if s in text]
        if hits:
            found[f"stream {i}"] = hits
    return found


def test_without_redact_the_secrets_show(secret_night: Path, model_dir: Path,
                                         tmp_path: Path) -> None:
    """The search below can fail: unredacted, the secrets are in every kind of output."""
    diagnose([secret_night], model=model_dir, out_dir=tmp_path, attribution="none", n_boot=10)
    leaks = _leaks(tmp_path)
    for name in ("summary.json", "report.md", "report.html", "part-00000.parquet",
                 "rejects.jsonl"):
        assert name in leaks, name
    md = (tmp_path / "report.md").read_text()
    for secret in ("hunter2", "SECRETNAME", "SECRETACTION", "sess-SECRET-"):
        assert secret in json.dumps(json.loads((tmp_path / "summary.json").read_text())), secret
    assert "SECRETNAME" in md


@pytest.mark.slow
def test_redact_leaves_no_secret_anywhere(secret_night: Path, model_dir: Path,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    out = tmp_path / "out"
    res = _fpi("diagnose", secret_night, "--model", model_dir, "--out", out, "--redact",
               "--json", "--attribution", "sample", "--attribution-sample", "60",
               "--min-support", "20", env={SALT_ENV: SALT})
    assert res.returncode == 0, res.stderr
    assert (out / "rejects.jsonl").is_file()
    assert _leaks(out, res.stdout, res.stderr) == {}
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(res.stdout) == summary
    assert summary["redacted"] is True
    assert summary["redaction"]["salt"] == "given" and SALT not in res.stdout
    # masked, not dropped: a reviewer sees that there was text
    ex = [e for c, turns in summary["examples"].items() for e in turns]
    assert ex and all(e["heard"]["text"] == REDACTED for e in ex)
    assert any(e["answered"]["action"] == REDACTED for e in ex)
    assert any(r["resolved_name"] == REDACTED for e in ex for r in e["resolved"])
    # ids are pseudonyms, the same in every file, and tell sessions apart
    pred = pl.read_parquet(out / "predictions" / "*.parquet")
    assert pred["session_id"].str.starts_with(ID_PREFIX).all()
    assert pred["session_id"].n_unique() == 150
    assert {e["session_id"] for e in ex} <= set(pred["session_id"])
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    note = f"text redacted, session ids pseudonymised (salt id {summary['redaction']['salt_id']})"
    assert note in md and note in html
    assert all(e["session_id"] in md and e["session_id"] in html for e in ex)
    # rejects keep where and why, not what
    rejects = [json.loads(ln) for ln in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["rule"] for r in rejects} == {"bad_enum", "duplicate_turn", "invalid_json",
                                            "missing_wake"}
    assert all(r["raw"] == REDACTED and r["line"] > 0 and r["file"] for r in rejects)
    assert "result.status: " in next(r["message"] for r in rejects if r["rule"] == "bad_enum")
    # whoever holds the salt can explain a redacted example's turn
    e = ex[0]
    x = explain([secret_night], model=model_dir, session_id=e["session_id"],
                turn_index=e["turn_index"], redact_salt=SALT)
    assert x.session_id.startswith("sess-SECRET-") and x.predicted == e["predicted"]
    monkeypatch.delenv(SALT_ENV, raising=False)
    with pytest.raises(InputError, match="pseudonym from a redacted report"):
        explain([secret_night], model=model_dir, session_id=e["session_id"],
                turn_index=e["turn_index"])
    with pytest.raises(InputError, match="not in the input under this salt"):
        explain([secret_night], model=model_dir, session_id=e["session_id"],
                turn_index=e["turn_index"], redact_salt="another salt")


def test_pseudonyms_stable_with_a_salt_and_unlinkable_without() -> None:
    a, b = redactor("s1", env={}), redactor("s1", env={})
    assert a.pseudonym("sess-1") == b.pseudonym("sess-1") != a.pseudonym("sess-2")
    assert a.pseudonym("sess-1") != redactor("s2", env={}).pseudonym("sess-1")
    assert a.pseudonym("sess-1").startswith(ID_PREFIX) and len(a.pseudonym("x")) == 21
    r1, r2 = redactor(None, env={}), redactor(None, env={})
    assert not r1.stable and r1.pseudonym("sess-1") != r2.pseudonym("sess-1")
    assert r1.describe()["salt_id"] is None and r1.describe()["salt"] == "random per run"
    env = redactor(None, env={SALT_ENV: "s1"})
    assert env.stable and env.pseudonym("sess-1") == a.pseudonym("sess-1")
    assert a.describe()["salt_id"] == b.describe()["salt_id"] != redactor(
        "s2", env={}).describe()["salt_id"]
    assert "s1" not in json.dumps(a.describe()) and "s1" not in repr(a)
    ids = pl.Series(["b", None, "a", "b"])
    assert a.ids(ids).to_list() == [a.pseudonym("b"), None, a.pseudonym("a"), a.pseudonym("b")]


@given(st.sampled_from(sorted(RULES)), any_text(), any_text())
def test_a_reject_message_keeps_only_a_schema_path_and_fixed_text(rule: str, head: str,
                                                                  tail: str) -> None:
    out = safe_message(rule, head + " " + tail)
    desc = RULES[rule].description
    assert out == desc or out.endswith(f": {desc}")
    path = out.removesuffix(desc).removesuffix(": ")
    heads = [*TURN_SCHEMA.names(), "stage", "data"]
    assert not path or path.split(".")[0].removesuffix("[]") in heads
    assert not path or head.startswith(path)


@pytest.mark.parametrize(("rule", "message", "expected"), [
    ("bad_enum", 'result.status must be one of success, error (got "hunter2")',
     "result.status: a field is not one of its allowed values"),
    ("bad_type", 'asr.nbest[].text must be a string, got {"a": "hunter2"}',
     "asr.nbest[].text: a field has the wrong type (e.g. text where a number belongs)"),
    ("duplicate_turn", "(session_id, turn_index) = ('hunter2', 0) was already read at f:1",
     "(session_id, turn_index) was already seen; the first is kept"),
    ("invalid_json", "invalid JSON: unexpected character near hunter2",
     "the line is not a valid JSON value"),
    ("duplicate_event", "turn ('hunter2', 0) has more than one asr event: f:1, f:2",
     "a turn has two events for the same stage"),
    ("bad_type", "hunter2.password must be a number",
     "a field has the wrong type (e.g. text where a number belongs)"),
    ("some_new_rule", "hunter2", "some_new_rule"),
])
def test_reject_messages_lose_their_data(rule: str, message: str, expected: str) -> None:
    assert safe_message(rule, message) == expected
    red = redactor("s", env={}).reject(Problem("f.jsonl", 3, rule, message, "hunter2 raw",
                                              ("f.jsonl:3",)))
    assert red.raw == REDACTED and red.file == "f.jsonl" and red.line == 3
    assert red.rule == rule and red.involved == ("f.jsonl:3",)
    assert "hunter2" not in json.dumps(red.to_dict())



def _rejects(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("partitions", [None, 2])
def test_ingest_redact_keeps_log_text_out_of_the_rejects_file(secret_night: Path, tmp_path: Path,
                                                              partitions: int | None) -> None:
    """``fpi ingest --redact``: the rejects file names file, line and rule, never log text;
    the same run without it quotes the secrets (so the search can fail). In process:
    test_redact_leaves_no_secret_anywhere searches a real executable's streams and files
    (``fpi diagnose --redact``), and test_hostile runs ``fpi ingest`` in the executable."""
    extra = [] if partitions is None else ["--partitions", str(partitions)]
    runs: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
    for name, flags in (("plain", []), ("redacted", ["--redact"])):
        out = tmp_path / (f"{name}.parquet" if partitions is None else name)
        args = ["ingest", str(secret_night), "-o", str(out), "--rejects",
                str(tmp_path / f"{name}.rejects.jsonl"), "--json", *flags, *extra]
        res = CliRunner().invoke(app, args, env={SALT_ENV: None})
        assert res.exit_code == 0, res.stderr
        runs[name] = (res, _rejects(tmp_path / f"{name}.rejects.jsonl"))
    plain_text = (tmp_path / "plain.rejects.jsonl").read_text(encoding="utf-8")
    assert all(s in plain_text for s in SECRETS)
    (res, red), (_, plain) = runs["redacted"], runs["plain"]
    red_text = (tmp_path / "redacted.rejects.jsonl").read_text(encoding="utf-8")
    assert not [s for s in SECRETS if s in red_text + res.stdout + res.stderr]
    assert {r["rule"] for r in red} >= {"bad_enum", "duplicate_turn", "invalid_json"}
    assert all(r["raw"] == REDACTED for r in red)
    assert sorted((r["file"], r["line"], r["rule"]) for r in red) == sorted(
        (r["file"], r["line"], r["rule"]) for r in plain)
    assert json.loads(res.stdout)["rejects_by_rule"] == json.loads(
        runs["plain"][0].stdout)["rejects_by_rule"]
