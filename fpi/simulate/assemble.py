"""Turn the engine's integer columns into a canonical frame (``fpi.schema.TURN_SCHEMA``).

Strings are made column-wise with Polars (template and mention tables gathered
by id, ``{e}``/``{x}`` replaced), nested blocks are assembled as Arrow struct and
list arrays from padded numpy matrices, so there is no per-row Python here.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from fpi.schema import CLASSES, TURN_SCHEMA
from fpi.simulate import engine, world
from fpi.simulate.styles import (
    STYLES,
    AssistantStyle,
    ConfidenceLog,
    response_table,
    turn_uniforms,
)

_CLASS_ARR = np.array(CLASSES, dtype=object)
#: The engine's per-turn columns (:func:`fpi.simulate.engine.run_batch`).
Columns = dict[str, np.ndarray]

#: Unknown extra fields some clients log (kept by ingest in ``extra``).
_EXTRAS: tuple[str | None, ...] = (
    None,
    '{"asr.model_version":"am-2026.10","client.network":"wifi"}',
    '{"asr.model_version":"am-2026.11","client.network":"wifi"}',
    '{"asr.model_version":"am-2026.11","client.network":"cellular"}',
)


def _render(template: np.ndarray, mention: np.ndarray, language: str = "en") -> pl.Series:
    """Text of (template id, mention id) pairs; mention -1 leaves the slot empty."""
    tables = world.tables(language)
    templates = pl.Series(tables.tpl_text, dtype=pl.String)
    mentions = pl.Series([*tables.men_text, ""], dtype=pl.String)
    mention = np.where(mention >= 0, mention, len(tables.men_text))
    frame = pl.DataFrame({"t": templates.gather(template), "m": mentions.gather(mention)})
    return frame.select(
        pl.col("t")
        .str.replace("{e}", pl.col("m"), literal=True)
        .str.replace_all("  ", " ", literal=True)
        .str.strip_chars()
    ).to_series()


def _strings(values: tuple[str, ...], ids: np.ndarray) -> pa.Array:
    """Gather ``values[ids]`` as an Arrow string array; id -1 gives null."""
    table = pl.Series([*values, None], dtype=pl.String)
    taken = table.gather(np.where(ids >= 0, ids, len(values)))
    return taken.to_arrow().cast(pa.string())


def _list(values: pa.StructArray, valid: np.ndarray, logged: bool = True) -> pa.ListArray:
    """A list column from row-major padded items ``values`` (n*w) kept where ``valid`` (n, w);
    all null when the field is not ``logged``."""
    if not logged:
        valid = np.zeros_like(valid)
    flat_valid = valid.reshape(-1)
    kept = values.filter(pa.array(flat_valid))
    counts = valid.sum(axis=1)
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    mask = None if logged else pa.array(np.ones(len(counts), dtype=bool))
    return pa.ListArray.from_arrays(pa.array(offsets), kept, mask=mask)


def _struct(fields: dict[str, pa.Array], present: np.ndarray | None = None) -> pa.StructArray:
    mask = None if present is None else pa.array(~present)
    return pa.StructArray.from_arrays(list(fields.values()), names=list(fields), mask=mask)


def _round(x: np.ndarray, nd: int = 3) -> np.ndarray:
    return np.round(np.asarray(x, dtype=np.float64), nd)


def _confidence(values: np.ndarray, log: ConfidenceLog) -> pa.Array:
    """A confidence as the style logs it in the spec's field: recalibrated and quantised
    on the unit scale; null when the style logs another scale (as an extra field)."""
    if log.scale != "unit":
        return pa.nulls(len(values), pa.float64())
    x = log.calibrate(values)
    if log.step:
        x = np.round(x / log.step) * log.step
    return pa.array(_round(x))


def _latency(values: np.ndarray, style: AssistantStyle) -> pa.Array:
    """Milliseconds, or null where the style's clients do not log latencies."""
    if not style.log_latency:
        return pa.nulls(len(values), pa.float64())
    return pa.array(np.round(values))


