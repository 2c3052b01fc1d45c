"""How usual a turn is: counts of the training data's words and ER mentions (issue 13).

An assistant that logs no n-best still logs what it heard and what ER made of it.
Counted over the training turns (no labels are used), those say what an n-best would:

* **words** (group ``asr``): a misrecognition puts words in the ASR text that users
  rarely say ("add serial", "tell me about jew peter"). Per turn, the log relative
  document frequency of its rarest word (``asr_vocab_min``), the mean over its words
  (``asr_vocab_mean``) and how many of its words training never saw
  (``asr_vocab_unseen``). Words are the hashed words of :mod:`fpi.model.learned`
  (65,536 buckets; a language written without spaces has one word per run of text).
* **mentions** (group ``er``): the first ER entity's mention, how often training saw
  it (``er_mention_freq``, log relative frequency) and the share of those turns that
  ER resolved to the same id as this turn (``er_mention_agree``; an unresolved turn
  agrees with unresolved ones). A usual mention resolved unusually points at ER; an
  unusual mention at what ASR heard.

Only hashes and counts are kept (no log text in the bundle). In training the values
of fold *k*'s rows come from counts over the other folds (as the text models'), so a
rare word of a training turn is not made common by that turn itself.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import polars as pl
import scipy.sparse as sp

from fpi.model.learned import BUCKETS, _b64, distinct_texts, hashed_words, string_keys

#: Feature name -> component group, in column order.
VOCAB_FEATURES: Final[dict[str, str]] = {
    "asr_vocab_min": "asr", "asr_vocab_mean": "asr", "asr_vocab_unseen": "asr",
    "er_mention_freq": "er", "er_mention_agree": "er",
}
#: Raw columns of :func:`fpi.features.build_features` the counts read.
RAW_TEXT_COLUMN: Final = "_raw_asr_text"
RAW_MENTION: Final = "_raw_mention"
RAW_RESOLVED: Final = "_raw_resolved"
RAW_COLUMNS: Final = (RAW_TEXT_COLUMN, RAW_MENTION, RAW_RESOLVED)


@dataclass(frozen=True)
class VocabInputs:
    """The hashed inputs of some turns: word presence, mention and (mention, id) keys."""

    words: sp.csr_matrix  # (n, BUCKETS) binary
    has_text: np.ndarray
    mention: np.ndarray  # uint64 key per turn
    pair: np.ndarray  # uint64 key of (mention, resolved id or none)
    has_mention: np.ndarray

    @classmethod
    def of(cls, features: pl.DataFrame) -> VocabInputs:
        text = features[RAW_TEXT_COLUMN]
        mention = features[RAW_MENTION]
        pair = features.select(pl.concat_str(
            pl.col(RAW_MENTION).fill_null(""), pl.lit("\x1f"),
            pl.when(pl.col(RAW_RESOLVED).is_null()).then(pl.lit("\x1e"))
            .otherwise(pl.lit("=") + pl.col(RAW_RESOLVED)))).to_series()
        texts, at = distinct_texts(text)
        return cls(
            words=hashed_words(texts)[at],
            has_text=(text.fill_null("").str.strip_chars().str.len_chars() > 0).to_numpy(),
            mention=_keys(mention),
            pair=_keys(pair),
            has_mention=(mention.fill_null("").str.len_chars() > 0).to_numpy(),
        )

    def rows(self, mask: np.ndarray) -> VocabInputs:
        return VocabInputs(self.words[mask], self.has_text[mask], self.mention[mask],
                           self.pair[mask], self.has_mention[mask])


def _keys(values: pl.Series) -> np.ndarray:
    texts, at = distinct_texts(values)
    return string_keys(texts)[at]


def _increasing(a: np.ndarray) -> bool:
    return bool(np.all(a[1:] > a[:-1]))


def _key_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, n = np.unique(keys, return_counts=True)
    return uniq.astype(np.uint64), n.astype(np.int64)


def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Count of each ``query`` key among sorted ``keys`` (0 if absent)."""
    if len(keys) == 0:
        return np.zeros(len(query))
    at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[at] == query, counts[at], 0).astype(np.float64)


