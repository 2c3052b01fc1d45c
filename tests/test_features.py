"""Features: dtypes, groups, values on hand-built turns, determinism across batching."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from fpi.errors import SchemaError
from fpi.features import FEATURE_NAMES, FEATURES, RAW_COLUMNS, Feature, build_features, context_free
from fpi.schema import CLASSES, COMPONENTS, TURN_SCHEMA

# ---------------------------------------------------------------------------
# A tiny, deterministic, learnable fixture (used by test_model / test_evaluate too)
# ---------------------------------------------------------------------------

_T0 = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
_REQUESTS = [
    ("smart_home", "TurnOnIntent", "device", "turn on the kitchen lights", "kitchen lights"),
    ("music", "PlayMusicIntent", "artist", "play songs by the beatles", "the beatles"),
    ("weather", "GetWeatherIntent", "city", "what is the weather in paris", "paris"),
    ("timer", "SetTimerIntent", "duration", "set a timer for ten minutes", "ten minutes"),
    ("shopping", "AddToListIntent", "item", "add milk to my shopping list", "milk"),
]


def _turn(
    sid: str, idx: int, cls: str, rng: np.random.Generator, req: int, when: datetime
) -> dict[str, Any]:
    domain, intent, slot, text, value = _REQUESTS[req]
    other = _REQUESTS[(req + 1) % len(_REQUESTS)]
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    wake = {"detected": True, "score": u(0.7, 1), "device_directed_score": u(0.7, 1)}
    heard, conf = text, u(0.8, 1)
    runner = text.replace("the ", "a ", 1)
    if cls == "false_wake":
        wake["device_directed_score"] = u(0.0, 0.4)
        heard, conf, runner = "the news tonight", u(0.2, 0.6), "news tonight"
    if cls == "asr":
        heard, runner, conf = text.replace(value, "garbage store"), text, u(0.3, 0.6)
    dom, inte, nconf = domain, intent, u(0.8, 1)
    if cls == "nlu":
        dom, inte, nconf = other[0], other[1], u(0.3, 0.6)
    mention = value if cls != "asr" else "garbage store"
    status, resolved, score = "resolved", value.title(), u(0.8, 1)
    if cls in ("er", "asr"):
        status, resolved, score = "unresolved", None, u(0.0, 0.4)
    rstatus, response = "success", f"OK, {value}."
    if cls == "result":
        rstatus, response = "error", "Sorry, something went wrong."
    if cls in ("er", "asr"):
        rstatus, response = "error", f"Sorry, I couldn't find {mention}."
    return {
        "schema_version": 1,
        "session_id": sid,
        "turn_index": idx,
        "timestamp": when,
        "device": {"type": "speaker", "has_screen": False, "locale": "en-US", "app_version": "1"},
        "wake": wake,
        "asr": {
            "text": heard,
            "confidence": conf,
            "nbest": [{"text": heard, "confidence": conf},
                      {"text": runner, "confidence": conf / 3}],
            "audio_ms": u(800, 3000),
            "latency_ms": u(100, 400),
        },
        "nlu": {
            "domain": dom,
            "intent": inte,
            "confidence": nconf,
            "alternatives": [{"domain": other[0] if cls != "nlu" else domain,
                              "intent": other[1] if cls != "nlu" else intent,
                              "confidence": (1 - nconf) / 2}],
            "slots": [{"name": slot, "value": mention, "confidence": u(0.5, 1)}],
        },
        "er": {
            "entities": [{"slot": slot, "mention": mention, "resolved_id": resolved and "id1",
                          "resolved_name": resolved, "score": score, "status": status}],
            "latency_ms": u(10, 60),
        },
        "result": {"status": rstatus, "action": "do" if rstatus == "success" else None,
                   "response_text": response, "latency_ms": u(50, 300)},
        "feedback": {"barge_in": cls != "correct" and rng.random() < 0.3,
                     "explicit": "negative" if cls != "correct" and rng.random() < 0.1 else None},
        "label": {"failure_point": cls, "annotator": "a1",
                  "failure_point_2": cls if rng.random() < 0.9 else str(rng.choice(CLASSES))},
        "extra": None,
    }


def make_turns(n_sessions: int = 40, seed: int = 0, labels: bool = True) -> pl.DataFrame:
    """Canonical frame of ``n_sessions`` small sessions; each class appears often enough."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for s in range(n_sessions):
        when = _T0 + timedelta(minutes=7 * s)
        n_turns = int(rng.integers(1, 5))
        for i in range(n_turns):
            cls = CLASSES[int(rng.integers(0, len(CLASSES)))]
            rows.append(_turn(f"s{seed}-{s:04d}", i, cls, rng, int(rng.integers(0, 5)), when))
            when += timedelta(seconds=float(rng.uniform(3, 20)))
    frame = pl.DataFrame(rows, schema=TURN_SCHEMA)
    if not labels:
        frame = frame.with_columns(pl.lit(None, dtype=TURN_SCHEMA["label"]).alias("label"))
    return frame


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


