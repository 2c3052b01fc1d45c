"""Features learned from the team's own data: text models and the trace's ``extra`` numbers.

Two kinds of generic signal, fitted at training time and stored in the bundle
(``learned.json``, checksummed like every bundle file):

* **Text models** over the ASR text (group ``asr``), the response text (``result``)
  and the next turn's ASR text (``context``): hashed character 1-4-grams (any
  script: they work for languages written without spaces) plus hashed words, and a
  class-balanced multinomial naive Bayes per field. Its per-class log-posteriors
  are stacked as features (``text_asr_nlu`` ...). In training they are
  out-of-fold (the model of fold *k* never saw fold *k*'s labels); the bundle
  keeps the models fitted on all labelled turns.
* **Numeric ``extra`` fields**: numbers a trace logs beyond the spec (``asr.score``,
  ``asr.logit``) present in enough training turns become features
  ``extra_asr.score``, grouped by their stage prefix (fields without a stage prefix
  are not used, so every feature keeps one component group for attribution).
* **Word and mention counts** of the training turns (:mod:`fpi.model.vocab`): how
  usual a turn's ASR words and ER mention are, kept here as ``vocab``.

The hashing is a fixed polynomial over Unicode code points in NumPy (no Python loop
over rows, no dependence on a library's hash): the same text gives the same buckets
on every machine and version. Arrays are stored as base64 of little-endian float32
and int32 inside JSON: no pickle.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import polars as pl
import scipy.sparse as sp

from fpi.errors import ModelError
from fpi.schema import CLASSES

if TYPE_CHECKING:
    from fpi.model.vocab import Vocabulary

#: Hash buckets per text field (a power of two).
BUCKETS: Final = 1 << 16
#: Additive smoothing of the naive Bayes counts.
ALPHA: Final = 0.5
#: Columns :func:`fpi.features.build_features` passes through for these features.
RAW_TEXT: Final[dict[str, tuple[str, str]]] = {
    # field: (raw column, component group)
    "text_asr": ("_raw_asr_text", "asr"),
    "text_response": ("_raw_response", "result"),
    "text_next": ("_raw_next_text", "context"),
}
RAW_EXTRA: Final = "_raw_extra"
#: Stage prefix of an ``extra`` key -> component group.
EXTRA_GROUPS: Final[dict[str, str]] = {
    "wake": "wake", "device": "wake", "asr": "asr", "nlu": "nlu", "er": "er",
    "result": "result", "feedback": "context",
}
MAX_EXTRA: Final = 16
MIN_EXTRA_FRACTION: Final = 0.05
_KEY_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,80}")
_P: Final = np.uint64(0x100000001B3)
_MIX: Final = np.uint64(0x9E3779B97F4A7C15)
_SHIFT: Final = np.uint64(64 - 16)
with np.errstate(over="ignore"):
    #: _P ** i (mod 2**64) for i < 64: the position weights of a word's or text's hash.
    _POWERS: Final = np.cumprod(np.r_[np.uint64(1), np.full(63, _P)]).astype(np.uint64)


# ---------------------------------------------------------------------------
# Hashing
# ---------------------------------------------------------------------------

def _codepoints(texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Code points of ``" " + lower(text) + " "`` per text, joined by NUL; and the doc id.

    A NUL inside a text (JSON allows ``\\u0000``) reads as a space, so it can neither end
    its text early nor shift the texts after it."""
    joined = "\0".join(" " + (t or "").replace("\0", " ").lower() + " " for t in texts)
    cp = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    doc = np.cumsum(cp == 0)
    return cp, doc


