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
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

from fpi.errors import SchemaError
from fpi.schema import COMPONENTS, TURN_SCHEMA

FeatureKind = Literal["numeric", "categorical"]
#: The frame a feature's expression reads: the turn itself; one row per item of a list
#: field (aggregated per turn); or the session, sorted, with its neighbouring turns.
Over = Literal["turn", "alternatives", "nbest", "slots", "entities", "context"]


@dataclass(frozen=True)
class Feature:
    """One model input: its column name, component group and kind.

    Features fpi computes also carry their definition: ``expr`` evaluated ``over`` one
    frame (see :data:`Over`; over a list field's items it is an aggregation per turn).
    Features a bundle learns from the data (:mod:`fpi.model.learned`) have none. The
    definition is not part of a feature's identity (equality, hash).
    """

    name: str
    group: str
    kind: FeatureKind = "numeric"
    expr: pl.Expr | None = field(default=None, compare=False, repr=False)
    over: Over = field(default="turn", compare=False, repr=False)

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
# Building blocks
# ---------------------------------------------------------------------------

def _similarity(a: pl.Expr, b: pl.Expr, scorer: Callable[..., float],
                distinct: bool = True) -> pl.Expr:
    """Row-wise string similarity in [0, 1] of two string columns; null if either is null.

    rapidfuzz's ``cpdist`` scores whole columns in C (no Python loop over rows). With
    ``distinct``, each distinct pair once: a batch repeats most pairs of a turn's own
    strings (an entity's mention and its slot value, a text and its runner-up), and a
    score depends on the pair only; pairs of a turn and its next turn rarely repeat.
    """

    def run(s: pl.Series) -> pl.Series:
        both = (s.struct.field("a").is_not_null() & s.struct.field("b").is_not_null())
        scores = np.full(len(s), np.nan)
        if both.any():
            # only the pairs with both strings are scored (a turn without a next turn,
            # a runner-up, a slot value has nothing to compare)
            pairs = s.filter(both).struct.unnest()
            scored = pairs.unique(maintain_order=True) if distinct else pairs
            values = process.cpdist(scored["a"].to_list(), scored["b"].to_list(),
                                    scorer=scorer, dtype=np.float64, workers=1) / 100.0
            if distinct:
                at = pairs.join(scored.with_row_index("_i"), on=["a", "b"], how="left",
                                maintain_order="left")["_i"]
                values = values[at.to_numpy()]
            scores[both.to_numpy()] = values
        return pl.Series(s.name, scores, dtype=pl.Float64, nan_to_null=True)

    return pl.struct(a.alias("a"), b.alias("b")).map_batches(
        run, return_dtype=pl.Float64, is_elementwise=True
    )


