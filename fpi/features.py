"""Turn features: Polars expressions over the canonical frame, one group per component.

Every feature belongs to one of :data:`fpi.schema.COMPONENTS` so attribution can
sum contributions by component. Features only use general signals of failure
(confidences, margins, agreement between stages, string similarity, response
cues in plain English, what the user did next), never a particular assistant's
phrasings or catalogues.

Context features look at the previous and next turns of the same session, so a
caller that batches a large input must keep whole sessions within a batch; a
turn's features are then identical however its session is batched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

from fpi.errors import SchemaError
from fpi.schema import COMPONENTS, TURN_SCHEMA

FeatureKind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Feature:
    """One model input: its column name, component group and kind."""

    name: str
    group: str
    kind: FeatureKind = "numeric"

    def __post_init__(self) -> None:
        if self.group not in COMPONENTS:
            raise ValueError(f"feature {self.name!r}: group {self.group!r} not in {COMPONENTS}")


# Words that carry little meaning: a runner-up hypothesis that differs from the
# top one only in these does not change what the user asked for.
STOPWORDS: Final[frozenset[str]] = frozenset(
    (
        "a", "an", "the", "to", "of", "in", "on", "at", "for", "from", "by", "with", "and",
        "or", "but", "is", "are", "was", "were", "be", "been", "am", "i", "me", "my", "you",
        "your", "it", "its", "this", "that", "these", "those", "please", "can", "could",
        "would", "will", "shall", "should", "do", "does", "did", "what", "whats", "what's",
        "how", "hey", "ok", "okay", "um", "uh", "er", "so", "just", "up", "some", "any",
        "all"
    )
)

_WORD_RE: Final = r"[a-z0-9']+"
# Plain-English response cues (general assistant phrasing, not one assistant's templates).
_APOLOGY_RE: Final = r"(?i)\b(sorry|apolog\w*|unfortunately|oops)\b"
_CLARIFY_RE: Final = (
    r"(?i)(did you mean|which one|which \w+ (do|did|would) you|could you (repeat|say)|"
    r"can you (repeat|say)|what do you mean|do you mean|\?\s*$)"
)
_CANT_RE: Final = (
    r"(?i)\b(can't|cannot|can not|unable|couldn't|could not|don't know|do not know|"
    r"not sure|isn't available|not available|not supported|don't support|doesn't support|"
    r"didn't understand|did not understand|didn't catch|no results?|not found|couldn't find)\b"
)
_STOP_RE: Final = (
    r"(?i)^\s*(stop|cancel|never\s*mind|nevermind|forget it|no+|nope|quit|exit|shut up|"
    r"be quiet|that's wrong|that is wrong|wrong)\b"
)


# ---------------------------------------------------------------------------
# The feature list
# ---------------------------------------------------------------------------

def _n(name: str, group: str) -> Feature:
    return Feature(name, group, "numeric")


def _c(name: str, group: str) -> Feature:
    return Feature(name, group, "categorical")


#: Every feature, in model column order.
FEATURES: Final[tuple[Feature, ...]] = (
    # wake
    _n("wake_detected", "wake"),
    _n("wake_score", "wake"),
    _n("wake_dd_score", "wake"),
    _n("wake_min_score", "wake"),
    _c("device_type", "wake"),
    _n("device_has_screen", "wake"),
    # asr
    _n("asr_present", "asr"),
    _n("asr_confidence", "asr"),
    _n("asr_nbest_n", "asr"),
    _n("asr_top2_margin", "asr"),
    _n("asr_nbest_conf_sum", "asr"),
    _n("asr_runner_up_sim", "asr"),
    _n("asr_runner_up_content_diff", "asr"),
    _n("asr_alt_content_mass", "asr"),
    _n("asr_runner_up_keeps_slot", "asr"),
    _n("asr_n_words", "asr"),
    _n("asr_n_content_words", "asr"),
    _n("asr_audio_ms", "asr"),
    _n("asr_ms_per_word", "asr"),
    _n("asr_latency_ms", "asr"),
    _c("device_locale", "asr"),
    # nlu
    _n("nlu_present", "nlu"),
    _c("nlu_domain", "nlu"),
    _c("nlu_intent", "nlu"),
    _n("nlu_confidence", "nlu"),
    _n("nlu_margin", "nlu"),
    _n("nlu_n_alternatives", "nlu"),
    _n("nlu_alt_top_domain_differs", "nlu"),
    _n("nlu_alt_n_other_domains", "nlu"),
    _n("nlu_alt_conf_other_domains", "nlu"),
    _n("nlu_n_slots", "nlu"),
    _n("nlu_slot_conf_min", "nlu"),
    _n("nlu_slot_conf_mean", "nlu"),
    _n("nlu_slot_in_text_min", "nlu"),
    # er
    _n("er_present", "er"),
    _n("er_n_entities", "er"),
    _n("er_n_resolved", "er"),
    _n("er_n_unresolved", "er"),
    _n("er_n_ambiguous", "er"),
    _n("er_slots_without_entity", "er"),
    _n("er_score_min", "er"),
    _n("er_score_mean", "er"),
    _n("er_mention_slot_sim_min", "er"),
    _n("er_mention_resolved_sim_min", "er"),
    _n("er_mention_resolved_sim_mean", "er"),
    _n("er_mention_in_text_min", "er"),
    _n("er_latency_ms", "er"),
    # result
    _n("result_present", "result"),
    _c("result_status", "result"),
    _n("result_action_missing", "result"),
    _n("result_apology", "result"),
    _n("result_clarification", "result"),
    _n("result_cant", "result"),
    _n("result_response_words", "result"),
    _n("result_names_entity", "result"),
    _n("result_latency_ms", "result"),
    # context
    _n("barge_in", "context"),
    _n("explicit_feedback", "context"),
    _n("next_barge_in", "context"),
    _n("next_explicit_feedback", "context"),
    _n("next_is_stop", "context"),
    _n("next_text_sim", "context"),
    _n("next_token_sim", "context"),
    _n("next_sim_runner_up_gain", "context"),
    _n("next_new_content_words", "context"),
    _n("next_same_intent", "context"),
    _n("next_same_domain", "context"),
    _n("next_intent_was_alternative", "context"),
    _n("next_slot_value_sim", "context"),
    _n("next_same_resolved", "context"),
    _n("next_asr_confidence", "context"),
    _n("next_nlu_confidence", "context"),
    _n("next_result_ok", "context"),
    _n("next_wake_dd_score", "context"),
    _n("gap_next_s", "context"),
    _n("prev_text_sim", "context"),
    _n("prev_token_sim", "context"),
    _n("prev_same_intent", "context"),
    _n("prev_result_ok", "context"),
    _n("gap_prev_s", "context"),
    _n("position", "context"),
    _n("session_length", "context"),
    _n("turns_remaining", "context"),
    _n("is_last", "context"),
)

#: Raw columns :func:`build_features` passes through after the features: the inputs of
#: the features a bundle learns from the data (:mod:`fpi.learned`).
RAW_COLUMNS: Final[tuple[str, ...]] = ("_raw_asr_text", "_raw_response", "_raw_next_text",
                                       "_raw_extra")

#: Names of the features in :data:`FEATURES`, in order.
FEATURE_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in FEATURES)
_BY_NAME: Final[dict[str, Feature]] = {f.name: f for f in FEATURES}


def feature(name: str) -> Feature:
    """Return the :class:`Feature` called ``name`` (``KeyError`` if unknown)."""
    return _BY_NAME[name]


def context_free(features: tuple[Feature, ...] = FEATURES) -> tuple[Feature, ...]:
    """The features that use only the turn itself (no dialogue context)."""
    return tuple(f for f in features if f.group != "context")


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------

def _similarity(a: pl.Expr, b: pl.Expr, scorer: Callable[..., float]) -> pl.Expr:
    """Row-wise string similarity in [0, 1] of two string columns; null if either is null.

    rapidfuzz's ``cpdist`` scores whole columns in C (no Python loop over rows).
    """

    def run(s: pl.Series) -> pl.Series:
        left = s.struct.field("a")
        right = s.struct.field("b")
        missing = (left.is_null() | right.is_null()).to_numpy()
        if len(s) == 0:
            return pl.Series(s.name, [], dtype=pl.Float64)
        scores = process.cpdist(
            left.fill_null("").to_list(),
            right.fill_null("").to_list(),
            scorer=scorer,
            dtype=np.float64,
            workers=1,
        )
        scores = np.where(missing, np.nan, scores / 100.0)
        return pl.Series(s.name, scores, dtype=pl.Float64, nan_to_null=True)

    return pl.struct(a.alias("a"), b.alias("b")).map_batches(
        run, return_dtype=pl.Float64, is_elementwise=True
    )


def _words(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.extract_all(_WORD_RE)


def _content_words(text: pl.Expr) -> pl.Expr:
    return _words(text).list.eval(
        pl.element().filter(~pl.element().is_in(list(STOPWORDS)))
    ).list.unique()


def _flag(expr: pl.Expr) -> pl.Expr:
    return expr.cast(pl.Float64)


def _explicit(expr: pl.Expr) -> pl.Expr:
    return (
        pl.when(expr == "positive").then(1.0).when(expr == "negative").then(-1.0)
        .when(expr.is_null()).then(0.0).otherwise(None)
    )


def _norm_text(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_lowercase().str.strip_chars()


def _check_columns(lf: pl.LazyFrame) -> None:
    schema = lf.collect_schema()
    missing = [c for c in TURN_SCHEMA if c not in schema]
    if missing:
        raise SchemaError(
            f"turns lack column(s) {', '.join(missing)}: expected the canonical frame "
            "(fpi.schema.TURN_SCHEMA, as fpi.ingest.read_traces returns)"
        )
    wrong = [c for c, dt in TURN_SCHEMA.items() if schema[c] != dt]
    if wrong:
        raise SchemaError(
            f"turns column(s) {', '.join(wrong)} have the wrong dtype: expected "
            "fpi.schema.TURN_SCHEMA (use fpi.schema.conform)"
        )


# ---------------------------------------------------------------------------
# Per-turn features
# ---------------------------------------------------------------------------

def _turn_prep(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Helper columns (normalised texts, content words, ...) later stages share."""
    asr, nlu = pl.col("asr"), pl.col("nlu")
    nbest = asr.struct.field("nbest")
    alts = nlu.struct.field("alternatives")
    slots = nlu.struct.field("slots")
    ents = pl.col("er").struct.field("entities")
    text = asr.struct.field("text")
    domain = nlu.struct.field("domain")
    alt_dom = alts.list.eval(pl.element().struct.field("domain"))
    return lf.with_columns(
        _t=_norm_text(text),
        _ru=_norm_text(nbest.list.get(1, null_on_oob=True).struct.field("text")),
        _cw=_content_words(text),
        _dom=domain,
        _alt_dom=alt_dom,
        _alt_int=alts.list.eval(pl.element().struct.field("intent")),
        _slot1=_norm_text(slots.list.get(0, null_on_oob=True).struct.field("value")),
        _res1=ents.list.get(0, null_on_oob=True).struct.field("resolved_id"),
    )