@dataclass(frozen=True)
class Vocabulary:
    """Document frequencies of words and counts of mentions over the training turns."""

    n_texts: int
    word_buckets: np.ndarray  # int32 buckets seen, sorted
    word_df: np.ndarray  # int64 documents per bucket
    n_mentions: int
    mention_keys: np.ndarray  # uint64, sorted
    mention_n: np.ndarray
    pair_keys: np.ndarray
    pair_n: np.ndarray

    @classmethod
    def fit(cls, x: VocabInputs) -> Vocabulary:
        df = np.asarray(x.words[x.has_text].sum(axis=0)).ravel()
        seen = np.flatnonzero(df > 0).astype(np.int32)
        m = x.has_mention
        return cls(int(x.has_text.sum()), seen, df[seen].astype(np.int64), int(m.sum()),
                   *_key_counts(x.mention[m]), *_key_counts(x.pair[m]))

    def columns(self, x: VocabInputs) -> dict[str, np.ndarray]:
        """Feature name -> values (NaN without an ASR text / an ER mention)."""
        df = np.zeros(BUCKETS)
        df[self.word_buckets] = self.word_df
        words = x.words.tocsr()
        nnz = np.diff(words.indptr)
        logp = np.log((df[words.indices] + 0.5) / (self.n_texts + 1.0))
        some = nnz > 0
        start = words.indptr[:-1][some]
        wmin = np.full(words.shape[0], np.nan)
        wmean = np.full(words.shape[0], np.nan)
        unseen = np.full(words.shape[0], np.nan)
        if len(logp):
            wmin[some] = np.minimum.reduceat(logp, start)
            wmean[some] = np.add.reduceat(logp, start) / nnz[some]
            unseen[some] = np.add.reduceat((df[words.indices] == 0).astype(float), start)
        text = x.has_text & some
        n = _lookup(self.mention_keys, self.mention_n, x.mention)
        k = _lookup(self.pair_keys, self.pair_n, x.pair)
        m = x.has_mention
        return {
            "asr_vocab_min": np.where(text, wmin, np.nan),
            "asr_vocab_mean": np.where(text, wmean, np.nan),
            "asr_vocab_unseen": np.where(text, unseen, np.nan),
            "er_mention_freq": np.where(m, np.log((n + 0.5) / (self.n_mentions + 1.0)), np.nan),
            "er_mention_agree": np.where(m & (n > 0), k / np.maximum(n, 1.0), np.nan),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"n_texts": self.n_texts, "n_mentions": self.n_mentions,
                "word_buckets": _b64(self.word_buckets.astype("<i4")),
                "word_df": _b64(self.word_df.astype("<i8")),
                "mention_keys": _b64(self.mention_keys.astype("<u8")),
                "mention_n": _b64(self.mention_n.astype("<i8")),
                "pair_keys": _b64(self.pair_keys.astype("<u8")),
                "pair_n": _b64(self.pair_n.astype("<i8"))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        """Read :meth:`to_dict`'s output (``ValueError`` if its arrays do not match)."""

        def arr(key: str, dtype: str, to: type) -> np.ndarray:
            return np.frombuffer(base64.b64decode(d[key]), dtype=dtype).astype(to)

        v = cls(int(d["n_texts"]), arr("word_buckets", "<i4", np.int32),
                arr("word_df", "<i8", np.int64), int(d["n_mentions"]),
                arr("mention_keys", "<u8", np.uint64), arr("mention_n", "<i8", np.int64),
                arr("pair_keys", "<u8", np.uint64), arr("pair_n", "<i8", np.int64))
        b = v.word_buckets
        if (len(b) != len(v.word_df) or len(v.mention_keys) != len(v.mention_n)
                or len(v.pair_keys) != len(v.pair_n) or not _increasing(b)
                or (len(b) and (b[0] < 0 or b[-1] >= BUCKETS))
                or not (_increasing(v.mention_keys) and _increasing(v.pair_keys))):
            raise ValueError("vocabulary arrays do not match")
        return v


def oof_vocab_columns(x: VocabInputs, folds: np.ndarray) -> dict[str, np.ndarray]:
    """Each fold's rows valued by the counts of the other folds (one fold: all rows)."""
    ks = np.unique(folds)
    if len(ks) < 2:
        return Vocabulary.fit(x).columns(x)
    out: dict[str, np.ndarray] = {name: np.full(len(folds), np.nan) for name in VOCAB_FEATURES}
    for k in ks:
        held = folds == k
        cols = Vocabulary.fit(x.rows(~held)).columns(x.rows(held))
        for name, values in cols.items():
            out[name][held] = values
    return out
