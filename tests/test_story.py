"""The story of a night against its baseline: headline, slices vs baseline, same-turn
collapse, traffic drift, and who gets the blame (a component or the traffic mix); and
simulated nights with a known regression: rates within their intervals, the right gate
fails. (One module: the nights, the baseline's run and the session's night model serve
both.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from golden_compare import check_golden
from typer.testing import CliRunner

from fpi.cli import app
from fpi.diagnose import diagnose
from fpi.diagnose.drift import drift_table, explain_share
from fpi.diagnose.slices_compare import collapse, same_turn_groups
from fpi.headline import headline
from fpi.report import render_json, render_markdown
from fpi.schema import CLASSES
from fpi.simulate import write_simulation

runner = CliRunner()
GOLDEN = Path(__file__).parent / "golden"
NIGHT = 4000
PROFILES = ("baseline", "device_mix", "er_outage_music")
#: profile -> the class whose gate must fail
REGRESSIONS = {"asr_farfield": "asr", "er_outage_music": "er", "result_outage": "result"}
GATES = "\n".join(
    f'[[gate]]\nname = "{c} failures vs baseline"\nexpr = "{c}.estimate <= baseline + 0.02"\n'
    for c in CLASSES[1:]
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, night_model: Path) -> dict[str, Path]:
    """The session's night model, the nights of every profile (fixed seeds), the
    baseline night diagnosed alone (``base``) and the regression gates."""
    root = tmp_path_factory.mktemp("story")
    paths = {"root": root, "model": night_model}
    for prof in {*PROFILES, *REGRESSIONS}:
        paths[prof] = root / f"{prof}.parquet"
        write_simulation(paths[prof], turns=NIGHT, seed=5, profile=prof)
    # a comparison reads the baseline's rates, slices, traffic and model, not its
    # attribution; no examples, which no test reads (about 0.1 CPU-s a night)
    diagnose([paths["baseline"]], model=night_model, out_dir=root / "base",
             attribution="none", examples=0, n_boot=100, seed=0)
    (root / "gates.toml").write_text(GATES, encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def nights(world: dict[str, Path]) -> dict[str, dict]:
    """The baseline night and two others diagnosed against the baseline's run (the
    baseline night with the regression gates too: all pass)."""
    root = world["root"]
    kw = {"model": world["model"], "attribution": "sample", "attribution_sample": 600,
          "examples": 0, "n_boot": 100, "seed": 0}
    out = {}
    for prof in PROFILES:
        gates = {"gates_file": root / "gates.toml"} if prof == "baseline" else {}
        r = diagnose([world[prof]], out_dir=root / prof,
                     baseline=root / "base" / "summary.json", **kw, **gates)
        out[prof] = r.summary
    return out


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_headline_is_written_from_the_summary_alone(nights: dict[str, dict]) -> None:
    for s in nights.values():
        doc = json.loads(render_json(s))
        assert headline(doc) == s["headline"]


@pytest.mark.slow
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


# ---------------------------------------------------------------------------
# Regressions: the right gate fails
# ---------------------------------------------------------------------------


def _truth(path: Path) -> dict[str, float]:
    doc = json.loads(Path(f"{path}.truth.json").read_text())
    return {c: float(v["rate"] if isinstance(v, dict) else v) for c, v in doc["rates"].items()}


@pytest.fixture(scope="module")
def regressed(world: dict[str, Path]) -> dict[str, tuple[int, str, dict]]:
    """Each regression night diagnosed once against the baseline night, through the CLI:
    ``profile -> (exit code, output, summary)``; every test reads these, in any order
    (without examples, which none reads: about 0.35 CPU-s a night)."""
    root = world["root"]
    runs = {}
    for profile in REGRESSIONS:
        res = runner.invoke(app, [
            "diagnose", str(world[profile]), "--model", str(world["model"]),
            "--out", str(root / f"regressed-{profile}"),
            "--baseline", str(root / "base" / "summary.json"),
            "--gates", str(root / "gates.toml"), "--attribution-sample", "300",
            "--examples", "0", "--json",
        ])
        summary = json.loads(res.stdout) if res.exit_code in (0, 1) else {}
        runs[profile] = (res.exit_code, res.output, summary)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("profile", list(REGRESSIONS))
def test_regressed_component_gate_fails_others_pass(world: dict[str, Path],
                                                    regressed: dict[str, tuple[int, str, dict]],
                                                    profile: str) -> None:
    code, output, s = regressed[profile]
    assert code == 1, output
    status = {g["key"].split(".")[0]: g["status"] for g in s["gates"]}
    assert status[REGRESSIONS[profile]] == "FAIL"
    # every class that did not truly get worse (by half the margin) passes
    truth, base_truth = _truth(world[profile]), _truth(world["baseline"])
    steady = [c for c in CLASSES[1:] if truth[c] - base_truth[c] < 0.01]
    assert len(steady) >= 3
    assert {c: status[c] for c in steady} == dict.fromkeys(steady, "PASS")
    # the true rate within its interval in most classes (the far-field profile also
    # drifts the logs of every class, which no label-free estimator can fully undo)
    inside = [c for c in CLASSES if s["rates"][c]["low"] <= truth[c] <= s["rates"][c]["high"]]
    assert len(inside) >= 4, (truth, s["rates"])
    assert REGRESSIONS[profile] in inside or profile == "asr_farfield"
    # the regressed class went up; the big outages are significant changes (the
    # far-field ASR regression is about +1.3 points: within noise at 4,000 turns)
    ch = s["baseline"]["changes"][REGRESSIONS[profile]]
    assert ch["change"] > 0
    assert ch["significant"] or profile == "asr_farfield"
    # the attribution of its calls points at its component
    comps = s["attribution"]["by_class"][REGRESSIONS[profile]]["components"]
    assert max(comps, key=lambda g: comps[g]["mean"] or -1e9) == REGRESSIONS[profile]


@pytest.mark.slow
def test_baseline_night_passes_every_gate(world: dict[str, Path], nights: dict[str, dict]
                                          ) -> None:
    """The baseline night against itself, with the regression gates (its story run)."""
    s = nights["baseline"]
    assert s["gate_status"] == "pass"
    assert len(s["gates"]) == len(CLASSES) - 1
    truth = _truth(world["baseline"])
    inside = [c for c in CLASSES
              if s["rates"][c]["low"] <= truth[c] <= s["rates"][c]["high"]]
    assert len(inside) >= 5


@pytest.mark.slow
def test_music_outage_is_found_in_its_slice(
        regressed: dict[str, tuple[int, str, dict]]) -> None:
    s = regressed["er_outage_music"][2]
    top = s["slices"]["top"][0]
    assert (top["class"], top["value"]) in {("er", "music"), ("er", "PlayMusicIntent")}
    assert top["q_value"] <= 0.05
