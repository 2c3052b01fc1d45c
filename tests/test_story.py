"""The story of a night against its baseline: headline, slices vs baseline, same-turn
collapse, traffic drift, and who gets the blame (a component or the traffic mix)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from golden_compare import check_golden

from fpi.diagnose import diagnose
from fpi.diagnose.drift import drift_table, explain_share
from fpi.diagnose.slices_compare import collapse, same_turn_groups
from fpi.headline import headline
from fpi.report import render_json, render_markdown
from fpi.simulate import write_simulation

GOLDEN = Path(__file__).parent / "golden"
NIGHT = 4000
PROFILES = ("baseline", "device_mix", "er_outage_music")


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory, night_model: Path) -> dict[str, dict]:
    """The session's night model, a baseline night, and three nights diagnosed against it
    (fixed seeds)."""
    root = tmp_path_factory.mktemp("story")
    for prof in PROFILES:
        write_simulation(root / f"{prof}.parquet", turns=NIGHT, seed=5, profile=prof)
    # no examples, which the story does not tell (about 0.1 CPU-s a night)
    kw = {"model": night_model, "attribution": "sample", "attribution_sample": 600,
          "examples": 0, "n_boot": 100, "seed": 0}
    # a comparison reads the baseline's rates, slices, traffic and model, not its
    # attribution
    diagnose([root / "baseline.parquet"], out_dir=root / "base",
             **{**kw, "attribution": "none"})
    out = {}
    for prof in PROFILES:
        r = diagnose([root / f"{prof}.parquet"], out_dir=root / prof,
                     baseline=root / "base" / "summary.json", **kw)
        out[prof] = r.summary
    return out


def test_baseline_against_itself_flags_nothing_new(nights: dict[str, dict]) -> None:
    s = nights["baseline"]
    assert s["slices"]["vs_baseline"]["tests"] > 50
    assert s["slices"]["vs_baseline"]["top"] == []
    assert s["drift"]["drifting"] == []
    assert all(r["jsd"] == 0 and r["psi"] == 0 for r in s["drift"]["inputs"])
    h = s["headline"]
    assert h["moved"] == [] and h["slice"] is None and h["verdict"] == "pass"
    # the within-night excess is still there, below
    assert s["slices"]["top"]


def test_traffic_mix_change_is_blamed_on_traffic(nights: dict[str, dict]) -> None:
    """device_mix: only the device mix moves; each device's rates stay as they were."""
    s = nights["device_mix"]
    assert "device_type" in s["drift"]["drifting"]
    row = next(r for r in s["drift"]["inputs"] if r["input"] == "device_type")
    assert row["psi"] > 0.2 and row["q_value"] < 1e-6
    h = s["headline"]
    assert "device_type" in h["drifting_inputs"]
    assert all(e["by"] != "component" for e in h["explained_by"].values())
    # no device slice got worse than the same device in the baseline
    assert not any(t["dimension"] == "device_type" for t in s["slices"]["vs_baseline"]["top"])
    # the mix effect is computed over the drifting dimension for every class
    assert all(m["dimension"] == "device_type" for m in s["drift"]["mix"].values())
    assert "traffic drifted in device_type" in h["story"]


def test_component_regression_is_blamed_on_the_component(nights: dict[str, dict]) -> None:
    s = nights["er_outage_music"]
    h = s["headline"]
    assert h["verdict"] == "warn"
    assert [m["class"] for m in h["moved"] if m["direction"] == "up"] == ["er"]
    assert h["explained_by"]["er"]["by"] == "component"
    assert not set(s["drift"]["drifting"]) & {"device_type", "locale", "domain"}
    sl = h["slice"]
    assert (sl["dimension"], sl["value"], sl["class"]) == ("domain", "music", "er")
    assert sl["also"] == [{"dimension": "intent", "value": "PlayMusicIntent"}]
    assert h["evidence"]["components"][0]["component"] == "er"
    top = s["slices"]["vs_baseline"]["top"]
    assert top and all(t["dimension"] != "intent" or t["value"] != "PlayMusicIntent"
                       for t in top), "the duplicate definition must be collapsed"
    md = render_markdown(s)
    assert md.index("WARN") < md.index("## Failure rates")
    assert "`domain` = `music` ≡ `intent` = `PlayMusicIntent`" in md


def test_headline_is_written_from_the_summary_alone(nights: dict[str, dict]) -> None:
    for s in nights.values():
        doc = json.loads(render_json(s))
        assert headline(doc) == s["headline"]


@pytest.mark.parametrize("prof", ["er_outage_music", "device_mix"])
def test_golden_story(nights: dict[str, dict], prof: str, update_golden: bool) -> None:
    s = nights[prof]
    doc = {"headline": s["headline"], "vs_baseline": s["slices"]["vs_baseline"],
           "same_turns": s["slices"]["same_turns"], "drift": s["drift"],
           "traffic": s["traffic"]}
    check_golden(GOLDEN / f"story_{prof}.json", render_json(doc), update=update_golden,
                 test="tests/test_story.py")


def test_same_turn_slices_collapse_into_one_row() -> None:
    sl = pl.DataFrame({"domain": ["music"] * 60 + ["weather"] * 60 + ["music"] * 5,
                       "intent": ["Play"] * 60 + ["Weather"] * 60 + ["Other"] * 5,
                       "device_type": ["speaker"] * 60 + ["phone"] * 65})
    groups = same_turn_groups(sl, min_support=50)
    # intent=Weather and domain=weather select the same 60 turns; music has 65 (not Play's 60);
    # device_type=speaker is the same 60 turns as intent=Play
    assert groups == [
        [{"dimension": "domain", "value": "weather"}, {"dimension": "intent", "value": "Weather"}],
        [{"dimension": "intent", "value": "Play"}, {"dimension": "device_type",
                                                    "value": "speaker"}],
    ]
    rows = [{"dimension": "intent", "value": "Play", "class": "asr"},
            {"dimension": "device_type", "value": "speaker", "class": "asr"},
            {"dimension": "device_type", "value": "speaker", "class": "er"},
            {"dimension": "domain", "value": "music", "class": "asr"}]
    got = collapse(rows, groups)
    assert [(r["dimension"], r["value"], r["class"]) for r in got] == [
        ("intent", "Play", "asr"), ("device_type", "speaker", "er"), ("domain", "music", "asr")]
    assert got[0]["also"] == [{"dimension": "device_type", "value": "speaker"}]
    assert got[1]["also"] == [{"dimension": "intent", "value": "Play"}]
    assert "also" not in got[2]


def test_drift_table_identical_and_shifted() -> None:
    same = {"categorical": {"device_type": {"a": 500, "b": 500}}, "numeric": {}}
    (row,) = drift_table(same, same)
    assert row["jsd"] == 0 and row["psi"] == 0 and not row["drifting"]
    moved = {"categorical": {"device_type": {"a": 800, "b": 200}}, "numeric": {}}
    (row,) = drift_table(moved, same)
    assert row["drifting"] and row["q_value"] < 1e-10
    assert np.isclose(row["largest_move"]["share"], 0.8)
    assert explain_share(0.02, 0.019)[1] == "traffic"
    assert explain_share(0.02, 0.001)[1] == "component"
    assert explain_share(0.02, 0.01)[1] == "both"
