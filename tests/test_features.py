"""Features: dtypes, groups, values on hand-built turns, determinism across batching."""

from __future__ import annotations

import itertools
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from tiny_turns import T0, make_turns, turn

from fpi.errors import SchemaError
from fpi.features import FEATURE_NAMES, FEATURES, RAW_COLUMNS, Feature, build_features, context_free
from fpi.schema import COMPONENTS, TURN_SCHEMA

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
        turn("s", 0, "asr", rng, 0, T0),
        turn("s", 1, "correct", rng, 0, T0 + timedelta(seconds=5)),
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


def test_action_names_the_resolved_entity_and_unscored_nbest() -> None:
    rng = np.random.default_rng(2)
    rows = [turn("a", i, "correct", rng, 0, T0 + timedelta(seconds=9 * i)) for i in range(4)]
    rows[0]["result"]["action"] = "turn_on:id1"  # ER resolved id1
    rows[1]["result"]["action"] = "turn_on:id7"  # acted on another entity, says "OK."
    rows[2]["result"]["action"] = "turn on " + rows[2]["er"]["entities"][0]["resolved_name"]
    rows[3]["result"]["action"] = None
    for r in rows:  # an n-best logged without confidences
        r["asr"]["nbest"] = [{"text": r["asr"]["text"], "confidence": None},
                             {"text": "play the garbage store", "confidence": None}]
    f = build_features(pl.DataFrame(rows, schema=TURN_SCHEMA))
    assert f["result_action_names_resolved"].to_list() == [1.0, 0.0, 1.0, None]
    assert f["asr_alt_content_n"].to_list() == [1.0] * 4
    assert f["asr_alt_content_mass"].to_list() == [0.0] * 4


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

    many = simulate_frame(3000, seed=11, batch_size=3300)  # one batch, not 20,000 turns' worth
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


def test_context_the_same_in_session_order_or_shuffled() -> None:
    # build_features skips the context window's sort when the turns are in session order
    from fpi.features import _in_session_order

    many = make_turns(60, seed=5)
    ordered = many.sort("session_id", "turn_index")
    shuffled = many.sample(fraction=1.0, shuffle=True, seed=9)
    assert _in_session_order(ordered) and not _in_session_order(shuffled)
    by_key = build_features(shuffled).sort("session_id", "turn_index")
    assert build_features(ordered).equals(by_key)