def _scale_extra(values: np.ndarray, log: ConfidenceLog, stage: str) -> pl.Series | None:
    """The JSON member (``"asr.score":87``) a style logs off the unit scale, or None."""
    if log.scale == "percent":
        name, text = "score", pl.Series(np.round(100 * log.calibrate(values)).astype(np.int64))
    elif log.scale == "logit":
        name, text = "logit", pl.Series(np.round(log.log_odds(values), 2))
    else:
        return None
    member = pl.concat_str(pl.lit(f'"{stage}.{name}":'), text.cast(pl.String))
    return pl.select(member).to_series()


def _merge_extra(extra: pa.Array, member: pl.Series | None) -> pa.Array:
    """Add one JSON member to every row's extra object (creating it where null)."""
    if member is None:
        return extra
    old = pl.Series(extra, dtype=pl.String)
    merged = pl.select(
        pl.when(old.is_null())
        .then(pl.concat_str(pl.lit("{"), member, pl.lit("}")))
        .otherwise(pl.concat_str(pl.lit("{"), member, pl.lit(","), old.str.slice(1)))
    ).to_series()
    return merged.to_arrow().cast(pa.string())


def _responses(kind: np.ndarray, style: AssistantStyle, variant_u: np.ndarray) -> pl.Series:
    """The style's phrasing of each response kind (-1: no response), one variant per row."""
    table = response_table(style)
    flat = [v for variants in table for v in variants]
    counts = np.array([len(v) for v in table])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    kinds = np.maximum(kind, 0)
    pick = offsets[kinds] + np.minimum((variant_u * counts[kinds]).astype(np.int64),
                                       counts[kinds] - 1)
    return pl.Series([*flat, ""], dtype=pl.String).gather(np.where(kind >= 0, pick, len(flat)))


def second_annotator(turns: Columns) -> np.ndarray:
    """A second, independent annotator: disagrees mostly on genuinely hard turns.

    Hard cases: a misheard name that ER then also failed on (asr vs er), a content
    mishearing NLU took literally (asr vs nlu), an intrinsically ambiguous media
    request (nlu vs er), wrong content (result vs er), recovered errors and
    clarifications (correct vs a failure), false wakes nobody reacted to.
    """
    gold = turns["label"]
    u_flip, u_pick = turns["ann_u"], turns["ann_u2"]
    entity_error, content_error = turns["e_entity"], turns["e_content"]
    nlu_ok = turns["nlu_ok"]
    # defaults: a neighbouring stage
    neighbour = np.array([2, 0, 4, 2, 5, 4])
    flip = np.full(len(gold), 0.02)
    alt = neighbour[gold]
    asr_g, nlu_g, er_g, res_g, ok_g, fw_g = (
        (gold == 2), (gold == 3), (gold == 4), (gold == 5), (gold == 0), (gold == 1))
    flip = np.where(asr_g & entity_error & ~nlu_ok, 0.09, flip)
    flip = np.where(asr_g & entity_error & nlu_ok, 0.08, flip)
    alt = np.where(asr_g & entity_error, np.where(nlu_ok, 4, 3), alt)
    flip = np.where(asr_g & content_error, 0.10, flip)
    alt = np.where(asr_g & content_error, 3, alt)
    media = np.isin(turns["truth_int"], [world.I_VIDEO, world.I_AUDIOBOOK, world.I_MUSIC])
    flip = np.where(nlu_g & media, 0.2, np.where(nlu_g, 0.155, flip))
    alt = np.where(nlu_g, np.where(u_pick < 0.35, 4, 2), alt)
    flip = np.where(er_g, 0.06, flip)
    alt = np.where(er_g, np.where(u_pick < 0.6, 5, 2), alt)
    flip = np.where(res_g & turns["wrong"], 0.12, np.where(res_g, 0.04, flip))
    alt = np.where(res_g & turns["wrong"], 4, alt)
    recovered = ok_g & (entity_error | content_error)
    flip = np.where(recovered, 0.12, flip)
    alt = np.where(recovered, 2, alt)
    unclear_ok = ok_g & (turns["clarified"] | (turns["truth_int"] == world.I_UNSUPPORTED))
    flip = np.where(unclear_ok, 0.06, flip)
    alt = np.where(unclear_ok, np.where(u_pick < 0.5, 3, 5), alt)
    flip = np.where(fw_g, np.where(turns["did_action"], 0.09, 0.15), flip)
    alt = np.where(fw_g, 0, alt)
    # everything else: rare slips to any failure class
    plain_ok = ok_g & ~recovered & ~unclear_ok
    flip = np.where(plain_ok, 0.012, flip)
    alt = np.where(plain_ok, 1 + (u_pick * 5).astype(np.int64).clip(0, 4), alt)
    return np.where(u_flip < flip, alt, gold)


