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
from fpi.simulate import engine as E
from fpi.simulate import world as W
from fpi.simulate.styles import (
    STYLES,
    AssistantStyle,
    ConfidenceLog,
    response_table,
    turn_uniforms,
)

_CLASS_ARR = np.array(CLASSES, dtype=object)

#: Unknown extra fields some clients log (kept by ingest in ``extra``).
_EXTRAS: tuple[str | None, ...] = (
    None,
    '{"asr.model_version":"am-2026.10","client.network":"wifi"}',
    '{"asr.model_version":"am-2026.11","client.network":"wifi"}',
    '{"asr.model_version":"am-2026.11","client.network":"cellular"}',
)


def _render(tpl: np.ndarray, men: np.ndarray, language: str = "en") -> pl.Series:
    """Text of (template id, mention id) pairs; mention -1 leaves the slot empty."""
    t = W.tables(language)
    tpl_s = pl.Series(t.tpl_text, dtype=pl.String)
    men_s = pl.Series([*t.men_text, ""], dtype=pl.String)
    m = np.where(men >= 0, men, len(t.men_text))
    frame = pl.DataFrame({"t": tpl_s.gather(tpl), "m": men_s.gather(m)})
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


def second_annotator(r: dict[str, np.ndarray]) -> np.ndarray:
    """A second, independent annotator: disagrees mostly on genuinely hard turns.

    Hard cases: a misheard name that ER then also failed on (asr vs er), a content
    mishearing NLU took literally (asr vs nlu), an intrinsically ambiguous media
    request (nlu vs er), wrong content (result vs er), recovered errors and
    clarifications (correct vs a failure), false wakes nobody reacted to.
    """
    gold = r["label"]
    n = len(gold)
    u, v = r["ann_u"], r["ann_u2"]
    flip = np.full(n, 0.02)
    alt = np.full(n, -1)
    # defaults: a neighbouring stage
    neighbour = np.array([2, 0, 4, 2, 5, 4])
    alt = neighbour[gold]
    asr_g, nlu_g, er_g, res_g, ok_g, fw_g = (gold == 2), (gold == 3), (gold == 4), (gold == 5), (
        gold == 0), (gold == 1)
    flip = np.where(asr_g & r["e_entity"] & ~r["nlu_ok"], 0.09, flip)
    flip = np.where(asr_g & r["e_entity"] & r["nlu_ok"], 0.08, flip)
    alt = np.where(asr_g & r["e_entity"], np.where(r["nlu_ok"], 4, 3), alt)
    flip = np.where(asr_g & r["e_content"], 0.10, flip)
    alt = np.where(asr_g & r["e_content"], 3, alt)
    media = np.isin(r["truth_int"], [W.I_VIDEO, W.I_AUDIOBOOK, W.I_MUSIC])
    flip = np.where(nlu_g & media, 0.2, np.where(nlu_g, 0.155, flip))
    alt = np.where(nlu_g, np.where(v < 0.35, 4, 2), alt)
    flip = np.where(er_g, 0.06, flip)
    alt = np.where(er_g, np.where(v < 0.6, 5, 2), alt)
    flip = np.where(res_g & r["wrong"], 0.12, np.where(res_g, 0.04, flip))
    alt = np.where(res_g & r["wrong"], 4, alt)
    recovered = ok_g & (r["e_entity"] | r["e_content"])
    flip = np.where(recovered, 0.12, flip)
    alt = np.where(recovered, 2, alt)
    unclear_ok = ok_g & (r["clarified"] | (r["truth_int"] == W.I_UNSUPPORTED))
    flip = np.where(unclear_ok, 0.06, flip)
    alt = np.where(unclear_ok, np.where(v < 0.5, 3, 5), alt)
    flip = np.where(fw_g, np.where(r["did_action"], 0.09, 0.15), flip)
    alt = np.where(fw_g, 0, alt)
    # everything else: rare slips to any failure class
    plain_ok = ok_g & ~recovered & ~unclear_ok
    flip = np.where(plain_ok, 0.012, flip)
    alt = np.where(plain_ok, 1 + (v * 5).astype(np.int64).clip(0, 4), alt)
    return np.where(u < flip, alt, gold)