def _bucket(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return ((h * _MIX) >> _SHIFT).astype(np.int64)


def hashed_ngrams(texts: Sequence[str | None]) -> sp.csr_matrix:
    """Binary (n_texts, BUCKETS) matrix of hashed char 1-4-grams and words of each text."""
    n = len(texts)
    cp, doc = _codepoints(texts)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    with np.errstate(over="ignore"):
        for size in (1, 2, 3, 4):
            m = len(cp) - size + 1
            if m <= 0:
                continue
            h = np.full(m, np.uint64(size))
            ok = np.ones(m, dtype=bool)
            text = np.zeros(m, dtype=bool)  # not only spaces
            for j in range(size):
                part = cp[j:j + m]
                h = h * _P + part
                ok &= part != 0
                text |= part != 32
            ok &= text
            rows.append(doc[:m][ok])
            cols.append(_bucket(h[ok]))
    word_rows, word_cols = _word_buckets(cp, doc)
    rows.append(word_rows)
    cols.append(word_cols)
    return _presence(rows, cols, n)


def _word_buckets(cp: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(doc id, bucket) of every word in :func:`_codepoints` output: runs of letters,
    digits, apostrophes and non-ASCII characters."""
    word = (cp > 127) | ((cp >= 48) & (cp <= 57)) | ((cp >= 97) & (cp <= 122)) | (cp == 39)
    if not word.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    idx = np.flatnonzero(word)
    start = np.r_[True, np.diff(idx) > 1]
    seg = np.cumsum(start) - 1
    pos = np.arange(len(idx)) - np.flatnonzero(start)[seg]
    with np.errstate(over="ignore"):
        terms = cp[idx] * _POWERS[np.minimum(pos, 63)]
        h = np.add.reduceat(terms, np.flatnonzero(start)) + np.uint64(7)
    return doc[idx[start]], _bucket(h)


def _presence(rows: list[np.ndarray], cols: list[np.ndarray], n: int) -> sp.csr_matrix:
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    x = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, BUCKETS))
    x.data[:] = 1.0  # presence, not counts
    return x


def hashed_words(texts: Sequence[str | None]) -> sp.csr_matrix:
    """Binary (n_texts, BUCKETS) matrix of the hashed words of each text (the word
    buckets of :func:`hashed_ngrams`)."""
    cp, doc = _codepoints(texts)
    rows, cols = _word_buckets(cp, doc)
    return _presence([rows], [cols], len(texts))


def string_keys(texts: Sequence[str | None]) -> np.ndarray:
    """A 64-bit hash of each whole (lower-cased) text: equal texts, equal keys."""
    if not len(texts):
        return np.zeros(0, dtype=np.uint64)
    cp, doc = _codepoints(texts)
    keep = cp != 0
    cp, doc = cp[keep], doc[keep]
    start = np.flatnonzero(np.r_[True, np.diff(doc) > 0])
    pos = np.arange(len(cp)) - np.repeat(start, np.diff(np.r_[start, len(cp)]))
    with np.errstate(over="ignore"):
        h = np.add.reduceat(cp * _POWERS[pos % 64], start)
        h = (h ^ (h >> np.uint64(29))) * _MIX
        h = h ^ (h >> np.uint64(32))
    return h


@dataclass(frozen=True)
class HashedTexts:
    """The :func:`hashed_ngrams` rows of a text column, kept once per distinct text:
    row ``i`` is ``distinct[at[i]]`` (a row depends on its own text alone), without a
    copy per turn."""

    distinct: sp.csr_matrix
    at: np.ndarray  # index of each row's text among ``distinct``'s rows

    @classmethod
    def of(cls, texts: pl.Series) -> HashedTexts:
        distinct, at = distinct_texts(texts)
        return cls(hashed_ngrams(distinct), at)

    def __len__(self) -> int:
        return len(self.at)

    def take(self, mask: np.ndarray) -> HashedTexts:
        """The rows of ``mask`` (booleans or indices), still once per distinct text."""
        return HashedTexts(self.distinct, self.at[mask])

    def rows(self, mask: np.ndarray | None = None) -> sp.csr_matrix:
        """The rows (of ``mask``, if given) as a matrix: one row per turn."""
        return self.distinct[self.at if mask is None else self.at[mask]]


def _class_weights(y: np.ndarray, k: int) -> np.ndarray:
    """1 / (rows of each class) (1 for an absent class): every class weighs the same."""
    n_c = np.bincount(y, minlength=k).astype(np.float64)
    return 1.0 / np.maximum(n_c, 1.0)


def _row_counts(x: sp.csr_matrix, y: np.ndarray, k: int, weight: np.ndarray | None,
                rows: np.ndarray | None) -> np.ndarray:
    """(BUCKETS, k) weighted presence counts of the ``rows`` of ``x`` (:meth:`TextModel.fit`)."""
    w = _class_weights(y, k)
    row = w[y] if weight is None else w[y] * weight
    at = np.arange(len(y)) if rows is None else rows
    onehot = sp.csr_matrix((row, (at, y)), shape=(x.shape[0], k))
    return np.asarray((x.T @ onehot).todense(), dtype=np.float64)


def _text_entries(texts: HashedTexts, y: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nonzero entries of :func:`_row_counts` of ``texts.rows()`` (no weights), bit
    for bit, as (bucket, class, count) arrays, from the distinct texts' rows. The product
    with the one-hot matrix of :func:`_row_counts` adds, per bucket and class, ``w[c]``
    once per row, from 0 and one at a time, so each count is the n-th partial sum of
    ``w[c]`` (``np.cumsum`` also adds one at a time), for the n rows of that class
    holding the bucket; n is counted exactly over the distinct texts, as a sparse product
    (only the pairs some row holds)."""
    w = _class_weights(y, k)
    per_text = np.bincount(texts.at * k + y, minlength=texts.distinct.shape[0] * k)
    n = (texts.distinct.T @ sp.csr_matrix(per_text.reshape(-1, k).astype(np.float64))).tocoo()
    held = n.data > 0
    bucket, cls, times = n.row[held], n.col[held], n.data[held].astype(np.int64)  # exact
    count = np.zeros(len(times))
    for c in np.unique(cls):
        at = cls == c
        count[at] = np.cumsum(np.full(int(times[at].max()), w[c]))[times[at] - 1]
    return bucket, cls, count


# ---------------------------------------------------------------------------
# Naive Bayes text model
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TextModel:
    """Class-balanced multinomial naive Bayes over hashed n-grams of one text field."""

    buckets: np.ndarray  # int32 indices of buckets seen in training
    counts: np.ndarray  # (len(buckets), n_classes) weighted presence counts
    totals: np.ndarray  # (n_classes,) total weighted counts per class

    @classmethod
    def fit(cls, x: sp.csr_matrix, y: np.ndarray, k: int = len(CLASSES), *,
            weight: np.ndarray | None = None, rows: np.ndarray | None = None) -> TextModel:
        """Fit on binary features ``x`` and class indices ``y`` (each class weighted 1/n_c;
        each row also by ``weight``, if given). ``rows`` (increasing indices), if given,
        are the rows of ``x`` that ``y`` and ``weight`` describe: the model is fitted on
        them alone without copying them out of ``x`` (the same sums in the same order)."""
        return cls._of_counts(_row_counts(x, y, k, weight, rows))

    @classmethod
    def fit_texts(cls, texts: HashedTexts, y: np.ndarray, k: int = len(CLASSES), *,
                  weight: np.ndarray | None = None) -> TextModel:
        """:meth:`fit` on ``texts.rows()``, the same model bit for bit; without ``weight``
        it counts each distinct text's row once (:func:`_text_entries`) instead of a row
        per turn."""
        if weight is not None:
            return cls.fit(texts.rows(), y, k, weight=weight)
        bucket, classes, count = _text_entries(texts, y, k)
        rows, at = np.unique(bucket, return_inverse=True)
        held = np.zeros((len(rows), k))  # the rows of the counts with a nonzero count
        held[at, classes] = count
        return cls._of_rows(rows, held)

    @classmethod
    def _of_counts(cls, counts: np.ndarray) -> TextModel:
        """The model of (BUCKETS, k) weighted presence counts."""
        held = np.zeros(len(counts), dtype=bool)  # a column at a time: k strided passes,
        for j in range(counts.shape[1]):  # faster than one reduction over rows of k values
            held |= counts[:, j] != 0
        rows = np.flatnonzero(held)  # the sums of the other rows are 0
        return cls._of_rows(rows, counts[rows])

    @classmethod
    def _of_rows(cls, rows: np.ndarray, counts: np.ndarray) -> TextModel:
        """The model of (BUCKETS, k) counts that are zero outside the increasing ``rows``,
        given as their ``counts`` (one row each)."""
        keep = counts.sum(axis=1) > 0
        c = counts[keep].astype(np.float32)
        return cls(rows[keep].astype(np.int32), c, c.astype(np.float64).sum(axis=0))

    def log_theta(self) -> np.ndarray:
        """(BUCKETS, n_classes) log-probabilities of each bucket per class.

        Buckets never seen in training weigh 0 for every class: an n-gram the model has
        not seen is no evidence (a text of unseen n-grams gets the uniform posterior,
        not a bias toward the class with the fewest n-grams).
        """
        k = self.counts.shape[1]
        denom = np.log(self.totals + ALPHA * BUCKETS)
        out = np.zeros((BUCKETS, k))
        out[self.buckets] = np.log(self.counts.astype(np.float64) + ALPHA) - denom
        return out

    def scores(self, x: sp.csr_matrix) -> np.ndarray:
        """Per-class log-posterior (uniform prior); rows with no text are NaN."""
        z = np.asarray(x @ self.log_theta())
        z = z - z.max(axis=1, keepdims=True)
        z = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        z = np.maximum(z, -30.0)
        return np.round(z, 6)

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": _b64(self.buckets.astype("<i4")),
                "counts": _b64(self.counts.astype("<f4")), "shape": list(self.counts.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextModel:
        shape = tuple(int(v) for v in d["shape"])
        buckets = np.frombuffer(base64.b64decode(d["buckets"]), dtype="<i4").astype(np.int32)
        counts = np.frombuffer(base64.b64decode(d["counts"]), dtype="<f4").reshape(shape)
        if len(buckets) != shape[0] or (len(buckets) and (buckets.min() < 0
                                                          or buckets.max() >= BUCKETS)):
            raise ValueError("text model buckets do not match its counts")
        return cls(buckets, counts.astype(np.float32), counts.astype(np.float64).sum(axis=0))


def _spread(values: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """``values`` of the ``rows`` of a mask, placed in a NaN array of the mask's length."""
    if rows is None:
        return values
    out = np.full((len(rows), *values.shape[1:]), np.nan)
    out[rows] = values
    return out


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _has_text(texts: pl.Series) -> np.ndarray:
    return (texts.fill_null("").str.strip_chars().str.len_chars() > 0).to_numpy()


def _scores_by_text(model: TextModel, texts: pl.Series) -> np.ndarray:
    """``model.scores(hashed_ngrams(texts))``, computed once per distinct text.

    A row of :func:`hashed_ngrams` and of :meth:`TextModel.scores` depends only on its own
    text (a null hashes as ``""``), so scoring the distinct texts and gathering gives the
    same values; a night repeats most texts (a few thousand distinct per 100k turns).
    """
    distinct, at = distinct_texts(texts)
    return model.scores(hashed_ngrams(distinct))[at]


def distinct_texts(texts: pl.Series) -> tuple[list[str], np.ndarray]:
    """The distinct texts of ``texts`` (a null as ``""``), in order of first appearance,
    and the index of each row's text among them: a night repeats most texts, so each is
    hashed once (a row's hash depends on its own text alone)."""
    frame = pl.DataFrame({"t": texts.fill_null("")})
    distinct = frame.unique(maintain_order=True).with_row_index("i")
    at = frame.join(distinct, on="t", how="left", maintain_order="left")["i"].to_numpy()
    return distinct["t"].to_list(), at


# ---------------------------------------------------------------------------
# The learned feature set
# ---------------------------------------------------------------------------

def text_feature_names(field: str) -> list[str]:
    return [f"{field}_{c}" for c in CLASSES]


def extra_feature_name(key: str) -> str:
    return f"extra_{key}"


def discover_extra(extra: pl.Series, max_fields: int = MAX_EXTRA,
                   min_fraction: float = MIN_EXTRA_FRACTION) -> list[str]:
    """Numeric ``extra`` keys with a stage prefix present in ``min_fraction`` of the turns."""
    present = extra.drop_nulls()
    if present.len() == 0:
        return []
    try:
        decoded = present.str.json_decode(infer_schema_length=None)
    except (pl.exceptions.PolarsError, ValueError):
        return []
    if not isinstance(decoded.dtype, pl.Struct):
        return []
    frame = decoded.struct.unnest()
    keys: list[tuple[int, str]] = []
    for name, dtype in frame.schema.items():
        if not (dtype.is_numeric() and _KEY_RE.fullmatch(name)
                and name.split(".")[0] in EXTRA_GROUPS):
            continue
        n = int(frame[name].is_not_null().sum())
        if n >= min_fraction * extra.len():
            keys.append((-n, name))
    return sorted(name for _, name in sorted(keys)[:max_fields])


def extra_values(extra: pl.Series, keys: Sequence[str]) -> np.ndarray:
    """(n, len(keys)) float64 values of ``keys`` in the ``extra`` JSON (NaN if absent)."""
    if not keys:
        return np.zeros((extra.len(), 0))
    frame = pl.DataFrame({"e": extra}).select(
        pl.col("e").str.json_path_match(f"$['{k}']").cast(pl.Float64, strict=False).alias(k)
        for k in keys)
    return frame.to_numpy().astype(np.float64)


@dataclass(frozen=True)
class Learned:
    """The learned features of a bundle: text models per field, ``extra`` keys and the
    training data's word and mention counts (:mod:`fpi.model.vocab`; None in bundles
    made before them)."""

    text: dict[str, TextModel]
    extra: tuple[str, ...]
    vocab: Vocabulary | None = None

    def names_groups(self) -> list[tuple[str, str]]:
        """(feature name, component group) of every learned feature, in column order."""
        from fpi.model.vocab import VOCAB_FEATURES

        out = [(n, RAW_TEXT[f][1]) for f in self.text for n in text_feature_names(f)]
        out += [(extra_feature_name(k), EXTRA_GROUPS[k.split(".")[0]]) for k in self.extra]
        if self.vocab is not None:
            out += list(VOCAB_FEATURES.items())
        return out

    def columns(self, features: pl.DataFrame,
                hashed: Mapping[str, HashedTexts] | None = None,
                rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Feature name -> values for ``features`` (a frame from build_features);
        ``hashed`` are its text fields' :func:`hashed_texts`, if already built.
        ``rows`` (a mask), if given: the text-model and vocabulary columns only on those
        rows, NaN on the others (whose out-of-fold values the trainer has); every value
        depends on its own row alone, so those rows' values are the same."""
        from fpi.model.vocab import RAW_COLUMNS as VOCAB_RAW
        from fpi.model.vocab import VocabInputs

        missing = [c for c in (*(RAW_TEXT[f][0] for f in self.text),
                               *([RAW_EXTRA] if self.extra else []),
                               *(VOCAB_RAW if self.vocab is not None else ()))
                   if c not in features.columns]
        if missing:
            raise ModelError(f"features frame lacks {', '.join(missing)}: build it with "
                             "fpi.features.build_features")
        out: dict[str, np.ndarray] = {}
        part = features if rows is None else features.filter(pl.Series(rows))
        for field, model in self.text.items():
            texts = part[RAW_TEXT[field][0]]
            s = (_scores_by_text(model, texts) if hashed is None
                 else model.scores(hashed[field].rows(rows)))
            s[~_has_text(texts)] = np.nan
            out.update(zip(text_feature_names(field), _spread(s, rows).T, strict=True))
        vals = extra_values(features[RAW_EXTRA], self.extra) if self.extra else None
        for i, k in enumerate(self.extra):
            assert vals is not None
            out[extra_feature_name(k)] = vals[:, i]
        if self.vocab is not None:
            out.update((name, _spread(v, rows))
                       for name, v in self.vocab.columns(VocabInputs.of(part)).items())
        return out

    def to_json(self) -> str:
        doc = {"format": 1, "buckets": BUCKETS, "alpha": ALPHA, "classes": list(CLASSES),
               "text": {f: m.to_dict() for f, m in self.text.items()},
               "extra": list(self.extra)}
        if self.vocab is not None:  # absent in bundles made before the counts
            doc["vocab"] = self.vocab.to_dict()
        return json.dumps(doc, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Learned:
        from fpi.model.vocab import Vocabulary

        try:
            doc = json.loads(text)
            if doc["buckets"] != BUCKETS or doc["alpha"] != ALPHA or doc["format"] != 1:
                raise ValueError("made by another version of the text models")
            if list(doc["classes"]) != list(CLASSES):
                raise ValueError("classes differ")
            models = {str(f): TextModel.from_dict(d) for f, d in doc["text"].items()}
            bad = [f for f in models if f not in RAW_TEXT]
            keys = tuple(str(k) for k in doc["extra"])
            if bad or any(not _KEY_RE.fullmatch(k) or k.split(".")[0] not in EXTRA_GROUPS
                          for k in keys):
                raise ValueError("unknown text field or extra key")
            vocab = Vocabulary.from_dict(doc["vocab"]) if "vocab" in doc else None
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{where} is damaged: {exc}") from None
        return cls(models, keys, vocab)


def hashed_texts(features: pl.DataFrame, fields: Sequence[str] = tuple(RAW_TEXT)
                 ) -> dict[str, HashedTexts]:
    """:func:`hashed_ngrams` of each text field of ``features``, each distinct text hashed
    once (:class:`HashedTexts`: a row depends on its own text alone, and labelled data
    repeats most texts): hash once, then fit and score from the same rows, what the
    trainer does."""
    return {f: HashedTexts.of(features[RAW_TEXT[f][0]]) for f in fields}


def fit_text_models(features: pl.DataFrame, y: np.ndarray,
                    hashed: dict[str, HashedTexts] | None = None,
                    weight: np.ndarray | None = None) -> dict[str, TextModel]:
    """One text model per field, fitted on all rows of ``features`` (labelled rows)."""
    hashed = hashed if hashed is not None else hashed_texts(features)
    return {f: TextModel.fit_texts(hashed[f], y, weight=weight) for f in RAW_TEXT}


def oof_text_scores(features: pl.DataFrame, y: np.ndarray, folds: np.ndarray,
                    fields: Sequence[str] = tuple(RAW_TEXT),
                    hashed: dict[str, HashedTexts] | None = None,
                    weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Out-of-fold text-model features: rows of fold k scored by a model fitted without it.

    Each fold's distinct texts are scored once and gathered to their rows: a row's
    score depends on its own row of the matrix alone, which is the same for the same
    text, so the values are the same as scoring every row."""
    out: dict[str, np.ndarray] = {}
    for field in fields:
        texts = features[RAW_TEXT[field][0]]
        h = hashed[field] if hashed is not None else HashedTexts.of(texts)
        x = None if weight is None else h.rows()  # weighted: a row per turn, gathered once
        s = np.full((len(y), len(CLASSES)), np.nan)
        for k in np.unique(folds):
            held = folds == k
            model = (TextModel.fit_texts(h.take(~held), y[~held]) if x is None or weight is None
                     else TextModel.fit(x, y[~held], rows=np.flatnonzero(~held),
                                        weight=weight[~held]))
            rows = np.flatnonzero(held)
            which, back = np.unique(h.at[rows], return_inverse=True)
            s[rows] = model.scores(h.distinct[which])[back]
        s[~_has_text(texts)] = np.nan
        out.update(zip(text_feature_names(field), s.T, strict=True))
    return out