def _text(series: pl.Series) -> pa.Array:
    return series.to_arrow().cast(pa.string())


def _session_ids(turns: Columns, seed: int, session_offset: int) -> pa.Array:
    """``s<seed>-<session number, 8 digits>``."""
    number = pl.Series("slot", turns["slot"] + session_offset).cast(pl.String).str.zfill(8)
    return _text(pl.select(pl.concat_str(pl.lit(f"s{seed}-"), number)).to_series())


def _device(turns: Columns, style: AssistantStyle) -> pa.StructArray:
    device = turns["dev"]
    return _struct({
        "type": _strings(world.DEVICE_TYPES, device),
        "has_screen": pa.array(world.DEVICE_HAS_SCREEN[device]),
        "locale": _strings(style.lang.locales, turns["loc"]),
        "app_version": _strings(world.APP_VERSIONS, turns["app"]),
    })


def _wake(turns: Columns) -> pa.StructArray:
    return _struct({
        "detected": pa.array(np.ones(len(turns["slot"]), dtype=bool)),
        "score": pa.array(_round(turns["wake_score"])),
        "device_directed_score": pa.array(_round(turns["dd_score"])),
    })


def _nbest(turns: Columns, style: AssistantStyle) -> pa.ListArray:
    """The top hypothesis and the alternatives; the same words twice: the first."""
    language = style.language
    n = len(turns["slot"])
    templates = np.concatenate([turns["asr_tpl"][:, None], turns["alt_tpl"]], axis=1)
    mentions = np.concatenate([turns["asr_men"][:, None], turns["alt_men"]], axis=1)
    confidences = np.concatenate([turns["asr_conf"][:, None], turns["alt_conf"]], axis=1)
    valid = np.concatenate([np.ones((n, 1), dtype=bool), turns["alt_valid"]], axis=1)
    width = templates.shape[1]
    text = _render(templates.reshape(-1), mentions.reshape(-1), language)
    first = (
        pl.DataFrame({"row": np.repeat(np.arange(n), width), "text": text})
        .select(pl.struct("row", "text").is_first_distinct())
        .to_series()
        .to_numpy()
        .reshape(n, width)
    )
    items = _struct({
        "text": _text(text),
        "confidence": _confidence(confidences.reshape(-1), style.asr_confidence),
    })
    return _list(items, valid & first, style.log_nbest)


def _asr(turns: Columns, style: AssistantStyle) -> pa.StructArray:
    return _struct({
        "text": _text(_render(turns["asr_tpl"], turns["asr_men"], style.language)),
        "confidence": _confidence(turns["asr_conf"], style.asr_confidence),
        "nbest": _nbest(turns, style),
        "audio_ms": pa.array(np.round(turns["audio_ms"])),
        "latency_ms": _latency(turns["asr_lat"], style),
    })


_INTENT_NAMES = tuple(it.name for it in world.INTENTS)
_INTENT_DOMAINS = tuple(it.domain for it in world.INTENTS)
_SLOT_NAMES = tuple(it.slot or "" for it in world.INTENTS)