def to_frame(
    r: dict[str, np.ndarray],
    *,
    seed: int,
    session_offset: int,
    labels: str = "both",
    style: AssistantStyle = STYLES["default"],
) -> pl.DataFrame:
    """Build the canonical frame of one simulated batch, logged the way ``style`` logs."""
    lang = style.language
    t = W.tables(lang)
    n = len(r["slot"])
    sid = (
        pl.Series("slot", r["slot"] + session_offset)
        .cast(pl.String)
        .str.zfill(8)
    )
    session_id = pl.select(pl.concat_str(pl.lit(f"s{seed}-"), sid)).to_series()

    # ---- device, wake -----------------------------------------------------
    dev = r["dev"]
    device = _struct(
        {
            "type": _strings(W.DEVICE_TYPES, dev),
            "has_screen": pa.array(W.DEVICE_HAS_SCREEN[dev]),
            "locale": _strings(style.lang.locales, r["loc"]),
            "app_version": _strings(W.APP_VERSIONS, r["app"]),
        }
    )
    wake = _struct(
        {
            "detected": pa.array(np.ones(n, dtype=bool)),
            "score": pa.array(_round(r["wake_score"])),
            "device_directed_score": pa.array(_round(r["dd_score"])),
        }
    )

    # ---- ASR -----------------------------------------------------------------
    asr_text = _render(r["asr_tpl"], r["asr_men"], lang)
    nb_tpl = np.concatenate([r["asr_tpl"][:, None], r["alt_tpl"]], axis=1)
    nb_men = np.concatenate([r["asr_men"][:, None], r["alt_men"]], axis=1)
    nb_conf = np.concatenate([r["asr_conf"][:, None], r["alt_conf"]], axis=1)
    nb_valid = np.concatenate([np.ones((n, 1), dtype=bool), r["alt_valid"]], axis=1)
    width = nb_tpl.shape[1]
    nb_text = _render(nb_tpl.reshape(-1), nb_men.reshape(-1), lang)
    # the same words twice in one n-best list: keep the first
    first = (
        pl.DataFrame({"row": np.repeat(np.arange(n), width), "text": nb_text})
        .select(pl.struct("row", "text").is_first_distinct())
        .to_series()
        .to_numpy()
        .reshape(n, width)
    )
    nb_valid = nb_valid & first
    nbest_items = _struct(
        {
            "text": nb_text.to_arrow().cast(pa.string()),
            "confidence": _confidence(nb_conf.reshape(-1), style.asr_confidence),
        }
    )
    asr = _struct(
        {
            "text": asr_text.to_arrow().cast(pa.string()),
            "confidence": _confidence(r["asr_conf"], style.asr_confidence),
            "nbest": _list(nbest_items, nb_valid, style.log_nbest),
            "audio_ms": pa.array(np.round(r["audio_ms"])),
            "latency_ms": _latency(r["asr_lat"], style),
        }
    )

    # ---- NLU -----------------------------------------------------------------
    intent_names = tuple(it.name for it in W.INTENTS)
    intent_domains = tuple(it.domain for it in W.INTENTS)
    alt_int = r["nlu_alt_int"]
    alt_items = _struct(
        {
            "domain": _strings(intent_domains, alt_int.reshape(-1)),
            "intent": _strings(intent_names, alt_int.reshape(-1)),
            "confidence": _confidence(r["nlu_alt_conf"].reshape(-1), style.nlu_confidence),
        }
    )
    slot_names = tuple(it.slot or "" for it in W.INTENTS)
    men_text = _render(np.full(n, _slot_template(lang)), r["asr_men"], lang)
    slot_items = _struct(
        {
            "name": _strings(slot_names, r["nlu_int"]),
            "value": men_text.to_arrow().cast(pa.string()),
            "confidence": pa.array(_round(r["slot_conf"])),
        }
    )
    nlu = _struct(
        {
            "domain": _strings(intent_domains, r["nlu_int"]),
            "intent": _strings(intent_names, r["nlu_int"]),
            "confidence": _confidence(r["nlu_conf"], style.nlu_confidence),
            "alternatives": _list(alt_items, r["nlu_alt_valid"], style.log_nlu_alternatives),
            "slots": _list(slot_items, r["slot_present"][:, None]),
        }
    )

    # ---- ER ------------------------------------------------------------------
    res_ent = r["er_resolved"]
    ent_items = _struct(
        {
            "slot": _strings(slot_names, r["nlu_int"]),
            "mention": men_text.to_arrow().cast(pa.string()),
            "resolved_id": _strings(t.ent_id, res_ent),
            "resolved_name": _strings(t.ent_name, res_ent),
            "score": pa.array(_round(r["er_score"])),
            "status": _strings(E.ER_STATUS_NAMES, r["er_status"]),
        }
    )
    er = _struct(
        {
            "entities": _list(ent_items, np.ones((n, 1), dtype=bool)),
            "latency_ms": _latency(r["er_lat"], style),
        },
        present=r["er_present"],
    )

    # ---- result ----------------------------------------------------------------
    names = pl.Series([*t.ent_name, ""], dtype=pl.String)
    x_name = names.gather(np.where(r["resp_x"] >= 0, r["resp_x"], len(t.ent_name)))
    amb = pl.select(
        pl.concat_str(
            names.gather(np.maximum(r["amb_a"], 0)), pl.lit(style.lang.either_or),
            names.gather(np.maximum(r["amb_b"], 0)),
        )
    ).to_series()
    x_fill = pl.select(
        pl.when(pl.Series(r["resp_x"] >= 0))
        .then(x_name)
        .when(pl.Series(r["resp_x_men"] >= 0))
        .then(_render(np.full(n, _slot_template(lang)), r["resp_x_men"], lang))
        .otherwise(amb)
    ).to_series()
    session_number = r["slot"] + session_offset
    resp_tpl = _responses(r["resp"], style, turn_uniforms(seed, session_number, r["pos"], 1))
    response = pl.select(
        pl.when(pl.Series(r["resp"] >= 0))
        .then(pl.lit(resp_tpl).str.replace("{x}", pl.lit(x_fill), literal=True))
        .otherwise(None)
    ).to_series()
    act_int, act_ent = r["action_int"], r["action_ent"]
    verb = pl.Series([*E.ACTION_VERBS, ""], dtype=pl.String).gather(
        np.where(act_int >= 0, act_int, len(E.ACTION_VERBS))
    )
    ent_ids = pl.Series([*t.ent_id, ""], dtype=pl.String).gather(
        np.where(act_ent >= 0, act_ent, len(t.ent_id))
    )
    action = pl.select(
        pl.when(verb == "")
        .then(None)
        .when(ent_ids == "")
        .then(verb)
        .otherwise(pl.concat_str(verb, pl.lit(":"), ent_ids))
    ).to_series()
    result = _struct(
        {
            "status": _strings(E.STATUS_NAMES, r["status"]),
            "action": action.to_arrow().cast(pa.string()),
            "response_text": response.to_arrow().cast(pa.string()),
            "latency_ms": _latency(r["res_lat"], style),
        }
    )

    # ---- feedback, label, extra ------------------------------------------------
    feedback = _struct(
        {
            "barge_in": pa.array(r["barge"]),
            "explicit": _strings(("", "negative", "positive"), np.where(
                r["explicit"] > 0, r["explicit"], -1)),
        },
        present=r["feedback_logged"] & style.feedback_logged(r["app"]),
    )
    gold = r["label"]
    second = second_annotator(r)
    ann = pl.select(
        pl.concat_str(pl.lit("a"), pl.Series(r["annotator"] + 1).cast(pl.String).str.zfill(2))
    ).to_series()
    label_present = np.full(n, labels != "none")
    label = _struct(
        {
            "failure_point": pa.array(_CLASS_ARR[gold].tolist(), type=pa.string()),
            "annotator": ann.to_arrow().cast(pa.string()),
            "failure_point_2": pa.array(
                _CLASS_ARR[second].tolist() if labels == "both" else [None] * n, type=pa.string()
            ),
        },
        present=label_present,
    )
    # only the newest app logs the extra fields, in one of a few variants
    variant = 1 + (r["annotator"] % (len(_EXTRAS) - 1))
    extra = _strings(tuple(e or "" for e in _EXTRAS), np.where(r["app"] == 3, variant, -1))
    extra = _merge_extra(extra, _scale_extra(r["asr_conf"], style.asr_confidence, "asr"))

    table = pa.table(
        {
            "schema_version": pa.array(np.ones(n, dtype=np.int64)),
            "session_id": session_id.to_arrow().cast(pa.string()),
            "turn_index": pa.array(r["pos"].astype(np.int64)),
            "timestamp": pa.array(r["ts"].astype("datetime64[us]")),
            "device": device,
            "wake": wake,
            "asr": asr,
            "nlu": nlu,
            "er": er,
            "result": result,
            "feedback": feedback,
            "label": label,
            "extra": extra,
        }
    )
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.col("timestamp").dt.replace_time_zone("UTC")).cast(TURN_SCHEMA)


def _slot_template(language: str = "en") -> int:
    """Id of the bare ``{e}`` template (renders just the mention)."""
    return W.tables(language).tpl_text.index("{e}")