def _words(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.extract_all(_WORD_RE)


def _n_words(text: pl.Expr) -> pl.Expr:
    """How many words :func:`_words` finds (counted, no list built)."""
    return text.str.to_lowercase().str.count_matches(_WORD_RE)


def _content_words(text: pl.Expr) -> pl.Expr:
    return _words(text).list.eval(
        pl.element().filter(~pl.element().is_in(list(STOPWORDS)))
    ).list.unique()


def _distinct(lf: pl.LazyFrame, key: pl.Expr, name: str, **exprs: pl.Expr) -> pl.LazyFrame:
    """One row per distinct value of ``key`` (column ``name``) with ``exprs`` of it: each
    computed once per distinct value (a batch repeats most texts, and regular expressions
    on them are the cost), to join back on ``name`` with :func:`_join_distinct`."""
    return lf.select(key.alias(name)).unique().with_columns(**exprs)


def _join_distinct(lf: pl.LazyFrame, table: pl.LazyFrame, name: str) -> pl.LazyFrame:
    return lf.join(table, on=name, how="left", nulls_equal=True, maintain_order="left")


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
# The frames features read
# ---------------------------------------------------------------------------

_ASR, _NLU, _ER, _RES = pl.col("asr"), pl.col("nlu"), pl.col("er"), pl.col("result")
_WAKE, _DEVICE, _FEEDBACK = pl.col("wake"), pl.col("device"), pl.col("feedback")
_NBEST = _ASR.struct.field("nbest")
_ALTS = _NLU.struct.field("alternatives")
_SLOTS = _NLU.struct.field("slots")
_ENTS = _ER.struct.field("entities")
_ITEM = pl.col("_item")


def _turn_prep(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Helper columns (normalised texts, content words, ...) later stages share."""
    text = _ASR.struct.field("text")
    ru = _norm_text(_NBEST.list.get(1, null_on_oob=True).struct.field("text"))
    response = _RES.struct.field("response_text")
    # the tables read the input frame, not each other's joins (each join would otherwise be
    # computed again for every table after it)
    texts = _distinct(lf, text, "_k_text", _cw=_content_words(pl.col("_k_text")),
                      _n_words=_n_words(pl.col("_k_text")))
    runner_up = _distinct(lf, ru, "_ru", _ru_cw=_content_words(pl.col("_ru")))
    resp = pl.col("_k_resp")
    responses = _distinct(lf, response, "_k_resp", _apology=resp.str.contains(_APOLOGY_RE),
                          _clarify=resp.str.contains(_CLARIFY_RE),
                          _cant=resp.str.contains(_CANT_RE), _resp_words=_n_words(resp))
    lf = lf.with_columns(
        _t=_norm_text(text),
        _ru=ru,
        _dom=_NLU.struct.field("domain"),
        _alt_dom=_ALTS.list.eval(pl.element().struct.field("domain")),
        _alt_int=_ALTS.list.eval(pl.element().struct.field("intent")),
        _slot1=_norm_text(_SLOTS.list.get(0, null_on_oob=True).struct.field("value")),
        _res1=_ENTS.list.get(0, null_on_oob=True).struct.field("resolved_id"),
        _k_text=text, _k_resp=response,
    )
    lf = _join_distinct(lf, texts, "_k_text")
    lf = _join_distinct(lf, runner_up, "_ru")
    return _join_distinct(lf, responses, "_k_resp").drop("_k_text", "_k_resp")


def _explode(lf: pl.LazyFrame, items: pl.Expr, *context: str) -> pl.LazyFrame:
    """One row per item of the list ``items`` (as ``_item``), with ``_row`` and ``context``.

    List items need the turn's own columns, which ``list.eval`` cannot see: hence
    explode, aggregate per ``_row`` and join back. Turns without items have no row.
    """
    return (lf.select("_row", *context, items.alias("_item"))
            .filter(pl.col("_item").list.len() > 0)
            .explode("_item"))


def _alternative_items(lf: pl.LazyFrame) -> pl.LazyFrame:
    return _explode(lf, _ALTS, "_dom")


def _nbest_items(lf: pl.LazyFrame) -> pl.LazyFrame:
    items = _explode(lf, _NBEST.list.slice(1), "_cw")
    item_text = _ITEM.struct.field("text")
    items = items.with_columns(item_text.alias("_k_item"))
    words = _distinct(items, item_text, "_k_item", _item_cw=_content_words(pl.col("_k_item")))
    return _join_distinct(items, words, "_k_item").drop("_k_item")


def _slot_items(lf: pl.LazyFrame) -> pl.LazyFrame:
    """NLU slots: name, normalised value, and how well the value is found in the text."""
    value = _norm_text(_ITEM.struct.field("value"))
    return _explode(lf, _SLOTS, "_t").select(
        "_row",
        _ITEM.struct.field("name").alias("_slot"),
        value.alias("_value"),
        _similarity(value, pl.col("_t"), fuzz.partial_ratio).alias("_in_text"),
    )


def _entity_items(lf: pl.LazyFrame) -> pl.LazyFrame:
    """ER entities and their agreement with the slot value, text, resolved name, response
    and the result's action."""
    # one value per slot name and turn, so the join below cannot fan out
    slot_values = _slot_items(lf).group_by("_row", "_slot").agg(pl.col("_value").sort().first())
    lf = lf.with_columns(_resp=_norm_text(_RES.struct.field("response_text")),
                         _act=_norm_text(_RES.struct.field("action")))
    return (
        _explode(lf, _ENTS, "_t", "_resp", "_act")
        .select(
            "_row", "_t", "_resp", "_act",
            _ITEM.struct.field("slot").alias("_slot"),
            _norm_text(_ITEM.struct.field("mention")).alias("_mention"),
            _norm_text(_ITEM.struct.field("resolved_name")).alias("_resolved"),
            _norm_text(_ITEM.struct.field("resolved_id")).alias("_resolved_id"),
        )
        .join(slot_values, on=["_row", "_slot"], how="left")
        .with_columns(
            _ms=_similarity(pl.col("_mention"), pl.col("_value"), fuzz.ratio),
            _mr=_similarity(pl.col("_mention"), pl.col("_resolved"), fuzz.token_set_ratio),
            _mt=_similarity(pl.col("_mention"), pl.col("_t"), fuzz.partial_ratio),
            _rr=_similarity(pl.col("_resolved"), pl.col("_resp"), fuzz.partial_ratio),
            _ar=_action_names(pl.col("_act"), pl.col("_resolved_id"), pl.col("_resolved")),
        )
    )


def _action_names(action: pl.Expr, resolved_id: pl.Expr, resolved: pl.Expr) -> pl.Expr:
    """1.0 if the logged action names the entity ER resolved (its id or its name, as a
    substring), 0.0 if it names neither; null without an action or a resolved entity.

    Whatever the action's format, a service that acted on another entity than the one
    ER handed it is a result failure, even when the response only says "OK."."""
    names_id = action.str.contains(resolved_id, literal=True)
    names_it = pl.when(resolved.str.len_chars() > 0).then(
        action.str.contains(resolved, literal=True)).otherwise(False)
    return pl.when(action.is_not_null() & resolved_id.is_not_null()
                   & (resolved_id.str.len_chars() > 0)).then(_flag(names_id | names_it))


_SID = pl.col("session_id")


def _next(expr: pl.Expr) -> pl.Expr:
    """``expr`` on the next turn of the session (null on its last turn); needs the
    frame of :func:`_context_frame`."""
    return pl.when(_SID.shift(-1) == _SID).then(expr.shift(-1))


def _prev(expr: pl.Expr) -> pl.Expr:
    """``expr`` on the previous turn of the session (null on its first turn)."""
    return pl.when(_SID.shift(1) == _SID).then(expr.shift(1))


def _context_frame(lf: pl.LazyFrame, in_order: bool = False) -> pl.LazyFrame:
    """The frame sorted by session and turn, with the neighbours' helper columns.

    Sorted once (stable; the caller restores the row order), so a neighbour is the next
    or previous row when it has the same session: one sort instead of a window per
    column, the same values. ``in_order``: the frame is already in that order.
    """
    intent = _NLU.struct.field("intent")
    if not in_order:
        lf = lf.sort("session_id", "turn_index", maintain_order=True)
    return lf.with_columns(
        _next_t=_next(pl.col("_t")),
        _next_cw=_next(pl.col("_cw")),
        _next_intent=_next(intent),
        _prev_intent=_prev(intent),
        _next_dom=_next(pl.col("_dom")),
        _next_slot1=_next(pl.col("_slot1")),
        _next_res1=_next(pl.col("_res1")),
        _pos=(pl.col("turn_index").rank("ordinal").over("session_id") - 1).cast(pl.Float64),
        _len=pl.len().over("session_id").cast(pl.Float64),
    )


# ---------------------------------------------------------------------------
# The features, by component, in model column order: name, kind, definition
# ---------------------------------------------------------------------------

def _n(name: str, group: str, expr: pl.Expr, over: Over = "turn") -> Feature:
    return Feature(name, group, "numeric", expr, over)


def _c(name: str, group: str, expr: pl.Expr) -> Feature:
    return Feature(name, group, "categorical", expr)


def _count(items: pl.Expr) -> pl.Expr:
    return items.list.len().cast(pl.Float64)


def _n_status(status: str) -> pl.Expr:
    statuses = _ENTS.list.eval(pl.element().struct.field("status"))
    return statuses.list.eval((pl.element() == status).sum()).list.first().cast(pl.Float64)


_WAKE_SCORE = _WAKE.struct.field("score")
_WAKE_DD = _WAKE.struct.field("device_directed_score")

_WAKE_FEATURES = (
    _n("wake_detected", "wake", _flag(_WAKE.struct.field("detected"))),
    _n("wake_score", "wake", _WAKE_SCORE),
    _n("wake_dd_score", "wake", _WAKE_DD),
    _n("wake_min_score", "wake", pl.min_horizontal(_WAKE_SCORE, _WAKE_DD)),
    _c("device_type", "wake", _DEVICE.struct.field("type")),
    _n("device_has_screen", "wake", _flag(_DEVICE.struct.field("has_screen"))),
)

_N_WORDS = pl.col("_n_words")
_NBEST_CONF = _NBEST.list.eval(pl.element().struct.field("confidence"))
# an n-best alternative (over "nbest") whose content words differ from the top's
_ALT_DIFFERS = pl.col("_cw").list.set_symmetric_difference(pl.col("_item_cw")).list.len() > 0

_ASR_FEATURES = (
    _n("asr_present", "asr", _flag(_ASR.is_not_null())),
    _n("asr_confidence", "asr", _ASR.struct.field("confidence")),
    _n("asr_nbest_n", "asr", _count(_NBEST)),
    _n("asr_top2_margin", "asr",
       _NBEST.list.get(0, null_on_oob=True).struct.field("confidence")
       - _NBEST.list.get(1, null_on_oob=True).struct.field("confidence")),
    _n("asr_nbest_conf_sum", "asr", _NBEST_CONF.list.sum()),
    _n("asr_runner_up_sim", "asr", _similarity(pl.col("_t"), pl.col("_ru"), fuzz.ratio)),
    _n("asr_runner_up_content_diff", "asr", pl.when(pl.col("_ru").is_not_null()).then(
        _count(pl.col("_cw").list.set_symmetric_difference(pl.col("_ru_cw"))))),
    # confidence mass of the n-best alternatives whose content words differ from the top
    _n("asr_alt_content_mass", "asr", pl.when(_ALT_DIFFERS)
       .then(_ITEM.struct.field("confidence")).otherwise(0.0).sum(), over="nbest"),
    # how many of them: the same signal where the n-best is logged without confidences
    _n("asr_alt_content_n", "asr", _flag(_ALT_DIFFERS).sum(), over="nbest"),
    _n("asr_runner_up_keeps_slot", "asr",
       _similarity(pl.col("_slot1"), pl.col("_ru"), fuzz.partial_ratio)),
    _n("asr_n_words", "asr", _N_WORDS.cast(pl.Float64)),
    _n("asr_n_content_words", "asr", _count(pl.col("_cw"))),
    _n("asr_audio_ms", "asr", _ASR.struct.field("audio_ms")),
    _n("asr_ms_per_word", "asr",
       _ASR.struct.field("audio_ms") / pl.max_horizontal(_N_WORDS, 1)),
    _n("asr_latency_ms", "asr", _ASR.struct.field("latency_ms")),
    _c("device_locale", "asr", _DEVICE.struct.field("locale")),
)

_NLU_CONF = _NLU.struct.field("confidence")
_SLOT_CONF = _SLOTS.list.eval(pl.element().struct.field("confidence"))

_NLU_FEATURES = (
    _n("nlu_present", "nlu", _flag(_NLU.is_not_null())),
    _c("nlu_domain", "nlu", _NLU.struct.field("domain")),
    _c("nlu_intent", "nlu", _NLU.struct.field("intent")),
    _n("nlu_confidence", "nlu", _NLU_CONF),
    _n("nlu_margin", "nlu", _NLU_CONF - _ALTS.list.eval(pl.element().struct.field("confidence"))
       .list.max().fill_null(0.0)),
    _n("nlu_n_alternatives", "nlu", _count(_ALTS)),
    _n("nlu_alt_top_domain_differs", "nlu", _flag(
        _ALTS.list.eval(pl.element().struct.field("domain")).list.get(0, null_on_oob=True)
        != _NLU.struct.field("domain"))),
    _n("nlu_alt_n_other_domains", "nlu", _count(
        pl.col("_alt_dom").list.set_difference(pl.concat_list(pl.col("_dom"))))),
    # total confidence of the alternatives in a domain other than the chosen one
    _n("nlu_alt_conf_other_domains", "nlu", pl.when(_ITEM.struct.field("domain") != pl.col("_dom"))
       .then(_ITEM.struct.field("confidence")).otherwise(0.0).sum(), over="alternatives"),
    _n("nlu_n_slots", "nlu", _count(_SLOTS)),
    _n("nlu_slot_conf_min", "nlu", _SLOT_CONF.list.min()),
    _n("nlu_slot_conf_mean", "nlu", _SLOT_CONF.list.mean()),
    _n("nlu_slot_in_text_min", "nlu", pl.col("_in_text").min(), over="slots"),
)

_ENT_SCORE = _ENTS.list.eval(pl.element().struct.field("score"))

_ER_FEATURES = (
    _n("er_present", "er", _flag(_ER.is_not_null() & (_ENTS.list.len() > 0))),
    _n("er_n_entities", "er", _count(_ENTS)),
    _n("er_n_resolved", "er", _n_status("resolved")),
    _n("er_n_unresolved", "er", _n_status("unresolved")),
    _n("er_n_ambiguous", "er", _n_status("ambiguous")),
    _n("er_slots_without_entity", "er",
       (_SLOTS.list.len().fill_null(0) - _ENTS.list.len().fill_null(0)).cast(pl.Float64)),
    _n("er_score_min", "er", _ENT_SCORE.list.min()),
    _n("er_score_mean", "er", _ENT_SCORE.list.mean()),
    _n("er_mention_slot_sim_min", "er", pl.col("_ms").min(), over="entities"),
    _n("er_mention_resolved_sim_min", "er", pl.col("_mr").min(), over="entities"),
    _n("er_mention_resolved_sim_mean", "er", pl.col("_mr").mean(), over="entities"),
    _n("er_mention_in_text_min", "er", pl.col("_mt").min(), over="entities"),
    _n("er_latency_ms", "er", _ER.struct.field("latency_ms")),
)

_RESPONSE = _RES.struct.field("response_text")

_RESULT_FEATURES = (
    _n("result_present", "result", _flag(_RES.is_not_null())),
    _c("result_status", "result", _RES.struct.field("status")),
    _n("result_action_missing", "result", pl.when(_RES.is_not_null()).then(
        _flag(_RES.struct.field("action").is_null()))),
    # the response cues and word count come from the helper columns (once per distinct text)
    _n("result_apology", "result", _flag(pl.col("_apology"))),
    _n("result_clarification", "result", _flag(pl.col("_clarify"))),
    _n("result_cant", "result", _flag(pl.col("_cant"))),
    _n("result_response_words", "result", pl.col("_resp_words").cast(pl.Float64)),
    _n("result_names_entity", "result", pl.col("_rr").max(), over="entities"),
    # the action names the entity ER resolved (the response may not: "OK.")
    _n("result_action_names_resolved", "result", pl.col("_ar").max(), over="entities"),
    _n("result_latency_ms", "result", _RES.struct.field("latency_ms")),
)


def _both(a: str, b: pl.Expr | str, expr: pl.Expr) -> pl.Expr:
    """``expr`` where columns ``a`` and ``b`` are both known, else null."""
    b = pl.col(b) if isinstance(b, str) else b
    return pl.when(pl.col(a).is_not_null() & b.is_not_null()).then(expr)


_INTENT = _NLU.struct.field("intent")
_STATUS = _RES.struct.field("status")
# integer microseconds, scaled by a multiplication: Polars may turn a division by a
# scalar into a reciprocal multiply for long columns only, so it rounds differently by batch
_TS = pl.col("timestamp").dt.epoch("us")
_HAS_NEXT = pl.col("_next_t").is_not_null()
_NEXT_TEXT_SIM = _similarity(pl.col("_t"), pl.col("_next_t"), fuzz.ratio, distinct=False)
_NEXT_TOKEN_SIM = _similarity(pl.col("_t"), pl.col("_next_t"), fuzz.token_set_ratio,
                              distinct=False)

_CONTEXT_FEATURES = (
    _n("barge_in", "context", _flag(_FEEDBACK.struct.field("barge_in"))),
    _n("explicit_feedback", "context", _explicit(_FEEDBACK.struct.field("explicit"))),
    # from the neighbouring turns of the session
    *(_n(name, "context", expr, over="context") for name, expr in (
        ("next_barge_in", _flag(_next(_FEEDBACK.struct.field("barge_in")))),
        ("next_explicit_feedback", _explicit(_next(_FEEDBACK.struct.field("explicit")))),
        ("next_is_stop", pl.when(_HAS_NEXT).then(_flag(pl.col("_next_t").str.contains(_STOP_RE)))),
        ("next_text_sim", _NEXT_TEXT_SIM),
        ("next_token_sim", _NEXT_TOKEN_SIM),
        ("next_sim_runner_up_gain",
         _similarity(pl.col("_ru"), pl.col("_next_t"), fuzz.ratio, distinct=False)
         - _NEXT_TEXT_SIM),
        ("next_new_content_words", pl.when(_HAS_NEXT).then(
            _count(pl.col("_next_cw").list.set_difference(pl.col("_cw"))))),
        ("next_same_intent", _both("_next_intent", _INTENT,
                                   _flag(pl.col("_next_intent") == _INTENT))),
        ("next_same_domain", _both("_next_dom", "_dom",
                                   _flag(pl.col("_next_dom") == pl.col("_dom")))),
        ("next_intent_was_alternative", _both("_next_intent", "_alt_int", _flag(
            pl.col("_alt_int").list.contains(pl.col("_next_intent"))))),
        ("next_slot_value_sim", _similarity(pl.col("_slot1"), pl.col("_next_slot1"), fuzz.ratio)),
        ("next_same_resolved", _both("_res1", "_next_res1",
                                     _flag(pl.col("_res1") == pl.col("_next_res1")))),
        ("next_asr_confidence", _next(_ASR.struct.field("confidence"))),
        ("next_nlu_confidence", _next(_NLU.struct.field("confidence"))),
        ("next_result_ok", _flag(_next(_STATUS) == "success")),
        ("next_wake_dd_score", _next(_WAKE_DD)),
        ("gap_next_s", (_next(_TS) - _TS).cast(pl.Float64) * 1e-6),
        # both scores are symmetric: the previous turn's is the previous row's next-turn score
        ("prev_text_sim", _prev(_NEXT_TEXT_SIM)),
        ("prev_token_sim", _prev(_NEXT_TOKEN_SIM)),
        ("prev_same_intent", _both("_prev_intent", _INTENT,
                                   _flag(pl.col("_prev_intent") == _INTENT))),
        ("prev_result_ok", _flag(_prev(_STATUS) == "success")),
        ("gap_prev_s", (_TS - _prev(_TS)).cast(pl.Float64) * 1e-6),
        ("position", pl.col("_pos")),
        ("session_length", pl.col("_len")),
        ("turns_remaining", pl.col("_len") - pl.col("_pos") - 1.0),
        ("is_last", _flag(pl.col("_pos") == pl.col("_len") - 1.0)),
    )),
)

#: Every feature, in model column order.
FEATURES: Final[tuple[Feature, ...]] = (_WAKE_FEATURES + _ASR_FEATURES + _NLU_FEATURES
                                        + _ER_FEATURES + _RESULT_FEATURES + _CONTEXT_FEATURES)

#: Raw columns :func:`build_features` passes through after the features: the inputs of
#: the features a bundle learns from the data (:mod:`fpi.model.learned`,
#: :mod:`fpi.model.vocab`: the first ER entity's mention and resolved id).
RAW_COLUMNS: Final[tuple[str, ...]] = ("_raw_asr_text", "_raw_response", "_raw_next_text",
                                       "_raw_extra", "_raw_mention", "_raw_resolved")

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
# Computing them
# ---------------------------------------------------------------------------

def _exprs(over: Over, group: str | None = None) -> dict[str, pl.Expr]:
    """The definitions of the features ``over`` one frame (of one ``group``), by name."""
    return {f.name: f.expr for f in FEATURES
            if f.over == over and f.expr is not None and group in (None, f.group)}


@dataclass(frozen=True)
class _ItemStage:
    """Features over the items of one list field: explode, aggregate per turn, join back."""

    over: Over
    items: Callable[[pl.LazyFrame], pl.LazyFrame]
    #: a sum over no items is 0 for a turn that has this stage, null (unknown) without it
    zero_when: str | None = None

    def __call__(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        exprs = _exprs(self.over)
        per_turn = self.items(lf).group_by("_row").agg(**exprs)
        lf = lf.join(per_turn, on="_row", how="left")
        if self.zero_when is None:
            return lf
        present = pl.col(self.zero_when).is_not_null()
        return lf.with_columns(pl.when(present).then(pl.col(name).fill_null(0.0)).alias(name)
                               for name in exprs)


_ITEM_STAGES: Final = (
    _ItemStage("alternatives", _alternative_items, zero_when="nlu"),
    _ItemStage("nbest", _nbest_items, zero_when="asr"),
    _ItemStage("slots", _slot_items),
    _ItemStage("entities", _entity_items),
)


def _context_features(lf: pl.LazyFrame, in_order: bool = False) -> pl.LazyFrame:
    return _context_frame(lf, in_order).with_columns(**_exprs("context"))


def _in_session_order(frame: pl.DataFrame) -> bool:
    """Whether ``frame`` is sorted by session and turn (a sorted sort changes nothing)."""
    sid, turn = pl.col("session_id"), pl.col("turn_index")
    later = (sid.shift(1) < sid) | ((sid.shift(1) == sid) & (turn.shift(1) <= turn))
    return bool(frame.select(later.slice(1).all()).item())


def _groups(over: Over) -> str:
    return "/".join(dict.fromkeys(_BY_NAME[name].group for name in _exprs(over)))


def profile_stages() -> list[tuple[str, Callable[[pl.LazyFrame], pl.LazyFrame]]]:
    """The steps of :func:`build_features`, for timing each on its own (benchmarks).

    The first step adds the row index and the shared helper columns; each later step
    reads that step's output: the per-turn expressions of one component group, or one
    of the stages that explode a list field and join back, or the context window.
    """

    def group(g: str) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
        return lambda lf: lf.with_columns(**_exprs("turn", g))

    return [
        ("prep: row index, texts, content words", lambda lf: _turn_prep(
            lf.with_row_index("_row"))),
        *((f"{g}: per-turn expressions", group(g)) for g in COMPONENTS if _exprs("turn", g)),
        *((f"{_groups(s.over)}: {s.over} (explode, join)", s) for s in _ITEM_STAGES),
        ("context: neighbouring turns (window)", _context_features),
    ]


def _prep(lf: pl.LazyFrame) -> pl.LazyFrame:
    return _turn_prep(lf.with_row_index("_row"))


def _turn_features(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.with_columns(**_exprs("turn"))


def _output(lf: pl.LazyFrame) -> pl.LazyFrame:
    """The features in model column order (and the raw columns), in the input's row order."""
    out = [pl.col("session_id"), pl.col("turn_index")]
    for f in FEATURES:
        col = pl.col(f.name)
        out.append(col.cast(pl.String) if f.kind == "categorical" else col.cast(pl.Float64))
    # raw inputs of the features a bundle learns from the data (fpi.model.learned): the texts
    # its text models read and the trace's extra fields; not model columns themselves
    out += [pl.col("_t").alias("_raw_asr_text"),
            pl.col("result").struct.field("response_text").alias("_raw_response"),
            pl.col("_next_t").alias("_raw_next_text"), pl.col("extra").alias("_raw_extra"),
            _norm_text(_ENTS.list.get(0, null_on_oob=True).struct.field("mention"))
            .alias("_raw_mention"), pl.col("_res1").alias("_raw_resolved")]
    return lf.sort("_row").select(out)


#: The steps of the features query, in order; each reads the frame the step before made.
_STEPS: Final[tuple[Callable[[pl.LazyFrame], pl.LazyFrame], ...]] = (
    _prep, _turn_features, *_ITEM_STAGES, _context_features, _output)


def feature_exprs_lazy(turns: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """The lazy query behind :func:`build_features` (for callers composing their own plan).

    Collected with ``engine=ENGINE`` it gives :func:`build_features`' values; Polars'
    streaming engine may add a turn's n-best confidences in another order (a difference
    in the last bit of ``asr_alt_content_mass``)."""
    lf = turns.lazy()
    _check_columns(lf)
    for step in _STEPS:
        lf = step(lf)
    return lf


#: The Polars engine :func:`build_features` collects with. The in-memory engine computes
#: the same values as the streaming one (Polars 2's default) for about 40% less CPU on
#: this query (many small expressions over one batch that fits in memory).
ENGINE: Final = "in-memory"


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
    # One chunk per column: Polars' list set operations have panicked on list columns
    # whose chunks are not aligned (seen on frames assembled from streamed batches).
    # Rechunking is a no-op for an already single-chunk frame.
    _check_columns(turns.lazy())
    frame = (turns.rechunk() if isinstance(turns, pl.DataFrame)
             else turns.collect(engine=ENGINE).rechunk())
    # step by step: the same values as the one query of feature_exprs_lazy, for less CPU
    # (its joins read shared frames that the optimiser would partly compute twice)
    for step in _STEPS:
        lf = (_context_features(frame.lazy(), _in_session_order(frame))
              if step is _context_features else step(frame.lazy()))
        frame = lf.collect(engine=ENGINE).rechunk()
    return frame
