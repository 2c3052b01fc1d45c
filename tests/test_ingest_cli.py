"""``fpi ingest`` through the public CLI: summaries, exit codes, one-line errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from fpi.cli import app
from fpi.schema import TURN_SCHEMA

runner = CliRunner()


def turn(i: int, session: str = "s-1") -> dict:
    return {"session_id": session, "turn_index": i, "timestamp": "2026-11-20T18:03:12.481Z",
            "wake": {"detected": True, "score": 0.9},
            "asr": {"text": "play jazz", "confidence": 0.8},
            "label": {"failure_point": "correct" if i % 3 else "asr"}}


#: line number -> (broken text, rule)
BROKEN = {
    7: ('{"session_id": "s-1", "turn_index": 7, "wake": {', "invalid_json"),
    23: (json.dumps({**turn(23), "session_id": ""}), "missing_session_id"),
    41: (json.dumps({**turn(41), "asr": {"confidence": 4.5}}), "out_of_range"),
    66: (json.dumps({**turn(66), "result": {"status": "meh"}}), "bad_enum"),
    90: (json.dumps({k: v for k, v in turn(90).items() if k != "wake"}), "missing_wake"),
}


@pytest.fixture
def hundred(tmp_path: Path) -> Path:
    lines = [BROKEN[n][0] if n in BROKEN else json.dumps(turn(n - 1)) for n in range(1, 101)]
    path = tmp_path / "logs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def rejects_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.with_name("turns.rejects.jsonl").read_text().splitlines()]


def test_hundred_lines_five_broken(tmp_path: Path, hundred: Path) -> None:
    out = tmp_path / "turns.parquet"
    result = runner.invoke(app, ["ingest", str(hundred), "-o", str(out)])
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    assert frame.height == 95 and frame.schema == TURN_SCHEMA
    rows = rejects_of(out)
    assert [(r["line"], r["rule"]) for r in rows] == [(n, rule) for n, (_, rule) in
                                                      sorted(BROKEN.items())]
    assert all(r["file"] == str(hundred) and r["message"] and r["raw"] for r in rows)
    assert "95" in result.stderr and "rejected" in result.stderr


def test_hundred_lines_strict_exits_3_and_keeps_good_records(tmp_path: Path,
                                                            hundred: Path) -> None:
    out = tmp_path / "turns.parquet"
    result = runner.invoke(app, ["ingest", str(hundred), "-o", str(out), "--strict"])
    assert result.exit_code == 3
    assert pl.read_parquet(out).height == 95
    assert len(rejects_of(out)) == 5
    last = [ln for ln in result.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("error:") and "5 of 100" in last


def test_json_summary_on_stdout(tmp_path: Path, hundred: Path) -> None:
    out = tmp_path / "turns.parquet"
    result = runner.invoke(app, ["ingest", str(hundred), "-o", str(out), "--json"])
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["turns_kept"] == 95 and summary["records_read"] == 100
    assert summary["rejects_by_rule"] == {r: 1 for _, r in BROKEN.values()}
    assert summary["sessions"] == 1
    assert summary["stage_presence"]["wake"] == 1.0
    assert summary["stage_presence"]["asr"] == 1.0
    assert sum(summary["label_counts"].values()) == 95
    assert summary["rejects_path"] == str(out.with_name("turns.rejects.jsonl"))


def test_rejects_option_and_format_option(tmp_path: Path) -> None:
    src = tmp_path / "events.log"  # unknown suffix: --format says what it is
    src.write_text(json.dumps({"session_id": "s", "turn_index": 0, "stage": "wake",
                               "timestamp": "2026-11-20T18:03:12Z",
                               "data": {"detected": True}}) + "\n")
    out, rej = tmp_path / "t.parquet", tmp_path / "elsewhere" / "bad.jsonl"
    result = runner.invoke(app, ["ingest", str(src), "-o", str(out), "--format", "events",
                                 "--rejects", str(rej)])
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out).row(0, named=True)["wake"]["detected"] is True
    assert rej.exists() and rej.read_text() == ""


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_errors_are_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "o.parquet")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _one_line_error(runner.invoke(app, ["ingest", str(empty), "-o", out]),
                    "empty.jsonl", "empty")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n  \n")
    _one_line_error(runner.invoke(app, ["ingest", str(blank), "-o", out]), "blank.jsonl")
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    _one_line_error(runner.invoke(app, ["ingest", str(folder), "-o", out]),
                    "nothing", "no trace files")
    _one_line_error(runner.invoke(app, ["ingest", str(tmp_path / "*.nope"), "-o", out]),
                    "no file matches")
    csv = tmp_path / "t.csv"
    csv.write_text("session,turn,asr.text\ns,0,hi\n")
    _one_line_error(runner.invoke(app, ["ingest", str(csv), "-o", out]),
                    "t.csv", "session_id", "turn_index", "wake")
    _one_line_error(runner.invoke(app, ["ingest", str(csv), "-o", out, "--format", "xml"]),
                    "xml")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    _one_line_error(runner.invoke(app, ["ingest", str(bad), "-o", out]),
                    "bad.jsonl", "no valid turns", "invalid_json")
    assert not Path(out).exists()


def test_existing_output_replaced_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "turns.parquet"
    out.write_bytes(b"PAR1 old")  # looks like a previous output (a foreign file is refused)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1]\n")
    assert runner.invoke(app, ["ingest", str(bad), "-o", str(out)]).exit_code == 2
    assert out.read_bytes() == b"PAR1 old"
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(turn(0)) + "\n")
    assert runner.invoke(app, ["ingest", str(good), "-o", str(out)]).exit_code == 0
    assert pl.read_parquet(out).height == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_directory_and_glob_inputs(tmp_path: Path) -> None:
    logs = tmp_path / "logs" / "day1"
    logs.mkdir(parents=True)
    (logs / "a.jsonl.gz").write_bytes(gzip.compress(
        "".join(json.dumps(turn(i, "a")) + "\n" for i in range(3)).encode()))
    (logs / "b.jsonl").write_text("".join(json.dumps(turn(i, "b")) + "\n" for i in range(2)))
    (logs / "README.txt").write_text("not a trace file")
    out = tmp_path / "logs" / "turns.parquet"
    assert runner.invoke(app, ["ingest", str(tmp_path / "logs"), "-o", str(out)]).exit_code == 0
    assert pl.read_parquet(out).height == 5
    # Re-running over the same folder does not read its own output back in.
    result = runner.invoke(app, ["ingest", str(tmp_path / "logs"), "-o", str(out), "--json"])
    assert json.loads(result.stdout)["records_read"] == 5
    result = runner.invoke(app, ["ingest", str(tmp_path / "logs" / "**" / "*.jsonl*"),
                                 "-o", str(tmp_path / "g.parquet"), "--json"])
    assert json.loads(result.stdout)["turns_kept"] == 5


def test_invalid_utf8_and_truncated_gzip_are_rejects_not_crashes(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    src.write_bytes(json.dumps(turn(0)).encode() + b"\n" + b'{"session_id": "\xc3\x28"}\n')
    gz = tmp_path / "u.jsonl.gz"
    data = gzip.compress("".join(json.dumps(turn(i, "g")) + "\n" for i in range(200)).encode())
    gz.write_bytes(data[:-20])
    out = tmp_path / "turns.parquet"
    result = runner.invoke(app, ["ingest", str(src), str(gz), "-o", str(out)])
    assert result.exit_code == 2  # a truncated file is an error...
    assert "u.jsonl.gz: truncated gzip" in result.stderr and not out.exists()
    result = runner.invoke(app, ["ingest", str(src), str(gz), "-o", str(out), "--json",
                                 "--allow-truncated"])  # ... unless allowed
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr and "the rest is lost" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["rejects_by_rule"] == {"invalid_utf8": 1, "unreadable": 1}
    assert summary["turns_kept"] >= 150


def test_threads_change_the_cost_not_the_result(tmp_path: Path, hundred: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    import fpi.ingest
    from fpi.cli.ingest import ingest_command
    from fpi.errors import InputError
    from fpi.ingest import PARSE_WORKERS, read_traces

    # blocks of about ten lines: ten blocks parsed one at a time or three at once
    one, one_report = read_traces(hundred, block_bytes=2048, threads=1)
    three, three_report = read_traces(hundred, block_bytes=2048, threads=3)
    assert one.equals(three) and one.height == 95
    assert [(r.line, r.rule) for r in one_report.rejects] == \
        [(r.line, r.rule) for r in three_report.rejects]
    with pytest.raises(InputError, match="threads 0"):
        read_traces(hundred, threads=0)
    # the command's default is the library's, and --threads reaches it
    assert inspect.signature(ingest_command).parameters["threads"].default == PARSE_WORKERS
    seen: list[int] = []
    real = fpi.ingest.ingest

    def ingest(*args: object, **kwargs: object) -> object:
        seen.append(kwargs["threads"])  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fpi.ingest, "ingest", ingest)
    out = tmp_path / "turns.parquet"
    result = runner.invoke(app, ["ingest", str(hundred), "-o", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert seen == [1] and pl.read_parquet(out).equals(one)
