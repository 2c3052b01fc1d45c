"""Word and mention counts of the training data (fpi.model.vocab): no model is trained."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from fpi.errors import ModelError
from fpi.features import RAW_COLUMNS, build_features
from fpi.model.learned import (
    Learned,
    TextModel,
    hashed_ngrams,
    hashed_texts,
    hashed_words,
    string_keys,
)
from fpi.model.vocab import VOCAB_FEATURES, VocabInputs, Vocabulary, oof_vocab_columns


def _frame(texts: list[str | None], mentions: list[str | None],
           resolved: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame({"_raw_asr_text": texts, "_raw_mention": mentions,
                         "_raw_resolved": resolved}, schema={c: pl.String for c in (
                             "_raw_asr_text", "_raw_mention", "_raw_resolved")})


_TRAIN = _frame(
    ["play coldplay", "play coldplay", "play coldplay", "play adele", "turn on the lamp"],
    ["coldplay", "coldplay", "coldplay", "adele", None],
    ["mu-05", "mu-05", "mu-01", "mu-01", None],
)


def test_rare_and_unseen_words_score_low() -> None:
    v = Vocabulary.fit(VocabInputs.of(_TRAIN))
    cols = v.columns(VocabInputs.of(_frame(
        ["play coldplay", "play gold play", "", None], [None] * 4, [None] * 4)))
    assert cols["asr_vocab_min"][0] == pytest.approx(np.log(3.5 / 6.0))
    assert cols["asr_vocab_min"][1] == pytest.approx(np.log(0.5 / 6.0))  # "gold" unseen
    assert cols["asr_vocab_unseen"][:2].tolist() == [0.0, 1.0]  # "play" twice counts once
    assert cols["asr_vocab_mean"][0] > cols["asr_vocab_mean"][1]
    for name in ("asr_vocab_min", "asr_vocab_mean", "asr_vocab_unseen"):
        assert np.isnan(cols[name][2:]).all(), name  # no text: unknown, not "rare"


def test_mention_frequency_and_agreement() -> None:
    v = Vocabulary.fit(VocabInputs.of(_TRAIN))
    cols = v.columns(VocabInputs.of(_frame(
        ["x"] * 5, ["coldplay", "Coldplay", "adele", "queen", None],
        ["mu-05", "mu-01", None, "mu-04", None])))
    agree, freq = cols["er_mention_agree"], cols["er_mention_freq"]
    assert agree[:2] == pytest.approx([2 / 3, 1 / 3])
    assert agree[2] == 0.0  # adele resolved before, unresolved now
    assert np.isnan(agree[3]) and np.isnan(agree[4])  # never seen; no mention
    assert freq[0] == pytest.approx(np.log(3.5 / 5.0)) and freq[3] == pytest.approx(
        np.log(0.5 / 5.0))
    assert np.isnan(freq[4])


def test_out_of_fold_counts_leave_the_fold_out() -> None:
    frame = _frame(["play coldplay", "play coldplay", "play adele", "play adele"],
                   ["coldplay", "coldplay", "adele", "adele"], ["mu-05"] * 2 + ["mu-01"] * 2)
    cols = oof_vocab_columns(VocabInputs.of(frame), np.array([0, 0, 1, 1]))
    # each fold's only artist is unseen in the other fold
    assert cols["asr_vocab_unseen"].tolist() == [1.0] * 4
    assert np.isnan(cols["er_mention_agree"]).all()
    assert set(cols) == set(VOCAB_FEATURES)


def test_round_trip_through_learned_json() -> None:
    v = Vocabulary.fit(VocabInputs.of(_TRAIN))
    learned = Learned({}, (), v)
    again = Learned.from_json(learned.to_json(), "learned.json")
    x = VocabInputs.of(_TRAIN)
    for name, values in v.columns(x).items():
        np.testing.assert_array_equal(again.columns(_TRAIN)[name], values)
    assert [n for n, _ in learned.names_groups()] == list(VOCAB_FEATURES)
    # bundles made before the counts: no "vocab" key, no such features
    assert "vocab" not in json.loads(Learned({}, ()).to_json())


def test_damaged_vocabulary_is_a_model_error() -> None:
    doc = json.loads(Learned({}, (), Vocabulary.fit(VocabInputs.of(_TRAIN))).to_json())
    doc["vocab"]["word_df"] = doc["vocab"]["mention_n"]  # lengths no longer match
    with pytest.raises(ModelError, match="damaged"):
        Learned.from_json(json.dumps(doc), "learned.json")


def test_words_are_the_word_buckets_of_the_text_models() -> None:
    texts = ["play cold play", "東京の天気", None, "o'clock 42"]
    words, ngrams = hashed_words(texts), hashed_ngrams(texts)
    assert words.multiply(ngrams).nnz == words.nnz  # every word bucket is also there
    assert words.getnnz(axis=1).tolist() == [2, 1, 0, 2]
    keys = string_keys(["Adele", "adele", "adel"])
    assert keys[0] == keys[1] != keys[2]


def test_build_features_passes_mention_and_resolved_id(small_turns: pl.DataFrame) -> None:
    turns = small_turns.head(400)
    feats = build_features(turns)
    assert {"_raw_mention", "_raw_resolved"} <= set(RAW_COLUMNS)
    first = turns["er"].struct.field("entities").list.first()
    assert feats["_raw_resolved"].to_list() == first.struct.field("resolved_id").to_list()
    mention = first.struct.field("mention").str.to_lowercase().str.strip_chars()
    assert feats["_raw_mention"].to_list() == mention.to_list()
    assert feats["_raw_mention"].drop_nulls().len() > 50


@pytest.mark.parametrize("keep", [[True, False, True, False, True], [False] * 5, [True] * 5])
def test_columns_on_some_rows_are_those_rows_of_all(keep: list[bool]) -> None:
    """What training asks for (the rows it has no out-of-fold values for): the same
    values on those rows, NaN on the others, and an empty choice works too."""
    frame = _TRAIN.with_columns(pl.Series("_raw_response", ["ok", None, "done", "", "ok"]),
                                pl.Series("_raw_next_text", [None] * 5, dtype=pl.String))
    y = np.array([0, 0, 1, 2, 3])
    learned = Learned({"text_asr": TextModel.fit(hashed_ngrams(frame["_raw_asr_text"]
                                                               .to_list()), y)},
                      (), Vocabulary.fit(VocabInputs.of(frame)))
    rows = np.array(keep)
    hashed = hashed_texts(frame, ("text_asr",))  # as training passes them
    every = learned.columns(frame)
    for some in (learned.columns(frame, rows=rows), learned.columns(frame, hashed, rows)):
        assert set(some) == set(every)
        for name, values in every.items():
            np.testing.assert_array_equal(some[name][rows], values[rows])
            assert np.isnan(some[name][~rows]).all()
    assert string_keys([]).shape == (0,)
