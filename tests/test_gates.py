"""Gate parsing, evaluation, TOML files and JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from any_text import any_text
from hypothesis import given
from hypothesis import strategies as st

from fpi.errors import InputError
from fpi.gates import (
    FAIL,
    PASS,
    WARN,
    evaluate_gates,
    junit_xml,
    load_gates,
    overall_status,
    parse_gate,
)
from fpi.schema import CLASSES


def _summary(asr: float = 0.08, er: float = 0.05) -> dict:
    rates = {c: {"estimate": 0.02, "low": 0.01, "high": 0.03, "count": 20, "count_rate": 0.02}
             for c in CLASSES}
    rates["asr"] = {"estimate": asr, "low": asr - 0.01, "high": asr + 0.01, "count": 80,
                    "count_rate": asr}
    rates["er"] = {"estimate": er, "low": er - 0.01, "high": er + 0.01, "count": 50,
                   "count_rate": er}
    return {"turns": 1000, "rates": rates,
            "failure": {"estimate": 0.3, "low": 0.28, "high": 0.32, "count": 300},
            "labels": {"macro_f1": 0.72, "accuracy": 0.9}}


def test_threshold_gate_fails_with_value_bound_and_interval() -> None:
    [r] = evaluate_gates([parse_gate("asr.estimate <= 0.06")], _summary())
    assert r.status == FAIL
    assert (r.value, r.bound, r.low, r.high) == (0.08, 0.06, pytest.approx(0.07), 0.09)
    assert r.message == "asr.estimate = 0.0800 [0.0700, 0.0900], bound <= 0.0600: violated"


def test_baseline_arithmetic() -> None:
    gates = [parse_gate("er.estimate <= baseline + 0.01"),
             parse_gate("asr.estimate <= baseline.asr.estimate * 1.25")]
    base = _summary(asr=0.07, er=0.045)
    res = evaluate_gates(gates, _summary(asr=0.08, er=0.05), base)
    assert [r.status for r in res] == [PASS, PASS]
    assert res[0].bound == pytest.approx(0.055)
    res = evaluate_gates(gates, _summary(asr=0.09, er=0.06), base)
    assert [r.status for r in res] == [FAIL, FAIL]


def test_baseline_needed_but_missing_is_input_error() -> None:
    g = parse_gate("er.estimate <= baseline + 0.01")
    assert g.uses_baseline
    with pytest.raises(InputError, match="no --baseline"):
        evaluate_gates([g], _summary())


def test_warn_bound_and_overall_status() -> None:
    g = parse_gate("asr.estimate <= 0.10", warn=0.07)
    [r] = evaluate_gates([g], _summary(asr=0.08))
    assert r.status == WARN and r.warn_bound == 0.07
    assert overall_status([r]) == "warn"
    assert overall_status([]) == "none"
    g2 = parse_gate("macro_f1 >= 0.7")
    res = evaluate_gates([g, g2], _summary(asr=0.06))
    assert [x.status for x in res] == [PASS, PASS]
    assert overall_status(res) == "pass"


def test_failure_and_scalar_keys() -> None:
    res = evaluate_gates([parse_gate("failure.high < 0.25"), parse_gate("turns >= 500")],
                         _summary())
    assert [r.status for r in res] == [FAIL, PASS]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("asr.estimate", "exactly one comparison"),
        ("asr.estimate <= ", "not of the form"),
        ("asr.estimat <= 0.1", "unknown key 'asr.estimat'"),
        ("speech.estimate <= 0.1", "unknown key"),
        ("asr.estimate <= __import__('os')", "may only use"),
        ("0.1 >= asr.estimate", "left side must be a key"),
        ("0 < asr.estimate < 1", "exactly one comparison"),
        ("asr.estimate == 0.1", "exactly one comparison"),
    ],
)
def test_unparseable_gates_give_one_line_errors(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        parse_gate(text)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


@given(
    cls=st.sampled_from([*CLASSES, "failure"]),
    field=st.sampled_from(["estimate", "low", "high", "count"]),
    op=st.sampled_from(["<=", "<", ">=", ">"]),
    bound=st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
)
def test_parse_roundtrip_property(cls: str, field: str, op: str, bound: float) -> None:
    g = parse_gate(f"{cls}.{field}   {op} {bound!r}")
    assert (g.key, g.op, g.uses_baseline) == (f"{cls}.{field}", op, False)
    assert g.expr == f"{cls}.{field} {op} {bound!r}"


@given(any_text(max_size=40))
def test_parser_never_crashes_on_junk(text: str) -> None:
    try:
        parse_gate(text)
    except InputError as exc:
        assert str(exc).startswith("gate ")


def test_toml_file(tmp_path) -> None:
    p = tmp_path / "gates.toml"
    p.write_text(
        'gates = ["turns >= 10"]\n'
        "[[gate]]\nname = \"ASR failures\"\nexpr = \"asr.estimate <= 0.10\"\nwarn = 0.07\n"
        "[[gate]]\nexpr = \"er.estimate <= baseline + 0.01\"\n"
        "warn = \"er.estimate <= baseline + 0.005\"\n",
        encoding="utf-8",
    )
    gates = load_gates(p)
    assert [g.name for g in gates] == ["turns >= 10", "ASR failures",
                                       "er.estimate <= baseline + 0.01"]
    res = evaluate_gates(gates, _summary(), _summary(er=0.0449))
    assert [r.status for r in res] == [PASS, WARN, WARN]


def test_toml_file_with_a_byte_order_mark(tmp_path) -> None:
    p = tmp_path / "gates.toml"
    p.write_bytes(b"\xef\xbb\xbf[[gate]]\nexpr = \"asr.estimate <= 0.10\"\n")
    assert [g.name for g in load_gates(p)] == ["asr.estimate <= 0.10"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[[gate]\n", "not valid TOML"),
        ("[[gate]]\nname = 'x'\n", "needs expr"),
        ("[[gate]]\nexpr = 'asr.estimate <= x'\n", "[[gate]] number 1: gate"),
        ("[[gate]]\nexpr = 'asr.estimate <= 1'\nbound = 2\n", "unknown field"),
        ("title = 'nothing'\n", "no gates found"),
    ],
)
def test_bad_toml_files(tmp_path, content: str, fragment: str) -> None:
    p = tmp_path / "g.toml"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_gates(p)
    assert fragment in str(info.value) and str(p) in str(info.value)
    with pytest.raises(InputError, match="not found"):
        load_gates(tmp_path / "missing.toml")


def test_junit_xml_is_valid_and_marks_failures() -> None:
    gates = [parse_gate("asr.estimate <= 0.06", name="asr <script>&"),
             parse_gate("er.estimate <= 0.06")]
    res = [r.to_dict() for r in evaluate_gates(gates, _summary())]
    root = ET.fromstring(junit_xml(res))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("tests") == "2"
    cases = suite.findall("testcase")
    assert cases[0].get("name") == "asr <script>&"
    assert cases[0].find("failure") is not None and cases[1].find("failure") is None
