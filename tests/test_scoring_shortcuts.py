"""Shortcuts of the scoring path (issue 12) give the values of the plain computation."""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp
from any_text import any_text
from hypothesis import given, settings
from hypothesis import strategies as st

from fpi.diagnose.rates import value_codes
from fpi.model.learned import (
    RAW_TEXT,
    HashedTexts,
    TextModel,
    _has_text,
    _row_counts,
    _scores_by_text,
    _text_entries,
    hashed_ngrams,
    oof_text_scores,
    text_feature_names,
)
from fpi.schema import CLASSES

_TEXT = st.one_of(st.none(), st.sampled_from(["", " ", "play jazz", "Play Jazz", "stop",
                                              "日本の天気", "None", "é"]),
                  any_text(max_size=12))
_TEXTS = st.lists(_TEXT, max_size=40)


def _texts(min_size: int) -> st.SearchStrategy[list[str | None]]:
    """:data:`_TEXTS` of at least ``min_size`` texts (drawn so, not filtered: no draws
    thrown away)."""
    return st.lists(_TEXT, min_size=min_size, max_size=40)


@settings(max_examples=60, deadline=None)
@given(_TEXTS)
def test_value_codes_are_numpys_unique(values: list[str | None]) -> None:
    series = pl.Series(values, dtype=pl.String)
    cats, codes = value_codes(series)
    # Python strings (an object array): numpy's fixed-width str drops trailing NULs
    texts = np.array([str(v) for v in series.to_list()], dtype=object)
    want_cats, want_codes = np.unique(texts, return_inverse=True)
    assert cats == [str(c) for c in want_cats]
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, want_codes.reshape(-1))


def _model() -> TextModel:
    texts = ["play some jazz", "stop", "what is the weather", "call mom", "日本の天気", ""] * 3
    y = np.arange(len(texts)) % len(CLASSES)
    return TextModel.fit(hashed_ngrams(texts), y)


@settings(max_examples=40, deadline=None)
@given(_texts(1))
def test_text_scores_once_per_distinct_text_are_the_same(texts: list[str | None]) -> None:
    model = _model()
    got = _scores_by_text(model, pl.Series(texts, dtype=pl.String))
    want = model.scores(hashed_ngrams(texts))
    assert got.shape == want.shape
    assert np.array_equal(got, want)  # bit for bit, not within a tolerance


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), any_text(max_size=12)), min_size=1, max_size=20))
def test_a_nul_inside_a_text_reads_as_a_space(texts: list[str | None]) -> None:
    """Each text's n-grams are its own: one row per text, whatever NULs the texts hold,
    and a NUL hashes as a space would."""
    x = hashed_ngrams(texts)
    assert x.shape[0] == len(texts)
    spaced = [t.replace("\0", " ") if t is not None else None for t in texts]
    assert (x != hashed_ngrams(spaced)).nnz == 0
    alone = sp.vstack([hashed_ngrams([text]) for text in texts], format="csr")
    assert alone.shape == x.shape and (x != alone).nnz == 0  # row i: text i hashed alone


@settings(max_examples=40, deadline=None)
@given(_texts(6), st.integers(0, 2**32 - 1))
def test_out_of_fold_text_scores_once_per_distinct_text_are_the_same(
        texts: list[str | None], seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), len(texts))
    folds = rng.integers(0, 3, len(texts))
    column = RAW_TEXT["text_asr"][0]
    series = pl.Series(texts, dtype=pl.String)
    got = oof_text_scores(pl.DataFrame({column: series}), y, folds, ("text_asr",))
    x = hashed_ngrams(texts)  # every row scored, as before
    want = np.full((len(texts), len(CLASSES)), np.nan)
    for k in np.unique(folds):
        held = folds == k
        want[held] = TextModel.fit(x, y[~held], rows=np.flatnonzero(~held)).scores(x[held])
    want[~_has_text(series)] = np.nan
    for j, name in enumerate(text_feature_names("text_asr")):
        np.testing.assert_array_equal(got[name], want[:, j])  # bit for bit


@settings(max_examples=40, deadline=None)
@given(_texts(1), st.integers(1, 20_000), st.integers(0, 2**32 - 1), st.booleans())
def test_text_model_counted_once_per_distinct_text_is_the_same(
        texts: list[str | None], n: int, seed: int, weighted: bool) -> None:
    """Training fits the text models from each distinct text's row and exact per-class
    counts (``fit_texts``): the same counts, bit for bit, as adding every row's weight
    (thousands of rows, so a different order of the additions would show)."""
    rng = np.random.default_rng(seed)
    series = pl.Series(texts, dtype=pl.String)[rng.integers(0, len(texts), n)]
    y = np.minimum(rng.geometric(0.4, n) - 1, len(CLASSES) - 1)
    keep = rng.random(n) < 0.8
    weight = rng.random(int(keep.sum())) if weighted else None
    hashed = HashedTexts.of(series)
    x = hashed_ngrams(series.to_list())
    if not weighted:  # the float64 sums, before the model keeps them as float32
        bucket, cls, count = _text_entries(hashed.take(keep), y[keep], len(CLASSES))
        counts = np.zeros((x.shape[1], len(CLASSES)))  # zero but at the entries
        counts[bucket, cls] = count
        np.testing.assert_array_equal(counts, _row_counts(x, y[keep], len(CLASSES), None,
                                                          np.flatnonzero(keep)))
    want = TextModel.fit(x, y[keep], rows=np.flatnonzero(keep), weight=weight)
    got = TextModel.fit_texts(hashed.take(keep), y[keep], weight=weight)
    np.testing.assert_array_equal(got.buckets, want.buckets)
    np.testing.assert_array_equal(got.counts, want.counts)
    np.testing.assert_array_equal(got.totals, want.totals)