def _turn_exprs() -> dict[str, pl.Expr]:
    """The per-turn features (no lists exploded, no neighbours), by name; they read
    the helper columns of :func:`_turn_prep`."""
    asr = pl.col("asr")
    nlu = pl.col("nlu")
    er = pl.col("er")
    res = pl.col("result")
    nbest = asr.struct.field("nbest")
    conf_ru = nbest.list.get(1, null_on_oob=True).struct.field("confidence")
    conf_top = nbest.list.get(0, null_on_oob=True).struct.field("confidence")
    alts = nlu.struct.field("alternatives")
    alt_conf = alts.list.eval(pl.element().struct.field("confidence"))
    alt_dom = alts.list.eval(pl.element().struct.field("domain"))
    slots = nlu.struct.field("slots")
    slot_conf = slots.list.eval(pl.element().struct.field("confidence"))
    ents = er.struct.field("entities")
    ent_status = ents.list.eval(pl.element().struct.field("status"))
    ent_score = ents.list.eval(pl.element().struct.field("score"))
    wake_s = pl.col("wake").struct.field("score")
    wake_dd = pl.col("wake").struct.field("device_directed_score")
    text = asr.struct.field("text")
    n_words = _words(text).list.len()
    response = res.struct.field("response_text")
    domain = nlu.struct.field("domain")
    nlu_conf = nlu.struct.field("confidence")

    return dict(
        wake_detected=_flag(pl.col("wake").struct.field("detected")),
        wake_score=wake_s,
        wake_dd_score=wake_dd,
        wake_min_score=pl.min_horizontal(wake_s, wake_dd),
        device_type=pl.col("device").struct.field("type"),
        device_has_screen=_flag(pl.col("device").struct.field("has_screen")),
        asr_present=_flag(asr.is_not_null()),
        asr_confidence=asr.struct.field("confidence"),
        asr_nbest_n=nbest.list.len().cast(pl.Float64),
        asr_top2_margin=conf_top - conf_ru,
        asr_nbest_conf_sum=nbest.list.eval(pl.element().struct.field("confidence")).list.sum(),
        asr_runner_up_sim=_similarity(pl.col("_t"), pl.col("_ru"), fuzz.ratio),
        asr_runner_up_content_diff=pl.when(pl.col("_ru").is_not_null()).then(
            pl.col("_cw").list.set_symmetric_difference(_content_words(pl.col("_ru")))
            .list.len().cast(pl.Float64)
        ),
        asr_runner_up_keeps_slot=_similarity(pl.col("_slot1"), pl.col("_ru"), fuzz.partial_ratio),
        asr_n_words=n_words.cast(pl.Float64),
        asr_n_content_words=pl.col("_cw").list.len().cast(pl.Float64),
        asr_audio_ms=asr.struct.field("audio_ms"),
        asr_ms_per_word=asr.struct.field("audio_ms") / pl.max_horizontal(n_words, 1),
        asr_latency_ms=asr.struct.field("latency_ms"),
        device_locale=pl.col("device").struct.field("locale"),
        nlu_present=_flag(nlu.is_not_null()),
        nlu_domain=domain,
        nlu_intent=nlu.struct.field("intent"),
        nlu_confidence=nlu_conf,
        nlu_margin=nlu_conf - alt_conf.list.max().fill_null(0.0),
        nlu_n_alternatives=alts.list.len().cast(pl.Float64),
        nlu_alt_top_domain_differs=_flag(alt_dom.list.get(0, null_on_oob=True) != domain),
        nlu_alt_n_other_domains=pl.col("_alt_dom").list.set_difference(
            pl.concat_list(pl.col("_dom"))
        ).list.len().cast(pl.Float64),
        nlu_n_slots=slots.list.len().cast(pl.Float64),
        nlu_slot_conf_min=slot_conf.list.min(),
        nlu_slot_conf_mean=slot_conf.list.mean(),
        er_present=_flag(er.is_not_null() & (ents.list.len() > 0)),
        er_n_entities=ents.list.len().cast(pl.Float64),
        er_n_resolved=ent_status.list.eval((pl.element() == "resolved").sum()).list.first()
        .cast(pl.Float64),
        er_n_unresolved=ent_status.list.eval((pl.element() == "unresolved").sum()).list.first()
        .cast(pl.Float64),
        er_n_ambiguous=ent_status.list.eval((pl.element() == "ambiguous").sum()).list.first()
        .cast(pl.Float64),
        er_slots_without_entity=(slots.list.len().fill_null(0) - ents.list.len().fill_null(0))
        .cast(pl.Float64),
        er_score_min=ent_score.list.min(),
        er_score_mean=ent_score.list.mean(),
        er_latency_ms=er.struct.field("latency_ms"),
        result_present=_flag(res.is_not_null()),
        result_status=res.struct.field("status"),
        result_action_missing=pl.when(res.is_not_null()).then(
            _flag(res.struct.field("action").is_null())
        ),
        result_apology=_flag(response.str.contains(_APOLOGY_RE)),
        result_clarification=_flag(response.str.contains(_CLARIFY_RE)),
        result_cant=_flag(response.str.contains(_CANT_RE)),
        result_response_words=_words(response).list.len().cast(pl.Float64),
        result_latency_ms=res.struct.field("latency_ms"),
        barge_in=_flag(pl.col("feedback").struct.field("barge_in")),
        explicit_feedback=_explicit(pl.col("feedback").struct.field("explicit")),
    )


