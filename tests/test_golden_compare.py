"""The golden-file comparison itself: tolerant of last-digit noise, strict about the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from golden_compare import check_golden, compare_json, compare_text

DOC = {"a": 0.101563, "n": 384, "s": "adjusted", "ok": True, "none": None,
       "rows": [{"v": 0.25, "k": "asr"}, {"v": 1e-5, "k": "nlu"}]}


def _with(path: tuple, value: object) -> dict:
    doc = json.loads(json.dumps(DOC))
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return doc


def test_json_tolerates_last_digit_noise() -> None:
    assert compare_json(DOC, DOC) == []
    assert compare_json(DOC, _with(("a",), 0.101562)) == []  # the tie that broke CI
    assert compare_json(DOC, _with(("rows", 0, "v"), 0.25 + 1e-9)) == []


@pytest.mark.parametrize(("path", "value", "fragment"), [
    (("a",), 0.101573, "$.a: 0.101563 != 0.101573"),  # ten units off
    (("n",), 385, "$.n: 384 != 385 (integers)"),
    (("n",), 384.0000001, "$.n"),  # an integer became a float
    (("s",), "em", "$.s: 'adjusted' != 'em'"),
    (("ok",), False, "$.ok"),
    (("none",), 0, "$.none"),
    (("rows", 1, "k"), "er", "$.rows[1].k"),
    (("rows",), [], "$.rows: 2 items != 0"),
])
def test_json_finds_real_differences(path: tuple, value: object, fragment: str) -> None:
    diffs = compare_json(DOC, _with(path, value))
    assert diffs and fragment in diffs[0], diffs


def test_json_finds_changed_keys() -> None:
    renamed = {("b" if k == "a" else k): v for k, v in DOC.items()}
    assert compare_json(DOC, renamed) == ["$: key 'a' missing", "$: key 'b' unexpected"]


MD = ("| ASR | **14.32%** | [0.63%, 19.42%] | 1,234 | 0.101563 | +0.45 | 1.2e-05 |\n"
      "model `bd1634fc6091` · fpi 0.4.2 · 95% intervals\n")


def test_text_tolerates_one_unit_of_the_last_digit() -> None:
    assert compare_text(MD, MD) == []
    noisy = (MD.replace("14.32%", "14.33%").replace("0.101563", "0.101562")
             .replace("+0.45", "+0.44").replace("1.2e-05", "1.3e-05").replace("1,234", "1,235"))
    assert compare_text(MD, noisy) == []


@pytest.mark.parametrize(("old", "new"), [
    ("14.32%", "14.34%"),  # two units
    ("0.101563", "0.101573"),
    ("1,234", "1,236"),
    ("ASR", "NLU"),  # a string
    ("bd1634fc6091", "bd1634fc6092"),  # a hex id is text, not a number
    ("0.4.2", "0.4.3"),  # so is a version
    ("14.32%", "14.32"),
    ("| +0.45 |", "| +0.45 | 3 |"),  # an extra number
])
def test_text_finds_real_differences(old: str, new: str) -> None:
    assert compare_text(MD, MD.replace(old, new))


def test_text_finds_a_missing_line() -> None:
    assert compare_text(MD, MD.splitlines()[0] + "\n") == ["2 lines != 1"]


def test_missing_golden_fails_and_is_not_created(tmp_path: Path) -> None:
    golden = tmp_path / "golden" / "x.json"
    with pytest.raises(AssertionError, match=r"(?s)is missing.*--update-golden"):
        check_golden(golden, "{}", update=False)
    assert not golden.exists()


def test_update_rewrites_and_compare_reads(tmp_path: Path) -> None:
    golden = tmp_path / "x.json"
    with pytest.warns(UserWarning, match="rewritten"):
        check_golden(golden, json.dumps(DOC), update=True)
    check_golden(golden, json.dumps(_with(("a",), 0.101562)), update=False)
    with pytest.raises(AssertionError, match=r"(?s)\$\.s.*--update-golden"):
        check_golden(golden, json.dumps(_with(("s",), "em")), update=False)
    md = tmp_path / "x.md"
    md.write_text(MD)
    check_golden(md, MD.replace("14.32%", "14.31%"), update=False)
    with pytest.raises(AssertionError, match="text differs"):
        check_golden(md, MD.replace("ASR", "NLU"), update=False)


def test_ignored_paths_and_patterns_may_differ_and_nothing_else() -> None:
    other = _with(("s",), "em")
    assert compare_json(DOC, other, ignore=frozenset({"$.s"})) == []
    assert compare_json(DOC, _with(("n",), 1), ignore=frozenset({"$.s"}))
    moved = MD.replace("bd1634fc6091", "0123456789ab")
    assert compare_text(MD, moved, ignore=(r"model `[0-9a-f]{12}`",)) == []
    assert compare_text(MD, moved.replace("ASR", "NLU"), ignore=(r"model `[0-9a-f]{12}`",))