def test_feature_list_is_well_formed() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURES)
    assert {f.group for f in FEATURES} == set(COMPONENTS)
    assert all(f.kind in ("numeric", "categorical") for f in FEATURES)
    assert all(f.group != "context" for f in context_free())
    with pytest.raises(ValueError):
        Feature("x", "nope")


def test_columns_dtypes_and_row_order() -> None:
    turns = make_turns(10)
    shuffled = turns.sample(fraction=1.0, shuffle=True, seed=3)
    feats = build_features(shuffled)
    # then the raw inputs of the learned features (fpi.model.learned), not model columns
    assert feats.columns == ["session_id", "turn_index", *FEATURE_NAMES, *RAW_COLUMNS]
    assert feats.height == turns.height
    assert feats.select("session_id", "turn_index").equals(
        shuffled.select("session_id", "turn_index")
    )
    for f in FEATURES:
        assert feats.schema[f.name] == (pl.String if f.kind == "categorical" else pl.Float64)


def test_lazy_and_eager_agree() -> None:
    turns = make_turns(8)
    assert build_features(turns).equals(build_features(turns.lazy()))


def test_values_on_a_hand_built_session() -> None:
    rng = np.random.default_rng(1)
    rows = [
        _turn("s", 0, "asr", rng, 0, _T0),
        _turn("s", 1, "correct", rng, 0, _T0 + timedelta(seconds=5)),
    ]
    rows[1]["asr"]["text"] = "stop"
    rows[1]["feedback"] = {"barge_in": True, "explicit": "positive"}
    f = build_features(pl.DataFrame(rows, schema=TURN_SCHEMA)).to_dicts()
    first, second = f
    assert first["asr_runner_up_content_diff"] >= 2  # "garbage store" vs "kitchen lights"
    assert first["er_n_unresolved"] == 1 and first["er_n_resolved"] == 0
    assert first["result_apology"] == 1.0 and first["result_cant"] == 1.0
    assert first["next_is_stop"] == 1.0 and first["next_barge_in"] == 1.0
    assert first["next_explicit_feedback"] == 1.0
    assert first["gap_next_s"] == pytest.approx(5.0)
    assert first["position"] == 0 and first["session_length"] == 2 and first["is_last"] == 0
    assert second["is_last"] == 1 and second["turns_remaining"] == 0
    assert second["gap_next_s"] is None and second["next_text_sim"] is None
    assert second["prev_text_sim"] is not None
    assert first["nlu_domain"] == "smart_home"


def test_absent_stages_give_missing_not_failure() -> None:
    turns = make_turns(3).with_columns(
        pl.lit(None, dtype=TURN_SCHEMA["nlu"]).alias("nlu"),
        pl.lit(None, dtype=TURN_SCHEMA["er"]).alias("er"),
        pl.lit(None, dtype=TURN_SCHEMA["result"]).alias("result"),
    )
    f = build_features(turns)
    assert f["nlu_present"].to_list() == [0.0] * turns.height
    assert f["nlu_confidence"].null_count() == turns.height
    assert f["result_status"].null_count() == turns.height
    assert f["result_apology"].null_count() == turns.height


def test_features_identical_alone_or_among_others() -> None:
    many = make_turns(60, seed=5)
    all_feats = build_features(many)
    for sid in many["session_id"].unique().sort()[:5]:
        alone = build_features(many.filter(pl.col("session_id") == sid))
        among = all_feats.filter(pl.col("session_id") == sid)
        assert alone.equals(among), sid


def test_not_a_canonical_frame_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="lack column"):
        build_features(make_turns(2).drop("asr"))


def test_simulated_sessions_identical_alone_or_among_others() -> None:
    from fpi.simulate import simulate_frame

    many = simulate_frame(3000, seed=11)
    all_feats = build_features(many)
    # in whole-session batches of varying size
    sessions = many["session_id"].unique(maintain_order=True)
    cuts = [0, 1, 7, 60, len(sessions)]
    parts = [
        build_features(many.filter(pl.col("session_id").is_in(sessions[a:b].implode())))
        for a, b in itertools.pairwise(cuts)
    ]
    assert pl.concat(parts).equals(all_feats)
    for f in FEATURES:  # the simulator exercises every feature
        assert all_feats[f.name].null_count() < all_feats.height, f.name