def _turn_features(lf: pl.LazyFrame) -> pl.LazyFrame:
    return _turn_prep(lf).with_columns(**_turn_exprs())


def _sum_over_items(lf: pl.LazyFrame, *, context: str, items: pl.Expr,
                    value: pl.Expr, stage: str, name: str) -> pl.LazyFrame:
    """Per turn, the sum of ``value`` over the items of a list field, as column ``name``.

    ``items`` is the list (named ``_item`` while exploded, so ``value`` reads
    ``pl.col("_item")``); ``context`` is a per-turn column ``value`` may compare with.
    An empty or missing list sums to 0; a turn whose ``stage`` is absent gets null
    (unknown, not zero). List items need the turn's own columns, which
    ``list.eval`` cannot see: hence explode, aggregate and join back.
    """
    sums = (
        lf.select("_row", context, items.alias("_item"))
        .filter(pl.col("_item").list.len() > 0)
        .explode("_item")
        .select("_row", value.alias("_v"))
        .group_by("_row")
        .agg(pl.col("_v").sum().alias(name))
    )
    return lf.join(sums, on="_row", how="left").with_columns(
        pl.when(pl.col(stage).is_not_null()).then(pl.col(name).fill_null(0.0)).alias(name)
    )


def _nbest_content_mass(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Confidence mass of the n-best alternatives whose content words differ from the top."""
    item = pl.col("_item")
    differs = pl.col("_cw").list.set_symmetric_difference(
        _content_words(item.struct.field("text"))
    ).list.len() > 0
    return _sum_over_items(
        lf, context="_cw", items=pl.col("asr").struct.field("nbest").list.slice(1),
        value=pl.when(differs).then(item.struct.field("confidence")).otherwise(0.0),
        stage="asr", name="asr_alt_content_mass",
    )


def _alt_other_domain_conf(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Total confidence of NLU alternatives in a domain other than the chosen one."""
    item = pl.col("_item")
    return _sum_over_items(
        lf, context="_dom", items=pl.col("nlu").struct.field("alternatives"),
        value=pl.when(item.struct.field("domain") != pl.col("_dom"))
        .then(item.struct.field("confidence")).otherwise(0.0),
        stage="nlu", name="nlu_alt_conf_other_domains",
    )


def _slot_entity_features(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Agreement between NLU slot values, ER mentions, resolved names, text and response."""
    slots = (
        lf.select("_row", "_t", pl.col("nlu").struct.field("slots").alias("_s"))
        .filter(pl.col("_s").list.len() > 0)
        .explode("_s")
        .select(
            "_row",
            pl.col("_s").struct.field("name").alias("_slot"),
            _norm_text(pl.col("_s").struct.field("value")).alias("_value"),
            _similarity(
                _norm_text(pl.col("_s").struct.field("value")), pl.col("_t"), fuzz.partial_ratio
            ).alias("_in_text"),
        )
    )
    slot_agg = slots.group_by("_row").agg(nlu_slot_in_text_min=pl.col("_in_text").min())
    # one value per slot name and turn, so the join below cannot fan out
    slot_values = slots.group_by("_row", "_slot").agg(pl.col("_value").sort().first())
    ents = (
        lf.select(
            "_row", "_t", _norm_text(pl.col("result").struct.field("response_text")).alias("_resp"),
            pl.col("er").struct.field("entities").alias("_e"),
        )
        .filter(pl.col("_e").list.len() > 0)
        .explode("_e")
        .select(
            "_row", "_t", "_resp",
            pl.col("_e").struct.field("slot").alias("_slot"),
            _norm_text(pl.col("_e").struct.field("mention")).alias("_mention"),
            _norm_text(pl.col("_e").struct.field("resolved_name")).alias("_resolved"),
        )
        .join(slot_values, on=["_row", "_slot"], how="left")
        .with_columns(
            _ms=_similarity(pl.col("_mention"), pl.col("_value"), fuzz.ratio),
            _mr=_similarity(pl.col("_mention"), pl.col("_resolved"), fuzz.token_set_ratio),
            _mt=_similarity(pl.col("_mention"), pl.col("_t"), fuzz.partial_ratio),
            _rr=_similarity(pl.col("_resolved"), pl.col("_resp"), fuzz.partial_ratio),
        )
        .group_by("_row")
        .agg(
            er_mention_slot_sim_min=pl.col("_ms").min(),
            er_mention_resolved_sim_min=pl.col("_mr").min(),
            er_mention_resolved_sim_mean=pl.col("_mr").mean(),
            er_mention_in_text_min=pl.col("_mt").min(),
            result_names_entity=pl.col("_rr").max(),
        )
    )
    return lf.join(slot_agg, on="_row", how="left").join(ents, on="_row", how="left")


def _context_features(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Features from the neighbouring turns of the same session.

    The frame is sorted once by session and turn (stable; the caller restores the row
    order), so a neighbour is the next or previous row when it has the same session:
    one sort instead of a window per column, the same values.
    """
    lf = lf.sort("session_id", "turn_index", maintain_order=True)
    sid = pl.col("session_id")
    same_next, same_prev = sid.shift(-1) == sid, sid.shift(1) == sid

    def nxt(expr: pl.Expr) -> pl.Expr:
        return pl.when(same_next).then(expr.shift(-1))

    def prv(expr: pl.Expr) -> pl.Expr:
        return pl.when(same_prev).then(expr.shift(1))

    intent = pl.col("nlu").struct.field("intent")
    status = pl.col("result").struct.field("status")
    # integer microseconds, scaled by a multiplication: Polars may turn a division by a
    # scalar into a reciprocal multiply for long columns only, so it rounds differently by batch
    ts = pl.col("timestamp").dt.epoch("us")
    lf = lf.with_columns(
        _next_t=nxt(pl.col("_t")),
        _prev_t=prv(pl.col("_t")),
        _next_cw=nxt(pl.col("_cw")),
        _next_intent=nxt(intent),
        _prev_intent=prv(intent),
        _next_dom=nxt(pl.col("_dom")),
        _next_slot1=nxt(pl.col("_slot1")),
        _next_res1=nxt(pl.col("_res1")),
        next_barge_in=_flag(nxt(pl.col("feedback").struct.field("barge_in"))),
        next_explicit_feedback=_explicit(nxt(pl.col("feedback").struct.field("explicit"))),
        next_asr_confidence=nxt(pl.col("asr").struct.field("confidence")),
        next_nlu_confidence=nxt(pl.col("nlu").struct.field("confidence")),
        next_result_ok=_flag(nxt(status) == "success"),
        next_wake_dd_score=nxt(pl.col("wake").struct.field("device_directed_score")),
        prev_result_ok=_flag(prv(status) == "success"),
        _gap_next=nxt(ts) - ts,
        _gap_prev=ts - prv(ts),
        position=(pl.col("turn_index").rank("ordinal").over("session_id") - 1).cast(pl.Float64),
        session_length=pl.len().over("session_id").cast(pl.Float64),
    )
    has_next = pl.col("_next_t").is_not_null()
    return lf.with_columns(
        next_is_stop=pl.when(has_next).then(_flag(pl.col("_next_t").str.contains(_STOP_RE))),
        next_text_sim=_similarity(pl.col("_t"), pl.col("_next_t"), fuzz.ratio),
        next_token_sim=_similarity(pl.col("_t"), pl.col("_next_t"), fuzz.token_set_ratio),
        next_sim_runner_up_gain=_similarity(pl.col("_ru"), pl.col("_next_t"), fuzz.ratio)
        - _similarity(pl.col("_t"), pl.col("_next_t"), fuzz.ratio),
        next_new_content_words=pl.when(has_next).then(
            pl.col("_next_cw").list.set_difference(pl.col("_cw")).list.len().cast(pl.Float64)
        ),
        next_same_intent=pl.when(pl.col("_next_intent").is_not_null() & intent.is_not_null())
        .then(_flag(pl.col("_next_intent") == intent)),
        next_intent_was_alternative=pl.when(pl.col("_next_intent").is_not_null()
                                            & pl.col("_alt_int").is_not_null())
        .then(_flag(pl.col("_alt_int").list.contains(pl.col("_next_intent")))),
        next_slot_value_sim=_similarity(pl.col("_slot1"), pl.col("_next_slot1"), fuzz.ratio),
        next_same_resolved=pl.when(
            pl.col("_res1").is_not_null() & pl.col("_next_res1").is_not_null()
        ).then(_flag(pl.col("_res1") == pl.col("_next_res1"))),
        next_same_domain=pl.when(pl.col("_next_dom").is_not_null() & pl.col("_dom").is_not_null())
        .then(_flag(pl.col("_next_dom") == pl.col("_dom"))),
        prev_text_sim=_similarity(pl.col("_t"), pl.col("_prev_t"), fuzz.ratio),
        prev_token_sim=_similarity(pl.col("_t"), pl.col("_prev_t"), fuzz.token_set_ratio),
        prev_same_intent=pl.when(pl.col("_prev_intent").is_not_null() & intent.is_not_null())
        .then(_flag(pl.col("_prev_intent") == intent)),
        gap_next_s=pl.col("_gap_next").cast(pl.Float64) * 1e-6,
        gap_prev_s=pl.col("_gap_prev").cast(pl.Float64) * 1e-6,
        turns_remaining=pl.col("session_length") - pl.col("position") - 1.0,
        is_last=_flag(pl.col("position") == pl.col("session_length") - 1.0),
    )


def profile_stages() -> list[tuple[str, Callable[[pl.LazyFrame], pl.LazyFrame]]]:
    """The steps of :func:`build_features`, for timing each on its own (benchmarks).

    The first step adds the row index and the shared helper columns; each later step
    reads that step's output: the per-turn expressions of one component group, or one
    of the stages that explode lists and join back, or the context window.
    """
    exprs = _turn_exprs()

    def group(g: str) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
        return lambda lf: lf.with_columns(
            **{k: v for k, v in exprs.items() if _BY_NAME[k].group == g})

    return [
        ("prep: row index, texts, content words", lambda lf: _turn_prep(
            lf.with_row_index("_row"))),
        *((f"{g}: per-turn expressions", group(g)) for g in COMPONENTS
          if any(_BY_NAME[k].group == g for k in exprs)),
        ("nlu: other-domain confidence (explode, join)", _alt_other_domain_conf),
        ("asr: n-best content mass (explode, join)", _nbest_content_mass),
        ("er/nlu/result: slots and entities (explode, join)", _slot_entity_features),
        ("context: neighbouring turns (window)", _context_features),
    ]


def feature_exprs_lazy(turns: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """The lazy query behind :func:`build_features` (for callers composing their own plan)."""
    lf = turns.lazy()
    _check_columns(lf)
    lf = lf.with_row_index("_row")
    lf = _turn_features(lf)
    lf = _alt_other_domain_conf(lf)
    lf = _nbest_content_mass(lf)
    lf = _slot_entity_features(lf)
    lf = _context_features(lf)
    out = [pl.col("session_id"), pl.col("turn_index")]
    for f in FEATURES:
        col = pl.col(f.name)
        out.append(col.cast(pl.String) if f.kind == "categorical" else col.cast(pl.Float64))
    # raw inputs of the features a bundle learns from the data (fpi.learned): the texts
    # its text models read and the trace's extra fields; not model columns themselves
    out += [pl.col("_t").alias("_raw_asr_text"),
            pl.col("result").struct.field("response_text").alias("_raw_response"),
            pl.col("_next_t").alias("_raw_next_text"), pl.col("extra").alias("_raw_extra")]
    return lf.sort("_row").select(out)


def build_features(turns: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Compute every feature of :data:`FEATURES` for each turn.

    Parameters
    ----------
    turns
        The canonical frame (:data:`fpi.schema.TURN_SCHEMA`), eager or lazy. Sessions
        must be whole: context features read the neighbouring turns of a session.

    Returns
    -------
    polars.DataFrame
        ``session_id``, ``turn_index`` and one column per feature (Float64 for numeric,
        String for categorical), in the input's row order.
    """
    if isinstance(turns, pl.DataFrame):
        # One chunk per column: Polars' list set operations have panicked on list
        # columns whose chunks are not aligned (seen on frames assembled from
        # streamed batches). Rechunking is a no-op for an already single-chunk frame.
        turns = turns.rechunk()
    return feature_exprs_lazy(turns).collect()
