"""Partitioned ingest (fpi.ingest.partition, ``fpi ingest --partitions``): the two-stage shuffle
reunites sessions split across files and keeps exactly the rows a single ingest keeps."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import fsspec
import polars as pl
import pytest
from cli_run import in_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fpi.cli import app
from fpi.errors import InputError
from fpi.ingest import read_traces
from fpi.ingest.partition import (
    HASH_NAME,
    MANIFEST,
    check_partition,
    ingest_partitioned,
    part_name,
    read_partition,
    read_partitions,
    session_buckets,
)
from fpi.schema import TURN_SCHEMA


def turn(session: str, i: int, text: str = "play jazz") -> dict:
    return {"session_id": session, "turn_index": i, "timestamp": "2026-11-20T18:03:12.481Z",
            "wake": {"detected": True, "score": 0.9},
            "asr": {"text": text, "confidence": 0.8},
            "label": {"failure_point": "correct" if i % 3 else "asr"}}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def parts_frame(directory: Path) -> pl.DataFrame:
    paths, manifest = read_partitions(directory)
    frames = [read_partition(p, i, manifest.partitions) for i, p in enumerate(paths)]
    return pl.concat(frames).sort("session_id", "turn_index")


def test_pinned_buckets() -> None:
    ids = pl.Series(["session-1", "session-2", "s-000001", "ß-ü", ""])
    assert session_buckets(ids, 7).tolist() == [0, 0, 1, 3, 5]
    assert session_buckets(ids, 1000).tolist() == [181, 299, 606, 900, 203]
    assert session_buckets(ids, 1).tolist() == [0] * 5


@st.composite
def split_logs(draw: st.DrawFn) -> tuple[list[list[dict]], int]:
    """Sessions' turns dealt over 1-3 files in any order, some turns repeated (with other
    content) in another file, and a partition count."""
    sessions = draw(st.lists(st.text("abcxyz-é", min_size=1, max_size=4), min_size=1,
                             max_size=6, unique=True))
    records = [turn(s, i) for s in sessions for i in range(draw(st.integers(1, 4)))]
    n_files = draw(st.integers(1, 3))
    files: list[list[dict]] = [[] for _ in range(n_files)]
    for record in records:
        files[draw(st.integers(0, n_files - 1))].append(record)
        if draw(st.integers(0, 5)) == 0:  # the same turn again, somewhere
            again = turn(record["session_id"], record["turn_index"], "again")
            files[draw(st.integers(0, n_files - 1))].append(again)
    files = [draw(st.permutations(f)) for f in files]
    return files, draw(st.integers(1, 5))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(split_logs())
def test_shuffle_reunites_sessions_and_equals_a_single_ingest(
        case: tuple[list[list[dict]], int]) -> None:
    files, n = case
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_jsonl(Path(tmp) / f"log-{k}.jsonl", recs)
                 for k, recs in enumerate(files) if recs]
        # one parse thread each (the outputs do not depend on it; about 13% less CPU)
        single, single_report = read_traces(paths, threads=1)
        report = ingest_partitioned(paths, Path(tmp) / "turns", n, threads=1)
        got = parts_frame(Path(tmp) / "turns")
        assert got.equals(single)  # sessions whole, the first of each turn kept, same rows
        for field in ("records_read", "turns_kept", "rejected", "rejects_by_rule",
                      "sessions", "label_counts", "stage_presence"):
            assert getattr(report, field) == getattr(single_report, field), field
        rejects = (Path(tmp) / "turns.rejects.jsonl").read_text().splitlines()
        assert len(rejects) == report.rejected
        assert all("was already read at" in json.loads(r)["message"] for r in rejects)


def test_directory_layout_and_manifest(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "a.jsonl", [turn(f"s-{k}", i) for k in range(20)
                                             for i in range(3)])
    ingest_partitioned([log], tmp_path / "turns", 4)
    names = sorted(p.name for p in (tmp_path / "turns").iterdir() if not p.name.startswith("."))
    assert names == [MANIFEST, *[part_name(i) for i in range(4)]]
    doc = json.loads((tmp_path / "turns" / MANIFEST).read_text())
    assert doc["hash"] == HASH_NAME and doc["partitions"] == 4
    assert sum(p["rows"] for p in doc["parts"]) == 60
    for i, entry in enumerate(doc["parts"]):
        part = pl.read_parquet(tmp_path / "turns" / entry["name"])
        assert part.schema == TURN_SCHEMA and part.height == entry["rows"]
        assert part.equals(part.sort("session_id", "turn_index"))
        assert set(session_buckets(part["session_id"], 4).tolist()) <= {i}


def test_a_part_holding_another_buckets_session_is_refused(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "a.jsonl", [turn(f"s-{k}", 0) for k in range(30)])
    ingest_partitioned([log], tmp_path / "turns", 3)
    paths, _ = read_partitions(tmp_path / "turns")
    # Part 1 given as part 0: its sessions belong to bucket 1.
    with pytest.raises(InputError, match=r"part-00001\.parquet: session '[^']+' belongs to "
                                         r"part 1 of 3, not part 0"):
        read_partition(paths[1], 0, 3)
    part = pl.read_parquet(paths[0])
    unsorted = pl.concat([part.slice(1), part.slice(0, 1)])
    with pytest.raises(InputError, match=r"x\.parquet: not sorted"):
        check_partition(unsorted, 0, 3, "x.parquet")


def test_parts_read_from_fsspec_urls(tmp_path: Path) -> None:
    log = write_jsonl(tmp_path / "a.jsonl", [turn(f"s-{k}", i) for k in range(10)
                                             for i in range(2)])
    ingest_partitioned([log], tmp_path / "turns", 2)
    expected = parts_frame(tmp_path / "turns")
    memory = fsspec.filesystem("memory")
    for name in (MANIFEST, part_name(0), part_name(1)):
        memory.pipe(f"/fpi-test-parts/{name}", (tmp_path / "turns" / name).read_bytes())
    try:
        for url in ("memory://fpi-test-parts", f"file://{tmp_path / 'turns'}"):
            paths, manifest = read_partitions(url)
            assert paths[0].startswith(url.split("://")[0] + "://")
            frames = [read_partition(p, i, manifest.partitions) for i, p in enumerate(paths)]
            assert pl.concat(frames).sort("session_id", "turn_index").equals(expected)
    finally:
        memory.rm("/fpi-test-parts", recursive=True)
    with pytest.raises(InputError, match="not a partitioned fpi directory"):
        read_partitions(tmp_path)


def fpi(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``fpi ARGS`` in process: test_hostile runs ``fpi ingest`` in real processes (exit
    statuses, streams, error lines); what --partitions changes lies in the library."""
    return in_process(*args, cwd=cwd, env={"COLUMNS": "200"})