def _nlu(turns: Columns, style: AssistantStyle, mention_text: pa.Array) -> pa.StructArray:
    alternative = turns["nlu_alt_int"].reshape(-1)
    alternatives = _struct({
        "domain": _strings(_INTENT_DOMAINS, alternative),
        "intent": _strings(_INTENT_NAMES, alternative),
        "confidence": _confidence(turns["nlu_alt_conf"].reshape(-1), style.nlu_confidence),
    })
    slots = _struct({
        "name": _strings(_SLOT_NAMES, turns["nlu_int"]),
        "value": mention_text,
        "confidence": pa.array(_round(turns["slot_conf"])),
    })
    return _struct({
        "domain": _strings(_INTENT_DOMAINS, turns["nlu_int"]),
        "intent": _strings(_INTENT_NAMES, turns["nlu_int"]),
        "confidence": _confidence(turns["nlu_conf"], style.nlu_confidence),
        "alternatives": _list(alternatives, turns["nlu_alt_valid"], style.log_nlu_alternatives),
        "slots": _list(slots, turns["slot_present"][:, None]),
    })


def _er(turns: Columns, style: AssistantStyle, mention_text: pa.Array) -> pa.StructArray:
    tables = world.tables(style.language)
    resolved = turns["er_resolved"]
    entities = _struct({
        "slot": _strings(_SLOT_NAMES, turns["nlu_int"]),
        "mention": mention_text,
        "resolved_id": _strings(tables.ent_id, resolved),
        "resolved_name": _strings(tables.ent_name, resolved),
        "score": pa.array(_round(turns["er_score"])),
        "status": _strings(engine.ER_STATUS_NAMES, turns["er_status"]),
    })
    return _struct(
        {
            "entities": _list(entities, np.ones((len(resolved), 1), dtype=bool)),
            "latency_ms": _latency(turns["er_lat"], style),
        },
        present=turns["er_present"],
    )


def _response_fill(turns: Columns, style: AssistantStyle) -> pl.Series:
    """What fills a response's ``{x}``: an entity's name, else the mention, else the two
    entities of a question back ("A or B")."""
    language = style.language
    tables = world.tables(language)
    names = pl.Series([*tables.ent_name, ""], dtype=pl.String)
    entity, mention = turns["resp_x"], turns["resp_x_men"]
    entity_name = names.gather(np.where(entity >= 0, entity, len(tables.ent_name)))
    either_or = pl.select(
        pl.concat_str(
            names.gather(np.maximum(turns["amb_a"], 0)), pl.lit(style.lang.either_or),
            names.gather(np.maximum(turns["amb_b"], 0)),
        )
    ).to_series()
    return pl.select(
        pl.when(pl.Series(entity >= 0))
        .then(entity_name)
        .when(pl.Series(mention >= 0))
        .then(_render(np.full(len(entity), _slot_template(language)), mention, language))
        .otherwise(either_or)
    ).to_series()


def _response_text(turns: Columns, style: AssistantStyle, seed: int,
                   session_offset: int) -> pl.Series:
    """The style's phrasing of each response (a variant drawn per turn), ``{x}`` filled."""
    session_number = turns["slot"] + session_offset
    kind = turns["resp"]
    phrasing = _responses(kind, style, turn_uniforms(seed, session_number, turns["pos"], 1))
    return pl.select(
        pl.when(pl.Series(kind >= 0))
        .then(pl.lit(phrasing).str.replace("{x}", pl.lit(_response_fill(turns, style)),
                                           literal=True))
        .otherwise(None)
    ).to_series()


