"""Hostile inputs: every one ends in a clean ``error:`` line or a by-design rejection.

Classes: depth, size, encoding, truncation, types, paths/OS errors, gates, usage,
internal errors. The CLI cases run the real ``fpi`` executable in subprocesses
(about a second each, so records of many classes share one run; a case whose road
from the error to the ``error:`` line another case takes in the executable runs in
process); the parser and gate cases run in-process, under hypothesis.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zstandard
from any_text import any_text
from cli_run import in_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fpi.cli import app
from fpi.errors import ExitStatus, InputError, OutputError
from fpi.gates import load_gates, parse_gate
from fpi.ingest import ingest
from fpi.ingest.parse import json_depth, parse_block, screen_bounds
from fpi.schema import MAX_DEPTH, MAX_RECORD_BYTES

FPI = str(Path(sys.executable).with_name("fpi"))


def good(i: int, session: str = "s") -> dict[str, Any]:
    return {"session_id": f"{session}-{i // 3}", "turn_index": i % 3,
            "wake": {"detected": True, "score": 0.9},
            "asr": {"text": f"turn {i}", "confidence": 0.8}}


def lines(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def fpi(*args: str, cwd: Path, python_m: bool = False) -> tuple[int, str]:
    """The ``fpi`` executable (or ``python -m fpi``) in ``cwd``: exit status and stderr."""
    command = [sys.executable, "-m", "fpi"] if python_m else [FPI]
    proc = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    return proc.returncode, proc.stderr


def fpi_in_process(*args: str, cwd: Path) -> tuple[int, str]:
    """:func:`fpi` in this process (:func:`cli_run.in_process`)."""
    result = in_process(*args, cwd=cwd, env={"COLUMNS": "200"})
    return result.returncode, result.stderr


def assert_one_error(code: int, stderr: str, expected: int, *words: str) -> str:
    """Exit status ``expected``, exactly one ``error:`` line naming ``words``, no traceback."""
    assert code == expected, stderr
    assert "Traceback" not in stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, stderr
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


def deep(levels: int, kind: str = "list") -> str:
    if kind == "list":
        return "[" * levels + "]" * levels
    return '{"a":' * levels + "1" + "}" * levels


# ---------------------------------------------------------------------------
# Depth, size, encoding, types: one ingest run over every input form
# ---------------------------------------------------------------------------


def _with_raw(record: dict[str, Any], field: str, raw: str) -> bytes:
    text = json.dumps({**record, field: "@@"})
    return text.replace('"@@"', raw).encode()


@pytest.mark.slow
def test_hostile_records_are_rejected_and_good_ones_kept(tmp_path: Path) -> None:
    body = [json.dumps(good(i)).encode() for i in range(12)]
    hostile = {  # line (1-based) -> (bytes, rule)
        3: (_with_raw(good(100), "junk", deep(100_000)), "too_deep"),  # segfaulted before
        5: (_with_raw(good(101), "junk", deep(500, "object")), "too_deep"),  # RecursionError
        7: (_with_raw(good(102), "asr", deep(3000)), "too_deep"),  # a known field
        9: (json.dumps({**good(103), "asr": {"text": "x" * (MAX_RECORD_BYTES + 10)}}).encode(),
            "too_large"),
        11: (json.dumps(good(104)).encode().replace(b"turn", b"t\xffrn"), "invalid_utf8"),
        13: (b'{"session_id": "s-9", "turn_index": 1,\x00 "wake": {}}', "invalid_json"),
        15: (b"\x00\x00\x00", "invalid_json"),
        17: (json.dumps({**good(105), "turn_index": "one"}).encode(), "bad_turn_index"),
        19: (json.dumps({**good(106), "wake": [1, 2]}).encode(), "bad_type"),
    }
    out_lines = []
    for n in range(1, len(body) + len(hostile) + 1):
        out_lines.append(hostile[n][0] if n in hostile else body.pop(0))
    (tmp_path / "night.jsonl").write_bytes(b"\n".join(out_lines) + b"\n")
    # the same records compressed, under another session name
    zipped = [ln.replace(b'"s-', b'"z-') for ln in out_lines]
    (tmp_path / "night2.jsonl.gz").write_bytes(gzip.compress(b"\n".join(zipped) + b"\n"))
    events = [json.dumps({"session_id": "e", "turn_index": 0, "stage": "wake",
                          "data": {"detected": True}}).encode(),
              _with_raw({"session_id": "e", "turn_index": 1, "stage": "wake",
                         "data": {"detected": True}}, "junk", deep(50_000)),
              _with_raw({"session_id": "e", "turn_index": 2, "stage": "wake",
                         "data": {"detected": True}}, "junk", deep(300, "object"))]
    (tmp_path / "n.events.jsonl").write_bytes(b"\n".join(events) + b"\n")
    csv = ("session_id,turn_index,wake.detected,asr\n"
           's,0,true,"{""text"": ""hi""}"\n'
           f's,1,true,"{deep(900, "object").replace(chr(34), chr(34) * 2)}"\n')
    (tmp_path / "n.csv").write_text(csv)
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + lines([good(0, "bom")]))

    code, err = fpi("ingest", "night.jsonl", "night2.jsonl.gz", "n.events.jsonl", "n.csv",
                    "bom.jsonl", "-o", "t.parquet", "--json", cwd=tmp_path)
    assert code == 0, err
    assert "Traceback" not in err and "error:" not in err
    rejects = [json.loads(x) for x in (tmp_path / "t.rejects.jsonl").read_text().splitlines()]
    got = {(r["file"], r["line"], r["rule"]) for r in rejects}
    for name in ("night.jsonl", "night2.jsonl.gz"):
        for n, (_, rule) in hostile.items():
            assert (name, n, rule) in got
    assert ("n.events.jsonl", 2, "too_deep") in got
    assert ("n.events.jsonl", 3, "too_deep") in got
    assert ("n.csv", 3, "too_deep") in got
    assert all(len(r["raw"]) < 3000 for r in rejects)  # huge records are kept in part
    import polars as pl

    kept = pl.read_parquet(tmp_path / "t.parquet")
    # 12 good turns per JSON Lines file, 1 event turn, 1 CSV row, the BOM-led record
    assert kept.height == 12 + 12 + 1 + 1 + 1


# ---------------------------------------------------------------------------
# Truncation
# ---------------------------------------------------------------------------


def _night(n: int = 3000) -> bytes:
    return lines([{**good(i), "pad": "x" * 100} for i in range(n)])


@pytest.mark.slow
def test_truncated_gzip_is_an_error_and_keeps_previous_output(tmp_path: Path) -> None:
    data = gzip.compress(_night())
    (tmp_path / "t.jsonl.gz").write_bytes(data[: len(data) // 2])
    # a previous night's output (fpi only replaces what looks like its own Parquet)
    previous = b"PAR1 previous night"
    (tmp_path / "turns.parquet").write_bytes(previous)
    # through `python -m fpi` (the console script runs in the tests above and below)
    code, err = fpi("ingest", "t.jsonl.gz", "-o", "turns.parquet", cwd=tmp_path,
                    python_m=True)
    line = assert_one_error(code, err, ExitStatus.ERROR, "t.jsonl.gz", "truncated gzip",
                            "records read before the break", "--allow-truncated")
    assert "bytes decompressed" in line
    assert (tmp_path / "turns.parquet").read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl.gz", "turns.parquet"]


def test_allow_truncated_keeps_the_readable_part_with_a_warning(tmp_path: Path) -> None:
    data = zstandard.ZstdCompressor().compress(_night())
    (tmp_path / "t.jsonl.zst").write_bytes(data[: len(data) // 2])
    # in process: a library warning reaches stderr as one "warning:" line through the
    # executable in test_trend's --skip-bad run (the same logging handler)
    code, err = fpi_in_process("ingest", "t.jsonl.zst", "-o", "turns.parquet",
                               "--allow-truncated", cwd=tmp_path)
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "t.jsonl.zst" in warnings[0] and "lost" in warnings[0]
    import polars as pl

    assert 0 < pl.read_parquet(tmp_path / "turns.parquet").height < 3000


def test_corrupt_parquet_and_gzip_are_errors(tmp_path: Path) -> None:
    import polars as pl

    pl.DataFrame({"session_id": ["a"] * 50, "turn_index": list(range(50)),
                  "wake.detected": [True] * 50}).write_parquet(tmp_path / "p.parquet")
    data = (tmp_path / "p.parquet").read_bytes()
    (tmp_path / "p.parquet").write_bytes(data[: len(data) // 2])
    # in process: the truncated gzip above takes the same road from the executable
    code, err = fpi_in_process("ingest", "p.parquet", "-o", "o.parquet", cwd=tmp_path)
    assert_one_error(code, err, ExitStatus.ERROR, "p.parquet", "unreadable Parquet")
    assert not (tmp_path / "o.parquet").exists()


# ---------------------------------------------------------------------------
# Paths and OS errors (tests run as root: chmod blocks nothing, so use paths that
# no one can write: under a regular file, in /proc, a directory for a file)
# ---------------------------------------------------------------------------


def test_unwritable_outputs_are_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "night.jsonl").write_bytes(lines([good(i) for i in range(6)]))
    (tmp_path / "afile").write_text("mine")
    cases = [
        (["-o", "afile/t.parquet"], "afile is not a directory"),
        (["-o", "/dev/full"], "not a regular file"),
    ]
    # in process: the truncated gzip above is the executable's `fpi ingest` error line
    # (an OutputError takes the same road to it as an InputError)
    for args, words in cases:
        code, err = fpi_in_process("ingest", "night.jsonl", *args, cwd=tmp_path)
        assert_one_error(code, err, ExitStatus.ERROR, words)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # never replaced by a file
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize(("output", "rejects", "words"), [
    ("t.parquet", "afile/r.jsonl", "afile is not a directory"),
    ("t.parquet", "/proc/fpi-test/r.jsonl", "/proc/fpi-test"),
    ("/proc/fpi-test/t.parquet", None, "/proc/fpi-test"),
    ("t.parquet", "/dev/null", "not a regular file"),
    ("t.parquet", ".", "it is a directory"),
    (".", None, "it is a directory"),
])
def test_unwritable_paths_raise_output_errors(tmp_path: Path, output: str,
                                              rejects: str | None, words: str) -> None:
    (tmp_path / "night.jsonl").write_bytes(lines([good(i) for i in range(6)]))
    (tmp_path / "afile").write_text("mine")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(OutputError, match=words):
            ingest("night.jsonl", output, rejects_path=rejects)
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "night.jsonl"]


def test_missing_inputs_and_bad_junit(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("mine")
    # in process: the truncated gzip above is the executable's error line (`python -m fpi`)
    code, err = fpi_in_process("ingest", "missing.jsonl", cwd=tmp_path)
    assert_one_error(code, err, ExitStatus.ERROR, "missing.jsonl")
    # an unwritable --junit is refused before any work: exit 2, never 1 (gate failed)
    (tmp_path / "n.jsonl").write_bytes(lines([good(0)]))
    code, err = fpi_in_process("diagnose", "n.jsonl", "-m", "nomodel", "-o", "out", "--junit",
                               "afile/j.xml", "--gate", "asr.estimate <= 1", cwd=tmp_path)
    assert_one_error(code, err, ExitStatus.ERROR, "afile/j.xml", "not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "n.jsonl"]


# ---------------------------------------------------------------------------
# Usage errors and internal errors
# ---------------------------------------------------------------------------


def test_usage_error_from_the_executable(tmp_path: Path) -> None:
    code, err = fpi("ingest", "--frmat", "x", "a.jsonl", cwd=tmp_path)
    assert_one_error(code, err, ExitStatus.ERROR, "--frmat", "--format", "fpi ingest --help")
    assert "╭" not in err  # no boxed usage panel


@pytest.mark.parametrize(("args", "words"), [
    (["diagnose", "x", "--attribution-sample", "abc"], ("--attribution-sample",)),
    (["diagnose", "x", "-m", "m"], ("--out",)),
    (["nosuch"], ("nosuch",)),
    (["ingest"], ("INPUT",)),
    (["train", "x", "-o", "m", "--threads", "0"], ("--threads",)),
])
def test_usage_errors_look_like_every_other_error(args: list[str], words: tuple[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert_one_error(result.exit_code, result.stderr, ExitStatus.ERROR, *words)
    assert "╭" not in result.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_exception_is_a_bug_with_its_own_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, debug: bool) -> None:
    import fpi.ingest as ingest_module  # `fpi ingest` imports it when it runs

    def boom(*_: Any, **__: Any) -> None:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(ingest_module, "ingest", boom)
    (tmp_path / "n.jsonl").write_bytes(lines([good(0)]))
    args = ["--debug"] * debug + ["ingest", str(tmp_path / "n.jsonl")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == ExitStatus.INTERNAL == 70
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: internal error: ZeroDivisionError: oops (this is a bug in "
                      "fpi; rerun with --debug for the traceback)"]
    assert ("Traceback" in result.stderr) == debug


@pytest.mark.parametrize(("exc", "status"), [
    (RecursionError("deep"), ExitStatus.INTERNAL), (MemoryError(), ExitStatus.ERROR),
    (IsADirectoryError(21, "Is a directory", "x"), ExitStatus.ERROR),
    (OSError(28, "No space left on device", "/out/p.parquet"), ExitStatus.ERROR),
    (KeyboardInterrupt(), ExitStatus.INTERRUPTED),
])
def test_no_exception_exits_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                              exc: BaseException, status: int) -> None:
    import fpi.ingest as ingest_module  # `fpi ingest` imports it when it runs

    def boom(*_: Any, **__: Any) -> None:
        raise exc

    monkeypatch.setattr(ingest_module, "ingest", boom)
    (tmp_path / "n.jsonl").write_bytes(lines([good(0)]))
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "n.jsonl")])
    assert result.exit_code == status
    assert "Traceback" not in result.stderr
    if isinstance(exc, OSError):
        assert_one_error(result.exit_code, result.stderr, status, str(exc.filename),
                         str(exc.strerror))


# ---------------------------------------------------------------------------
# Gates
# ---------------------------------------------------------------------------

BAD_GATES = [
    "asr.estimate <= 1e999", "asr.estimate <= -1e999", "asr.estimate <= 1/0",
    "asr.estimate <= (0.1 - 0.1) / (1 - 1)", "asr.estimate <= 1e308 * 10",
    "asr.estimate <= nan", "asr.estimate <= inf", "tts.estimate <= 0.1",
    "asr.median <= 0.1", "asr.estimate <= 1" + "0" * 400, "asr.estimate <= True",
    "asr.estimate <= 1j", "asr.estimate", "asr.estimate <= 0.1 <= 0.2", "",
    "asr.estimate <= 0.1\x00", "asr.estimate <= " + "(" * 300 + "1" + ")" * 300,
    "asr.estimate <= " + "+".join(["1"] * 400), "__import__('os') <= 1",
    "asr.estimate <= baseline.tts.estimate",
]


@pytest.mark.parametrize("expr", BAD_GATES)
def test_bad_gate_expressions_raise_input_error(expr: str) -> None:
    with pytest.raises(InputError):
        parse_gate(expr)


BAD_GATE_FILES: list[tuple[bytes, str]] = [
    (b'[[gate]]\nexpr = "asr.estimate <= 0.1"\nname = 12\n', "name must be a string"),
    (b'[[gate]]\nexpr = "asr.estimate <= 0.1"\nwarn = true\n', "warn must be a bound"),
    (b'[[gate]]\nexpr = "asr.estimate <= 1/0"\n', "divides by zero"),
    (b'[[gate]]\nexpr = "asr.estimate <= 0.1"\nfrobnicate = 1\n', "unknown field"),
    (b'[[gaet]]\nexpr = "asr.estimate <= 0.1"\n', "no gates found"),
    (b'[[gate]]\nexpr = "asr.estimate <= 0.1"\n[[gaet]]\nexpr = "x"\n', "unknown key"),
    (b"[[gate]]\nexpr = 0.1\n", "needs expr"),
    (b"gates = 'asr.estimate <= 0.1'\n", "must be a list"),
    (b"\xff\xfe[[gate]]\n", "not UTF-8"),
    (b"this is not toml = = =\n", "not valid TOML"),
    (b"", "no gates found"),
    (b"[gate]\nexpr = 'asr.estimate <= 0.1'\n", "array of tables"),
]


@pytest.mark.parametrize(("data", "words"), BAD_GATE_FILES)
def test_bad_gate_files_raise_one_input_error(tmp_path: Path, data: bytes, words: str) -> None:
    path = tmp_path / "gates.toml"
    path.write_bytes(data)
    with pytest.raises(InputError, match=words):
        load_gates(path)
    with pytest.raises(InputError, match="cannot read"):
        load_gates(tmp_path)  # a directory


def test_gate_errors_end_the_cli_with_status_2(tmp_path: Path) -> None:
    (tmp_path / "gates.toml").write_bytes(BAD_GATE_FILES[0][0])
    (tmp_path / "n.jsonl").write_bytes(lines([good(0)]))
    # in process: the truncated gzip run takes the road from an error to its line in a
    # real process (`python -m fpi`)
    code, err = fpi_in_process("diagnose", "n.jsonl", "-m", "nomodel", "-o", "out", "--gates",
                               "gates.toml", cwd=tmp_path)
    assert_one_error(code, err, ExitStatus.ERROR, "gates.toml", "name must be a string")
    assert not (tmp_path / "out").exists()


@given(any_text(max_size=80))
@settings(max_examples=150, deadline=None)
def test_any_gate_text_parses_or_raises_input_error(text: str) -> None:
    try:
        gate = parse_gate(text)
    except InputError as exc:
        assert "\n" not in str(exc).strip() or "\n" in text  # one line of its own
        return
    assert gate.op in ("<=", "<", ">=", ">")


# ---------------------------------------------------------------------------
# Parser properties (in-process)
# ---------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet="[]{}\"\\ab,:", max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=30,
)


def _true_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_true_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_true_depth(v) for v in value.values()), default=0)
    return 0


@given(_json, st.integers(min_value=0, max_value=200))
@settings(max_examples=150, deadline=None)
def test_json_depth_counts_exactly_outside_strings(value: Any, wrap: int) -> None:
    text = "[" * wrap + json.dumps({"v": value}) + "]" * wrap
    expected = wrap + 1 + _true_depth(value)
    got = json_depth(text.encode())
    if expected <= MAX_DEPTH:
        assert got <= MAX_DEPTH  # shallow records are never flagged
    else:
        assert got == expected


@given(st.lists(st.sampled_from(["good", "deep", "wide", "junk"]), min_size=1, max_size=8))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_parse_block_rejects_deep_lines_and_keeps_the_rest(kinds: list[str]) -> None:
    made = {
        "good": lambda i: json.dumps(good(i)).encode(),
        "deep": lambda i: _with_raw(good(i), "junk", deep(5000 + i)),
        "wide": lambda i: _with_raw(good(i), "junk", "[" + ",".join(["[1]"] * 3000) + "]"),
        "junk": lambda i: b"\x00{[" * 3,
    }
    data = b"\n".join(made[k](i) for i, k in enumerate(kinds)) + b"\n"
    parsed = parse_block(data)
    rules = {p.index: p.rule for p in parsed.problems}
    for i, k in enumerate(kinds):
        if k == "deep":
            assert rules[i] == "too_deep"
        elif k == "junk":
            assert rules[i] == "invalid_json"
        else:
            assert i not in rules
    rows = 0 if parsed.frame is None else len(parsed.frame)
    assert rows == sum(k in ("good", "wide") for k in kinds)
    _, screened = screen_bounds(data)
    assert {p.index for p in screened} <= {i for i, k in enumerate(kinds) if k == "deep"}


@pytest.mark.parametrize("depth", [80, 600])  # 600 lists: 1,200 schema levels
def test_parquet_with_a_deep_column(tmp_path: Path, depth: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fpi.ingest import read_traces

    value: Any = 1
    for _ in range(depth):  # structs: one Parquet schema level each (a list takes two)
        value = {"a": value} if depth < 100 else [value]
    table = pa.table({"session_id": ["a", "a"], "turn_index": [0, 1],
                      "wake": pa.array([{"detected": True}] * 2),
                      "junk": pa.array([value, None])})
    pq.write_table(table, tmp_path / "d.parquet")
    if depth > 100:  # beyond pyarrow's own Parquet schema limit (and Python's recursion
        # limit): an unreadable file
        with pytest.raises(InputError, match="too deeply nested"):
            read_traces(tmp_path / "d.parquet")
        return
    frame, report = read_traces(tmp_path / "d.parquet")
    assert frame.height == 1 and report.rejects_by_rule == {"too_deep": 1}