def test_cli_partitions_and_refusals(tmp_path: Path) -> None:
    first = [turn(f"s-{k}", i) for k in range(12) for i in range(2)]
    write_jsonl(tmp_path / "a.jsonl", first[:15])
    write_jsonl(tmp_path / "b.jsonl", first[10:])  # 5 turns read twice
    done = fpi("ingest", "a.jsonl", "b.jsonl", "--partitions", "3", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["turns_kept"] == 24 and summary["rejects_by_rule"] == {"duplicate_turn": 5}
    assert summary["output_path"] == "turns"
    assert len(read_partitions(tmp_path / "turns")[0]) == 3
    ingest_partitioned([tmp_path / "a.jsonl"], tmp_path / "turns", 2)  # replaces the set
    assert len(read_partitions(tmp_path / "turns")[0]) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = fpi("ingest", "a.jsonl", "-o", "mine", "--partitions", "2", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.count("error:") == 1 and "refusing to replace it" in refused.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    usage = CliRunner().invoke(app, ["ingest", str(tmp_path / "a.jsonl"), "--workers", "2"])
    assert usage.exit_code == 2 and "--workers" in usage.output
    assert "needs --partitions" in usage.output
    write_jsonl(tmp_path / "bad.jsonl", [{"turn_index": 1}])
    nothing = CliRunner().invoke(app, ["ingest", str(tmp_path / "bad.jsonl"), "-o",
                                       str(tmp_path / "empty"), "--partitions", "2"])
    assert nothing.exit_code == 2 and "no valid turns" in nothing.stderr
    assert not (tmp_path / "empty").exists()
    shutil.rmtree(tmp_path / "turns")