def _action(turns: Columns, language: str) -> pl.Series:
    """``verb`` or ``verb:entity id``; null where the service did nothing."""
    intent, entity = turns["action_int"], turns["action_ent"]
    entity_ids = world.tables(language).ent_id
    verb = pl.Series([*engine.ACTION_VERBS, ""], dtype=pl.String).gather(
        np.where(intent >= 0, intent, len(engine.ACTION_VERBS))
    )
    ids = pl.Series([*entity_ids, ""], dtype=pl.String).gather(
        np.where(entity >= 0, entity, len(entity_ids))
    )
    return pl.select(
        pl.when(verb == "")
        .then(None)
        .when(ids == "")
        .then(verb)
        .otherwise(pl.concat_str(verb, pl.lit(":"), ids))
    ).to_series()


def _result(turns: Columns, style: AssistantStyle, seed: int,
            session_offset: int) -> pa.StructArray:
    return _struct({
        "status": _strings(engine.STATUS_NAMES, turns["status"]),
        "action": _text(_action(turns, style.language)),
        "response_text": _text(_response_text(turns, style, seed, session_offset)),
        "latency_ms": _latency(turns["res_lat"], style),
    })


def _feedback(turns: Columns, style: AssistantStyle) -> pa.StructArray:
    return _struct(
        {
            "barge_in": pa.array(turns["barge"]),
            "explicit": _strings(("", "negative", "positive"), np.where(
                turns["explicit"] > 0, turns["explicit"], -1)),
        },
        present=turns["feedback_logged"] & style.feedback_logged(turns["app"]),
    )


def _label(turns: Columns, labels: str) -> pa.StructArray:
    """The gold label, its annotator and (``labels="both"``) a second annotator's."""
    n = len(turns["label"])
    annotator = pl.select(
        pl.concat_str(pl.lit("a"),
                      pl.Series(turns["annotator"] + 1).cast(pl.String).str.zfill(2))
    ).to_series()
    second = second_annotator(turns)
    return _struct(
        {
            "failure_point": pa.array(_CLASS_ARR[turns["label"]].tolist(), type=pa.string()),
            "annotator": _text(annotator),
            "failure_point_2": pa.array(
                _CLASS_ARR[second].tolist() if labels == "both" else [None] * n,
                type=pa.string()
            ),
        },
        present=np.full(n, labels != "none"),
    )


def _extra(turns: Columns, style: AssistantStyle) -> pa.Array:
    """Only the newest app logs the extra fields, in one of a few variants; a style's
    confidences off the unit scale go there too."""
    variant = 1 + (turns["annotator"] % (len(_EXTRAS) - 1))
    extra = _strings(tuple(e or "" for e in _EXTRAS), np.where(turns["app"] == 3, variant, -1))
    return _merge_extra(extra, _scale_extra(turns["asr_conf"], style.asr_confidence, "asr"))


def to_frame(
    turns: Columns,
    *,
    seed: int,
    session_offset: int,
    labels: str = "both",
    style: AssistantStyle = STYLES["default"],
) -> pl.DataFrame:
    """Build the canonical frame of one simulated batch, logged the way ``style`` logs."""
    language = style.language
    n = len(turns["slot"])
    mention_text = _text(
        _render(np.full(n, _slot_template(language)), turns["asr_men"], language))
    table = pa.table(
        {
            "schema_version": pa.array(np.ones(n, dtype=np.int64)),
            "session_id": _session_ids(turns, seed, session_offset),
            "turn_index": pa.array(turns["pos"].astype(np.int64)),
            "timestamp": pa.array(turns["ts"].astype("datetime64[us]")),
            "device": _device(turns, style),
            "wake": _wake(turns),
            "asr": _asr(turns, style),
            "nlu": _nlu(turns, style, mention_text),
            "er": _er(turns, style, mention_text),
            "result": _result(turns, style, seed, session_offset),
            "feedback": _feedback(turns, style),
            "label": _label(turns, labels),
            "extra": _extra(turns, style),
        }
    )
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.col("timestamp").dt.replace_time_zone("UTC")).cast(TURN_SCHEMA)


def _slot_template(language: str = "en") -> int:
    """Id of the bare ``{e}`` template (renders just the mention)."""
    return world.tables(language).tpl_text.index("{e}")
