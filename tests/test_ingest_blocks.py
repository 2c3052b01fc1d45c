"""Cutting a JSON Lines file into blocks: every byte and every line number kept."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fpi.ingest import read_traces
from fpi.ingest.sources import Source, _plain_blocks, line_blocks

lines = st.lists(
    st.one_of(st.just(""), st.just("   "), st.text(alphabet="ab{}\"\r é", max_size=40)),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(text=lines, final_newline=st.booleans(), block_size=st.integers(1, 120))
def test_blocks_cover_the_file_with_right_line_numbers(text: list[str], final_newline: bool,
                                                       block_size: int) -> None:
    data = "\n".join(text).encode() + (b"\n" if final_newline and text else b"")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.jsonl"
        path.write_bytes(data)
        file_lines = data.split(b"\n")
        blocks = list(_plain_blocks(Source(path, "jsonl", None), 0, block_size))
    assert b"".join(bytes(b.data) for b in blocks) == data
    assert all(bytes(b.data).endswith(b"\n") for b in blocks[:-1])
    for b in blocks:
        got = bytes(b.data).split(b"\n")
        if got[-1] == b"":
            got = got[:-1]
        assert b.n_lines == len(got)
        assert got == file_lines[b.first_line - 1 : b.first_line - 1 + len(got)]


def test_block_size_does_not_change_the_result(tmp_path: Path) -> None:
    good = [{"session_id": f"s{i % 3}", "turn_index": i, "wake": {"detected": True}}
            for i in range(40)]
    text = [json.dumps(r) for r in good]
    text[7] = "{oops"
    text[12] = "null"
    text[20] = ""
    text[25] = json.dumps({**good[3]})  # a repeated turn
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(text))  # no final newline
    results = []
    for block_bytes in (1, 200, 1 << 20):
        frame, report = read_traces(path, block_bytes=block_bytes)
        results.append((frame, sorted((r.line, r.rule) for r in report.rejects)))
    for frame, rejects in results:
        assert frame.equals(results[0][0])
        assert rejects == [(8, "invalid_json"), (13, "not_an_object"), (26, "duplicate_turn")]


def test_line_blocks_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert list(line_blocks(Source(path, "jsonl", None), 0, 1 << 20)) == []
