"""The generative engine: sessions of users, turn by turn, through the five stages.

Vectorized with numpy across the sessions of a batch; the loop runs over turn
positions (every active session emits its next turn at once). Every stage acts
on what the previous stage produced: ASR corrupts the phrasing and the entity
mention it hears, NLU reads the *recognised* template and mention (keyword cues
plus a fuzzy gazetteer), ER fuzzy-matches the recognised mention against the
catalogue NLU chose, the result service acts on NLU and ER's output. Only at the
end is each stage's output compared with the user's true goal, which gives the
gold failure point by the spec's definition (earliest unrecovered error).

A session's random numbers depend only on (seed, batch, slot, position), not on
the profile nor on which other sessions are still active (counter-based draws),
so profiles are compared with common random numbers.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from fpi.simulate import world as W
from fpi.simulate.profiles import Profile

#: Turn kinds.
FALSE_WAKE, GOAL, STOP = 0, 1, 2
#: Intents whose plain "play X" phrasing is ambiguous between media.
MEDIA_INTENTS = np.array([W.I_MUSIC, W.I_VIDEO, W.I_AUDIOBOOK])
#: Longest session (turns); longer ones are cut, as a session timeout would.
MAX_TURNS = 20
#: Session start times are spread over one day from here.
DAY_START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
DAY_START_US = int(DAY_START.timestamp() * 1_000_000)

# Column indices of the per-position uniform and normal draws.
_U_NAMES = (
    "fw_in", "bg_tpl", "stop_tpl", "func", "content", "entity", "trunc", "mishear",
    "nb_truth", "nb_n", "er_fault", "er_lowres", "er_outage", "res_err", "res_wrong",
    "res_wrong_ent", "res_text", "unres_kind", "barge", "explicit", "react", "react2",
    "new_intent", "new_tpl", "new_ent", "new_alias", "similar", "gap", "fb_app",
    "ann_flip", "ann_pick", "annotator", "res_text2", "nb_pick", "nb_pick2", "specific",
)
_Z_NAMES = (
    "wake", "dd", "clarity_turn", "asr_conf", "asr_audio", "asr_lat", "nlu_conf",
    "er_lat", "res_lat", "gap", "slot_conf", "er_score", "nb_c1", "nb_c2", "nb_c3",
)
U = {n: i for i, n in enumerate(_U_NAMES)}
Z = {n: i for i, n in enumerate(_Z_NAMES)}
#: Largest catalogue: width of the per-entity ER noise.
_CAT_WIDTH = max(len(c) for c in W.tables().cat_entities)

#: The default assistant's response phrasing per response kind ("{x}": a name or the
#: mention); styles and languages phrase the same kinds their own way.
RESPONSES: tuple[str, ...] = tuple(v[0] for v in W.ENGLISH.responses)
#: Success response per intent (index into RESPONSES).
_SUCCESS_RESPONSE = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 12])
#: Action verb per intent (empty: no action).
ACTION_VERBS: tuple[str, ...] = (
    "turn_on", "turn_off", "open", "play_music", "play_video", "play_audiobook", "weather",
    "add_to_list", "set_timer", "answer", "", "stop", "",
)
STATUS_NAMES: tuple[str, ...] = ("success", "error", "no_action", "clarification")
ER_STATUS_NAMES: tuple[str, ...] = ("resolved", "unresolved", "ambiguous")


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective scramble of 64-bit counters."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _uniforms(key: np.uint64, slots: np.ndarray, pos: int, stream: int, n: int) -> np.ndarray:
    """Uniforms in [0, 1) for (slot, position, stream, column): counter-based, so a
    slot's numbers do not depend on which other slots are active."""
    with np.errstate(over="ignore"):
        row = _mix(key ^ _mix(slots.astype(np.uint64) * np.uint64(64 * 8)
                             + np.uint64(pos * 8 + stream) + _GOLDEN))
        x = _mix(row[:, None] + np.arange(1, n + 1, dtype=np.uint64)[None, :] * _GOLDEN)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _normals(key: np.uint64, slots: np.ndarray, pos: int, stream: int, n: int) -> np.ndarray:
    """Standard normals (Box-Muller on :func:`_uniforms`)."""
    u = _uniforms(key, slots, pos, stream + 16, 2 * n)
    r = np.sqrt(-2.0 * np.log1p(-u[:, :n]))
    return r * np.cos(2.0 * np.pi * u[:, n:])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pick(p_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise categorical draw: index where the cumulative probability passes ``u``."""
    cum = np.cumsum(p_rows, axis=1)
    cum[:, -1] = 1.0 + 1e-9
    return (u[:, None] > cum).sum(axis=1)


_PADDED: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _padded(table: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``table`` as a padded matrix and row lengths (cached: the tables are static)."""
    key = id(table)
    if key not in _PADDED:
        width = max(len(t) for t in table)
        pad = np.full((len(table), width), -1, dtype=np.int64)
        counts = np.zeros(len(table), dtype=np.int64)
        for i, t in enumerate(table):
            pad[i, : len(t)] = t
            counts[i] = len(t)
        _PADDED[key] = (pad, counts)
    return _PADDED[key]


def _ragged_pick(table: tuple[np.ndarray, ...], rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Pick uniformly one element of ``table[row]`` per row (-1 where empty)."""
    pad, counts = _padded(table)
    n = counts[rows]
    j = np.minimum((u * n).astype(np.int64), np.maximum(n - 1, 0))
    return np.where(n > 0, pad[rows, j], -1)


class _Static:
    """Per-process precomputations on top of one language's world tables."""

    def __init__(self, language: str = "en") -> None:
        t = W.tables(language)
        self.t = t
        lang = W.get_language(language)
        self.locale_weights = np.array(lang.locale_weights)
        self.locale_accent = np.array(lang.locale_accent)
        if max(len(c) for c in t.cat_entities) > _CAT_WIDTH:
            raise ValueError(f"{language}: a catalogue is wider than {_CAT_WIDTH} entries")
        # padded per-intent template choice
        self.intent_tpl = t.intent_templates
        self.intent_tpl_p = t.intent_template_p
        width = max(len(x) for x in t.intent_templates)
        self.tpl_pad = np.zeros((W.K, width), dtype=np.int64)
        self.tpl_cum = np.ones((W.K, width))
        for k, (ids, p) in enumerate(zip(t.intent_templates, t.intent_template_p, strict=True)):
            if len(ids):
                self.tpl_pad[k, : len(ids)] = ids
                self.tpl_pad[k, len(ids) :] = ids[-1]
                self.tpl_cum[k, : len(ids)] = np.cumsum(p)
        # phrasings that say unmistakably which intent is meant ("watch X", "read X"):
        # what users switch to after being misunderstood
        self.tpl_cum_specific = self.tpl_cum.copy()
        for k, ids in enumerate(t.intent_templates):
            if not len(ids):
                continue
            cue = t.tpl_cue[ids]
            others = np.delete(cue, k, axis=1).max(axis=1)
            specific = (cue[:, k] > 0) & (cue[:, k] - others >= 0.2)
            if specific.any():
                p = np.where(specific, t.intent_template_p[k], 0.0)
                p = p / p.sum()
                self.tpl_cum_specific[k, : len(ids)] = np.cumsum(p)
        # padded catalogue membership for ER
        n_cat = len(W.CATALOGUES)
        self.cat_pad = np.full((n_cat, _CAT_WIDTH), -1, dtype=np.int64)
        for c, ents in enumerate(t.cat_indexed):
            self.cat_pad[c, : len(ents)] = ents
        # goal entity per intent: catalogue members
        self.stop_tpls = t.intent_templates[W.I_STOP]
        # a mention is "genuinely ambiguous" in a catalogue when two entries match it exactly
        exact = t.sim >= 0.999
        self.men_dup = np.zeros((len(t.men_text), n_cat), dtype=bool)
        for c, ents in enumerate(t.cat_indexed):
            self.men_dup[:, c] = exact[:, ents].sum(axis=1) >= 2
        # what a duration mention denotes (timers are parsed, not resolved)
        dur = t.cat_entities[W.CATALOGUES.index("duration")]
        best = t.sim[:, dur].argmax(axis=1)
        self.men_duration = np.where(t.sim[:, dur].max(axis=1) >= 0.85, dur[best], -1)
        self.intent_has_slot = t.intent_catalogue >= 0
        self.intent_resolves = np.array([it.resolves for it in W.INTENTS])
        self.mention_of_alias = t.ent_aliases


_STATIC: dict[str, _Static] = {}


def static(language: str = "en") -> _Static:
    """The shared precomputed tables of a language (built on first use)."""
    if language not in _STATIC:
        _STATIC[language] = _Static(language)
    return _STATIC[language]


# ---------------------------------------------------------------------------
# One turn per active session: the pipeline
# ---------------------------------------------------------------------------


def _pipeline(
    st: _Static,
    prof: _ProfileArrays,
    kind: np.ndarray,
    dev: np.ndarray,
    env: np.ndarray,
    loc: np.ndarray,
    app: np.ndarray,
    clarity: np.ndarray,
    new_voice: np.ndarray,
    truth_tpl: np.ndarray,
    truth_men: np.ndarray,
    truth_int: np.ndarray,
    truth_ent: np.ndarray,
    u: np.ndarray,
    z: np.ndarray,
    zc: np.ndarray,
    ug: np.ndarray,
) -> dict[str, np.ndarray]:
    """Run one turn per row through wake, ASR, NLU, ER and result; label it.

    ``truth_*`` is what the user said and meant (or the background phrase of a
    false wake); ``new_voice`` marks (hidden) speakers of a population the acoustic
    model never trained on; ``u``, ``z``, ``zc``, ``ug`` are the row's random numbers. Each
    stage reads only the previous stage's output; the label is computed last from
    the outputs and the truth. Returns per-row columns (outputs, label, and the
    hidden error flags the tests check the story with).
    """
    t = st.t
    n = len(kind)
    fw = kind == FALSE_WAKE

    # ---- wake: the trigger fires on the user or on background speech ----------
    # Scores overlap: near-field TV audio looks like a user, a mumbling user does not.
    tv_bias = np.where(dev == W.DEVICE_TYPES.index("tv"), 0.7, 0.0)
    wake_logit = np.where(fw, 0.9 + tv_bias, 2.1 - 1.2 * W.ENV_NOISE[env]) + 0.9 * z[:, Z["wake"]]
    dd_logit = np.where(fw, 0.1 + 0.5 * tv_bias, 1.9 - 0.8 * W.DEVICE_FARFIELD[dev]) + 1.0 * z[
        :, Z["dd"]
    ]
    wake_score = _sigmoid(wake_logit)
    dd_score = _sigmoid(dd_logit)

    # ---- ASR: hears the truth through the room; errors depend on difficulty ---
    difficulty = (
        W.ENV_NOISE[env]
        + 0.35 * W.DEVICE_FARFIELD[dev]
        + st.locale_accent[loc]
        + 0.1 * clarity
        + 0.08 * z[:, Z["clarity_turn"]]
        + prof.asr_extra[dev]
        + np.where(fw, 0.3, 0.0)
    )
    difficulty = np.clip(difficulty, 0.0, 1.6)
    err_difficulty = _voice_error_difficulty(difficulty, new_voice, prof)
    user = ~fw
    has_slot = truth_men >= 0
    e_func = user & (u[:, U["func"]] < 0.05 + 0.3 * err_difficulty)
    e_content = user & (u[:, U["content"]] < 0.02 + 0.15 * err_difficulty)
    e_entity = user & has_slot & (u[:, U["entity"]] < 0.07 + 0.42 * err_difficulty)
    e_trunc = user & has_slot & ~e_entity & (u[:, U["trunc"]] < 0.002 + 0.012 * err_difficulty)
    tpl = truth_tpl.copy()
    tpl = np.where(e_content, t.tpl_content[tpl], tpl)
    tpl = np.where(e_func, t.tpl_func[tpl], tpl)
    content_changed = tpl != np.where(e_func, t.tpl_func[truth_tpl], truth_tpl)
    e_content = e_content & content_changed
    men = truth_men.copy()
    true_ent_of_men = np.where(truth_men >= 0, t.men_entity[np.maximum(truth_men, 0)], 0)
    misheard = _ragged_pick(t.ent_mishear, true_ent_of_men, u[:, U["mishear"]])
    men = np.where(e_entity & (misheard >= 0), misheard, men)
    e_entity = e_entity & (misheard >= 0)
    men = np.where(e_trunc, -1, men)
    entity_err = e_entity | e_trunc
    any_err = e_content | entity_err

    calib = np.array([0.55, 0.2, -0.35, 0.1, 0.45])[dev]  # far-field models are overconfident
    # how much of its own errors the recogniser notices (less on voices it never heard)
    notice = np.where(new_voice, prof.new_voice_notice, 1.0)
    asr_logit = (
        2.5
        + calib
        - 2.0 * difficulty
        - 1.4 * e_content * notice
        - 1.0 * e_entity * notice
        - 1.4 * e_trunc * notice
        - 0.25 * e_func
        + 0.75 * z[:, Z["asr_conf"]]
        + prof.asr_overconfidence
    )
    asr_conf = _sigmoid(asr_logit)
    words = t.tpl_words[tpl] + np.where(men >= 0, t.men_words[np.maximum(men, 0)], 0)
    audio_ms = np.maximum(300.0, 420.0 + 330.0 * words + 160.0 * z[:, Z["asr_audio"]])
    asr_lat = np.exp(5.4 + 0.25 * z[:, Z["asr_lat"]]) + 120.0 * difficulty

    # n-best: top hypothesis, then (maybe) the truth, a function-word variant, another
    # mishearing of the heard entity. More alternatives and closer scores when hard.
    n_alt = np.minimum(3, (u[:, U["nb_n"]] * (1.0 + 3.2 * difficulty)).astype(np.int64))
    n_alt = np.where(any_err & (n_alt == 0) & (u[:, U["nb_truth"]] < 0.5), 1, n_alt)
    truth_first = any_err & (u[:, U["nb_truth"]] < 0.7)
    alt_men_other = _ragged_pick(
        t.ent_mishear, np.where(men >= 0, t.men_entity[np.maximum(men, 0)], 0), u[:, U["nb_pick"]]
    )
    alt_men_other = np.where(men >= 0, alt_men_other, -1)
    cand_tpl = np.stack(
        [
            np.where(truth_first, truth_tpl, np.where(men >= 0, tpl, t.tpl_content[tpl])),
            t.tpl_func[tpl],
            np.where(u[:, U["nb_pick2"]] < 0.5, t.tpl_content[tpl], t.tpl_func[truth_tpl]),
        ],
        axis=1,
    )
    cand_men = np.stack(
        [
            np.where(truth_first, truth_men, np.where(men >= 0, alt_men_other, men)),
            men,
            np.where(u[:, U["nb_pick2"]] < 0.5, men, truth_men),
        ],
        axis=1,
    )
    # shares of the remaining probability mass: the truth, when present, gets a big one
    rest = 1.0 - asr_conf
    share = np.stack(
        [
            np.where(truth_first, 0.55, 0.3) + 0.1 * np.abs(z[:, Z["nb_c1"]]),
            0.18 + 0.05 * np.abs(z[:, Z["nb_c2"]]),
            0.09 + 0.03 * np.abs(z[:, Z["nb_c3"]]),
        ],
        axis=1,
    )
    share = np.minimum(share, 0.95)
    alt_conf = rest[:, None] * share
    alt_conf = np.minimum(alt_conf, asr_conf[:, None] * 0.98)
    alt_conf = np.minimum.accumulate(alt_conf, axis=1)
    alt_valid = np.arange(3)[None, :] < n_alt[:, None]

    # ---- NLU: keyword cues on the recognised phrasing + gazetteer on the mention --
    cue = t.tpl_cue[tpl]  # (n, K)
    gaz_c = np.where(men[:, None] >= 0, t.gaz[np.maximum(men, 0)], 0.0)  # (n, n_cat)
    slot_cat = t.intent_catalogue
    gaz_k = np.where(slot_cat[None, :] >= 0, gaz_c[:, np.maximum(slot_cat, 0)], 0.0)
    # a slot-taking intent with a mention that fits none of its catalogue is unlikely
    fit = np.where(men[:, None] >= 0, W.GAZ_WEIGHT * (gaz_k - 0.45), 0.0)
    fit = np.where(slot_cat[None, :] >= 0, fit, np.where(men[:, None] >= 0, -0.15, 0.0))
    score = cue + fit
    score[:, W.I_FALLBACK] = W.FALLBACK_SCORE
    # device priors: screens mean video, speakers and cars mean audio
    prior = np.zeros((len(W.DEVICE_TYPES), W.K))
    prior[:, W.I_VIDEO] = [-0.12, 0.12, 0.0, -0.2, 0.18]
    prior[:, W.I_AUDIOBOOK] = [0.06, -0.06, 0.0, 0.1, -0.12]
    score = score + prior[dev]
    # NLU noise: an imperfect model (Gumbel noise makes the argmax a softmax draw)
    gumbel = -np.log(-np.log(np.clip(ug, 1e-12, 1.0 - 1e-12)))
    score = score + 0.17 * gumbel
    order = np.argsort(-score, axis=1)
    nlu_int = order[:, 0]
    temp = np.array([5.0, 6.5, 7.5, 9.0])[app]  # newer NLU models are more overconfident
    ex = np.exp(temp[:, None] * (score - score.max(axis=1, keepdims=True)))
    prob = ex / ex.sum(axis=1, keepdims=True)
    nlu_conf = prob[np.arange(n), nlu_int]
    alt_int = order[:, 1:3]
    alt_p = np.take_along_axis(prob, alt_int, axis=1)
    alt_ok = alt_p >= 0.03
    nlu_slot_cat = slot_cat[nlu_int]
    slot_present = (nlu_slot_cat >= 0) & (men >= 0)
    slot_conf = _sigmoid(
        -1.0 + 4.0 * gaz_c[np.arange(n), np.maximum(nlu_slot_cat, 0)] + 0.6 * z[:, Z["slot_conf"]]
    )

    # ---- ER: fuzzy-match the recognised mention against NLU's catalogue ---------
    resolves = slot_present & st.intent_resolves[nlu_int]
    cat = np.maximum(nlu_slot_cat, 0)
    members = st.cat_pad[cat]  # (n, W)
    valid_m = members >= 0
    sims = np.where(valid_m, t.sim[np.maximum(men, 0)[:, None], np.maximum(members, 0)], -1.0)
    sims = sims + 0.03 * zc[:, : sims.shape[1]] * valid_m
    # fault: the best entry is missing from the index (stale shard)
    ordm = np.argsort(-sims, axis=1)
    fault_miss = resolves & (u[:, U["er_fault"]] < 0.1)
    first = np.where(fault_miss, ordm[:, 1], ordm[:, 0])
    second = np.where(fault_miss, ordm[:, 2], ordm[:, 1])
    best_s = sims[np.arange(n), first]
    second_s = sims[np.arange(n), second]
    best_e = members[np.arange(n), first]
    second_e = members[np.arange(n), second]
    outage = resolves & (cat == prof.er_outage_cat) & (u[:, U["er_outage"]] < prof.er_outage_rate)
    margin = best_s - second_s
    lowres = (best_s >= 0.62) & (best_s < 0.8) & (u[:, U["er_lowres"]] < (best_s - 0.62) / 0.18)
    er_status = np.where(
        best_s >= 0.8, np.where(margin >= 0.1, 0, 2), np.where(lowres, 0, 1)
    )
    er_status = np.where(outage, 1, er_status)
    er_score = np.clip(np.where(outage, 0.0, best_s), 0.0, 1.0)
    er_resolved = np.where(resolves & (er_status == 0), best_e, -1)
    er_lat = np.exp(3.6 + 0.35 * z[:, Z["er_lat"]]) + np.where(
        outage, 1800.0 + 900.0 * np.abs(z[:, Z["er_lat"]]), 0.0
    )
    men0 = np.maximum(men, 0)
    genuine_dup = st.men_dup[men0, cat] & (men >= 0) & (t.men_kind[men0] == 0)

    # ---- result: acts on NLU's intent and ER's entity ---------------------------
    dom = W.INTENT_DOMAIN[nlu_int]
    status = np.zeros(n, dtype=np.int64)  # success
    resp = _SUCCESS_RESPONSE[nlu_int].copy()
    resp_x = np.full(n, -1, dtype=np.int64)  # entity whose name fills {x}
    resp_x_men = np.full(n, -1, dtype=np.int64)  # or the mention
    action_ent = np.full(n, -1, dtype=np.int64)
    acted = np.ones(n, dtype=bool)
    timer_val = np.where(men >= 0, st.men_duration[np.maximum(men, 0)], -1)

    is_fallback = nlu_int == W.I_FALLBACK
    is_unsup = nlu_int == W.I_UNSUPPORTED
    is_stop = nlu_int == W.I_STOP
    is_timer = nlu_int == W.I_TIMER
    needs_slot = st.intent_has_slot[nlu_int] & ~is_timer
    no_slot_needed_slot = needs_slot & ~slot_present & (nlu_int != W.I_WEATHER)
    weather_here = (nlu_int == W.I_WEATHER) & ~slot_present

    status = np.where(is_fallback | is_unsup, 2, status)
    resp = np.where(is_fallback, 12 + (u[:, U["res_text"]] < 0.4), resp)
    resp = np.where(is_unsup, 10 + (u[:, U["res_text"]] < 0.4), resp)
    acted &= ~(is_fallback | is_unsup)
    status = np.where(no_slot_needed_slot, 3, status)
    resp = np.where(no_slot_needed_slot, 19, resp)
    acted &= ~no_slot_needed_slot
    resp = np.where(weather_here, 20, resp)
    # timers: parse the duration, ask again if it cannot be parsed
    timer_bad = is_timer & (~slot_present | (timer_val < 0))
    status = np.where(timer_bad, 3, status)
    resp = np.where(timer_bad, 19, resp)
    acted &= ~timer_bad
    resp_x_men = np.where(is_timer & ~timer_bad, men, resp_x_men)
    action_ent = np.where(is_timer & ~timer_bad, timer_val, action_ent)
    # entity resolution outcome
    unres = resolves & (er_status == 1)
    amb = resolves & (er_status == 2)
    ok_ent = resolves & (er_status == 0)
    # shopping lists take an unknown item as free text, questions go to web search
    free_text = unres & ~outage & np.isin(nlu_int, [W.INTENT_INDEX["AddToListIntent"],
                                                     W.INTENT_INDEX["QuestionIntent"]])
    resp = np.where(free_text, np.where(nlu_int == W.I_QUESTION, 22, 7), resp)
    resp_x_men = np.where(free_text, men, resp_x_men)
    unres = unres & ~free_text
    status = np.where(unres, np.where(u[:, U["unres_kind"]] < 0.6, 1, 2), status)
    resp = np.where(unres, 14 + (u[:, U["res_text"]] < 0.35), resp)
    resp_x_men = np.where(unres, men, resp_x_men)
    # an ER timeout is answered like a service error
    resp = np.where(unres & outage & (u[:, U["res_text"]] < 0.5), 17, resp)
    # some services answer "not found" with a generic error message
    resp = np.where(unres & (u[:, U["res_text2"]] < 0.15), 17, resp)
    status = np.where(amb, 3, status)
    resp = np.where(amb, np.where(u[:, U["res_text"]] < 0.8, 16, 21), resp)
    acted &= ~(unres | amb)
    resp_x = np.where(ok_ent, best_e, resp_x)
    action_ent = np.where(ok_ent, best_e, action_ent)
    # service errors and wrong content, once there is something to act on
    serviceable = acted & ~is_stop
    p_err = 0.04 + prof.result_err[dom] + np.where(dom == W.DOMAINS.index("knowledge"), 0.01, 0.0)
    svc_err = serviceable & (u[:, U["res_err"]] < p_err)
    status = np.where(svc_err, 1, status)
    resp = np.where(svc_err, 17 + (u[:, U["res_text"]] < 0.4), resp)
    # ... and a failing service often says it found nothing
    resp = np.where(svc_err & (u[:, U["res_text2"]] < 0.25), 14, resp)
    acted &= ~svc_err
    p_wrong = np.array([0.012, 0.03, 0.05, 0.05, 0.012, 0.012, 0.012, 0.07, 0.0, 0.0, 0.0])[dom]
    wrong = acted & ~is_stop & (action_ent >= 0) & (u[:, U["res_wrong"]] < p_wrong)
    other = _ragged_pick(
        st.t.cat_entities,
        np.where(action_ent >= 0, t.ent_catalogue[np.maximum(action_ent, 0)], 0),
        u[:, U["res_wrong_ent"]],
    )
    wrong_ent = np.where(other == action_ent, second_e, other)
    wrong = wrong & (wrong_ent >= 0) & (wrong_ent != action_ent)
    # knowledge answers go wrong silently (same words, wrong facts)
    shown_wrong = wrong & (dom != W.DOMAINS.index("knowledge"))
    action_ent = np.where(wrong, wrong_ent, action_ent)
    resp_x = np.where(shown_wrong, wrong_ent, resp_x)
    res_lat = np.exp(5.6 + 0.45 * z[:, Z["res_lat"]]) + np.where(
        svc_err & (u[:, U["res_text"]] < 0.5), 2500.0, 0.0
    )
    resp = np.where(is_stop, -1, resp)  # stopping says nothing
    amb_a = best_e
    amb_b = second_e

    # ---- gold label: compare each stage's output with the user's goal ----------
    truth_resolves = st.intent_resolves[truth_int] & (truth_ent >= 0)
    nlu_ok = nlu_int == truth_int
    truth_indexed = t.ent_indexed[np.maximum(truth_ent, 0)]
    said_right = (men >= 0) & (t.men_kind[men0] == 0) & (t.men_entity[men0] == truth_ent)
    er_ok = (
        ~truth_resolves
        | (ok_ent & (er_resolved == truth_ent))
        | (amb & genuine_dup)
        | (resolves & (er_status == 1) & ~outage & ~truth_indexed & said_right)
    )
    er_ok = er_ok & ~(~truth_resolves & resolves & (truth_int != W.I_UNSUPPORTED))
    value_ok = np.where(truth_int == W.I_TIMER, timer_val == truth_ent, True)
    slot_missing = st.intent_has_slot[truth_int] & (truth_ent >= 0) & ~slot_present
    result_ok = ~svc_err & ~wrong
    outcome_ok = nlu_ok & er_ok & value_ok & result_ok & ~slot_missing
    label = np.full(n, 0, dtype=np.int64)  # correct
    bad = ~outcome_ok
    asr_fault = (e_content & ~nlu_ok) | (entity_err & (~nlu_ok | ~er_ok | ~value_ok | slot_missing))
    label = np.where(bad & asr_fault, 2, label)
    label = np.where(bad & ~asr_fault & ~nlu_ok, 3, label)
    label = np.where(bad & ~asr_fault & nlu_ok & (~er_ok | slot_missing), 4, label)
    label = np.where(bad & ~asr_fault & nlu_ok & er_ok & ~slot_missing & ~value_ok, 2, label)
    label = np.where(
        bad & ~asr_fault & nlu_ok & er_ok & ~slot_missing & value_ok, 5, label
    )
    label = np.where(fw, 1, label)

    return {
        "wake_score": wake_score,
        "dd_score": dd_score,
        "asr_tpl": tpl,
        "asr_men": men,
        "asr_conf": asr_conf,
        "audio_ms": audio_ms,
        "asr_lat": asr_lat,
        "alt_tpl": cand_tpl,
        "alt_men": cand_men,
        "alt_conf": alt_conf,
        "alt_valid": alt_valid,
        "nlu_int": nlu_int,
        "nlu_conf": nlu_conf,
        "nlu_alt_int": alt_int,
        "nlu_alt_conf": alt_p,
        "nlu_alt_valid": alt_ok,
        "slot_present": slot_present,
        "slot_conf": slot_conf,
        "er_present": resolves,
        "er_status": er_status,
        "er_score": er_score,
        "er_resolved": er_resolved,
        "er_lat": er_lat,
        "status": status,
        "resp": resp,
        "resp_x": resp_x,
        "resp_x_men": resp_x_men,
        "amb_a": amb_a,
        "amb_b": amb_b,
        "action_int": np.where(acted, nlu_int, -1),
        "action_ent": np.where(acted, action_ent, -1),
        "res_lat": res_lat,
        "label": label,
        "outcome_ok": outcome_ok,
        "clarified": status == 3,
        "e_func": e_func,
        "e_content": e_content,
        "e_entity": entity_err,
        "nlu_ok": nlu_ok,
        "er_ok": er_ok,
        "svc_err": svc_err,
        "wrong": wrong,
        "genuine_amb": amb & genuine_dup,
        "er_fault": fault_miss | outage,
        "did_action": acted & ~is_stop,
    }


def _voice_error_difficulty(
    difficulty: np.ndarray, new_voice: np.ndarray, prof: _ProfileArrays
) -> np.ndarray:
    """The difficulty ASR *errors* follow: new voices are misrecognised more often than
    the acoustic difficulty (which the confidence follows) says; a conditional shift."""
    return difficulty + prof.new_voice_error * new_voice


class _ProfileArrays:
    """A profile's knobs as arrays indexed by device / domain / catalogue."""

    def __init__(self, profile: Profile) -> None:
        weights = W.DEVICE_WEIGHTS
        if profile.device_weights:
            weights = np.array([profile.device_weights[d] for d in W.DEVICE_TYPES])
            weights = weights / weights.sum()
        self.device_weights = weights
        self.new_voice_share = profile.new_voice_share
        self.new_voice_error = profile.new_voice_error
        self.new_voice_notice = profile.new_voice_notice
        self.asr_extra = np.array(
            [profile.asr_extra_difficulty.get(d, 0.0) for d in W.DEVICE_TYPES]
        )
        self.er_outage_cat = (
            W.CATALOGUES.index(profile.er_outage_catalogue)
            if profile.er_outage_catalogue
            else -99
        )
        self.er_outage_rate = profile.er_outage_rate
        self.asr_overconfidence = profile.asr_overconfidence
        self.result_err = np.array(
            [
                profile.result_error_extra.get(d, profile.result_error_extra.get("*", 0.0))
                for d in W.DOMAINS
            ]
        )
        self.fw_mult = np.array([profile.false_wake_mult.get(d, 1.0) for d in W.DEVICE_TYPES])


# ---------------------------------------------------------------------------
# Sessions: users, goals and reactions, position by position
# ---------------------------------------------------------------------------

#: Probability a session is only background noise (one false wake), per environment;
#: multiplied per device by the profile.
_BG_SESSION = 0.16
#: Probability a user turn is preceded by a false wake, per unit of background.
_FW_IN_SESSION = 0.05


def run_batch(
    profile: Profile, rng: np.random.Generator, n_sessions: int, language: str = "en"
) -> dict[str, np.ndarray]:
    """Simulate ``n_sessions`` sessions; return flat per-turn columns (unsorted).

    Columns ``slot`` (session index within the batch) and ``pos`` (turn index)
    identify each turn; the rest are stage outputs, the label and hidden truth.
    ``language`` picks the world's text (catalogues, phrasings; see
    :mod:`fpi.simulate.language`); the mechanics are the same in every language.
    """
    st = static(language)
    t = st.t
    prof = _ProfileArrays(profile)
    S = n_sessions
    n_dev = len(W.DEVICE_TYPES)

    # ---- who, where, with what device ----------------------------------------
    head = rng.random((S, 8))
    dev = _pick(np.broadcast_to(prof.device_weights, (S, n_dev)), head[:, 0])
    env = _pick(W.ENV_GIVEN_DEVICE[dev], head[:, 1])
    loc = _pick(np.broadcast_to(st.locale_weights, (S, len(st.locale_weights))), head[:, 2])
    app = _pick(np.broadcast_to(W.APP_WEIGHTS, (S, len(W.APP_VERSIONS))), head[:, 3])
    clarity = rng.standard_normal(S)
    # a hidden speaker population (profiles): the last head column, unused otherwise
    new_voice = head[:, 7] < prof.new_voice_share
    background = W.ENV_BACKGROUND[env] * prof.fw_mult[dev]
    is_bg = head[:, 4] < _BG_SESSION * background
    start_us = DAY_START_US + (head[:, 5] * 86_400e3).astype(np.int64) * 1000  # ms
    # users of the oldest app version do not send feedback events
    feedback_logged = app != 0
    annotator_pool = 12

    # ---- the first goal ------------------------------------------------------
    goal_int = _pick(W.GOAL_MIX[dev], head[:, 6])
    goal_ent = np.full(S, -1, dtype=np.int64)
    goal_tpl = np.zeros(S, dtype=np.int64)
    goal_men = np.full(S, -1, dtype=np.int64)

    def new_goal(mask: np.ndarray, u_int: np.ndarray, u_tpl: np.ndarray, u_ent: np.ndarray,
                 u_alias: np.ndarray, u_specific: np.ndarray,
                 keep_intent: np.ndarray | None = None) -> None:
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        gi = _pick(W.GOAL_MIX[dev[idx]], u_int[idx])
        if keep_intent is not None:
            gi = np.where(keep_intent[idx], goal_int[idx], gi)
        goal_int[idx] = gi
        # people who know "play X" is ambiguous often say which medium they mean
        specific = np.zeros(S, dtype=bool)
        specific[idx] = np.isin(gi, MEDIA_INTENTS) & (u_specific[idx] < 0.45)
        rephrase(idx, u_tpl, u_alias, specific)
        cat = t.goal_catalogue[gi]
        ent = _ragged_pick(st.t.cat_entities, np.maximum(cat, 0), u_ent[idx])
        goal_ent[idx] = np.where(cat >= 0, ent, -1)
        choose_mention(idx, u_alias)

    def rephrase(idx: np.ndarray, u_tpl: np.ndarray, u_alias: np.ndarray,
                 specific: np.ndarray | None = None) -> None:
        gi = goal_int[idx]
        cum = st.tpl_cum[gi]
        if specific is not None:
            cum = np.where(specific[idx][:, None], st.tpl_cum_specific[gi], cum)
        j = (u_tpl[idx][:, None] > cum).sum(axis=1)
        goal_tpl[idx] = st.tpl_pad[gi, np.minimum(j, st.tpl_pad.shape[1] - 1)]

    def choose_mention(idx: np.ndarray, u_alias: np.ndarray) -> None:
        has = t.tpl_has_slot[goal_tpl[idx]] & (goal_ent[idx] >= 0)
        # users mostly say the usual name, sometimes another alias
        ua = u_alias[idx]
        first = np.array([a[0] for a in t.ent_aliases])[np.maximum(goal_ent[idx], 0)]
        other = _ragged_pick(t.ent_aliases, np.maximum(goal_ent[idx], 0), ua * 4.0 % 1.0)
        men = np.where(ua < 0.75, first, other)
        goal_men[idx] = np.where(has, men, -1)

    u0 = rng.random((S, 5))
    base_key = np.uint64(rng.integers(0, 2**63, dtype=np.int64))
    new_goal(~is_bg, u0[:, 0], u0[:, 1], u0[:, 2], u0[:, 3], u0[:, 4])
    # a goal whose phrasing has no slot still keeps its entity for the next phrasing
    attempts = np.zeros(S, dtype=np.int64)
    next_kind = np.where(is_bg, FALSE_WAKE, GOAL)
    after_stop = np.zeros(S, dtype=np.int64)  # 0 end, 1 retry goal, 2 resume pending
    active = np.ones(S, dtype=bool)
    now = start_us.copy()

    out: list[dict[str, np.ndarray]] = []
    for pos in range(MAX_TURNS):
        # draw for every slot, active or not (common random numbers across profiles)
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        # counter-based draws: a slot's numbers depend on (batch, slot, position)
        # only, and only active slots pay for them
        u = _uniforms(base_key, idx, pos, 0, len(_U_NAMES))
        z = _normals(base_key, idx, pos, 1, len(_Z_NAMES))
        zc = _normals(base_key, idx, pos, 2, _CAT_WIDTH)
        ug = _uniforms(base_key, idx, pos, 3, W.K)
        u_all = np.zeros((S, len(_U_NAMES)))
        u_all[idx] = u
        d, e = dev[idx], env[idx]

        # what happens at this position
        kind = next_kind[idx].copy()
        fw_in = (kind != FALSE_WAKE) & (
            u[:, U["fw_in"]] < _FW_IN_SESSION * background[idx]
        )
        kind = np.where(fw_in, FALSE_WAKE, kind)
        bg_tpl = t.background_templates[
            np.minimum((u[:, U["bg_tpl"]] * len(t.background_templates)).astype(np.int64),
                       len(t.background_templates) - 1)
        ]
        stop_tpl = st.stop_tpls[
            np.minimum((u[:, U["stop_tpl"]] * len(st.stop_tpls)).astype(np.int64),
                       len(st.stop_tpls) - 1)
        ]
        truth_tpl = np.select([kind == FALSE_WAKE, kind == STOP], [bg_tpl, stop_tpl],
                              goal_tpl[idx])
        truth_men = np.where(kind == GOAL, goal_men[idx], -1)
        truth_int = np.select([kind == FALSE_WAKE, kind == STOP], [W.I_FALLBACK, W.I_STOP],
                              goal_int[idx])
        truth_ent = np.where(kind == GOAL, goal_ent[idx], -1)
        # a phrasing without a slot does not convey the entity
        truth_ent = np.where(truth_men >= 0, truth_ent, -1)

        r = _pipeline(st, prof, kind, d, e, loc[idx], app[idx], clarity[idx], new_voice[idx],
                      truth_tpl,
                      truth_men, truth_int, truth_ent, u, z, zc, ug)

        # ---- the user's experience and reaction -----------------------------
        # served: right and done (an unservable request or a question back is not done)
        satisfied = r["outcome_ok"] & (r["status"] == 0)
        goal_turn = kind == GOAL
        failed = goal_turn & ~satisfied
        fw_acted = (kind == FALSE_WAKE) & r["did_action"]
        # wrong content starting to play is interrupted more than a spoken apology
        wrong_action = failed & r["did_action"]
        p_barge = np.where(failed, np.where(wrong_action, 0.45, 0.25), 0.05) + np.where(
            fw_acted, 0.25, 0.0
        )
        barge = u[:, U["barge"]] < p_barge
        ue = u[:, U["explicit"]]
        p_neg = np.where(failed & (r["label"] != 0), 0.11, 0.004)
        explicit = np.where(ue < p_neg, 1, np.where(ue > 1.0 - np.where(satisfied, 0.02, 0.002),
                                                   2, 0))
        explicit = np.where(kind == GOAL, explicit, np.where(fw_acted & (ue < 0.05), 1, 0))

        # gap to the next turn: speaking, thinking, the response (cut short by a barge-in)
        resp_ms = np.where(barge, 900.0, 2600.0)
        base_gap = r["audio_ms"] + r["asr_lat"] + r["res_lat"] + resp_ms

        nxt = next_kind[idx].copy()
        aft = after_stop[idx].copy()
        att = attempts[idx].copy()
        alive = np.ones(len(idx), dtype=bool)
        think = np.zeros(len(idx))
        react = u[:, U["react"]]
        react2 = u[:, U["react2"]]
        zg = np.exp(0.5 * z[:, Z["gap"]])
        new_goal_mask = np.zeros(len(idx), dtype=bool)
        similar_mask = np.zeros(len(idx), dtype=bool)
        rephrase_mask = np.zeros(len(idx), dtype=bool)

        # false wake: maybe the user says "stop" if the device did something
        bg_sess = is_bg[idx]
        say_stop = (kind == FALSE_WAKE) & r["did_action"] & (react < 0.5)
        nxt = np.where(say_stop, STOP, nxt)
        aft = np.where(say_stop, np.where(bg_sess, 0, 2), aft)
        think = np.where(kind == FALSE_WAKE, np.where(say_stop, 1200.0, 6000.0) * zg, think)
        alive &= ~((kind == FALSE_WAKE) & bg_sess & ~say_stop)
        nxt = np.where((kind == FALSE_WAKE) & ~say_stop & ~bg_sess, next_kind[idx], nxt)

        # stop turn: end, retry the goal, or carry on with what was pending
        is_stop_turn = kind == STOP
        alive &= ~(is_stop_turn & (aft == 0))
        nxt = np.where(is_stop_turn, GOAL, nxt)
        rephrase_mask |= is_stop_turn & (aft == 1)
        think = np.where(is_stop_turn, 4000.0 * zg, think)

        # goal turn, satisfied: a new goal (sometimes a similar one) or the end
        cont = satisfied & goal_turn & (react < 0.62 - 0.04 * pos)
        alive &= ~(satisfied & goal_turn & ~cont)
        similar = cont & (react2 < 0.16)
        new_goal_mask |= cont
        similar_mask |= similar
        think = np.where(cont, np.where(similar, 7000.0, 22000.0) * zg * zg, think)
        att = np.where(satisfied & goal_turn, 0, att)

        # an unservable request that was handled correctly: rephrase a little, else move on
        unsup_ok = goal_turn & r["outcome_ok"] & (truth_int == W.I_UNSUPPORTED)
        unsup_rephrase = unsup_ok & (react < 0.25)
        unsup_new = unsup_ok & ~unsup_rephrase & (react < 0.6)
        alive &= ~(unsup_ok & ~unsup_rephrase & ~unsup_new)
        rephrase_mask |= unsup_rephrase
        new_goal_mask |= unsup_new
        think = np.where(unsup_ok, np.where(unsup_rephrase, 3500.0, 15000.0) * zg, think)

        # goal turn, not satisfied (a failure or a clarification question)
        unhappy = failed & ~unsup_ok
        att = np.where(unhappy, att + 1, att)
        gave_up = unhappy & (att >= 3)
        alive &= ~(gave_up & (react < 0.6))
        new_goal_mask |= gave_up & (react >= 0.6)
        live = unhappy & ~gave_up
        # rephrase .46, repeat .20, stop+retry .10, stop+end .06, abandon .10, new goal .08
        cut = np.array([0.46, 0.66, 0.76, 0.82, 0.92, 1.0])
        choice = (react[:, None] > cut[None, :]).sum(axis=1)
        # a clarification question is answered by rephrasing
        choice = np.where(r["clarified"], 0, choice)
        rephrase_mask |= live & (choice == 0)
        repeat = live & (choice == 1)
        stop_retry = live & (choice == 2)
        stop_end = live & (choice == 3)
        abandon = live & (choice == 4)
        moveon = live & (choice == 5)
        nxt = np.where(stop_retry | stop_end, STOP, nxt)
        aft = np.where(stop_retry, 1, np.where(stop_end, 0, aft))
        alive &= ~abandon
        new_goal_mask |= moveon
        think = np.where(
            live,
            np.select(
                [choice == 0, choice == 1, (choice == 2) | (choice == 3)],
                [3200.0, 1800.0, 900.0],
                12000.0,
            )
            * zg,
            think,
        )
        think = np.where(gave_up, 15000.0 * zg, think)
        nxt = np.where(goal_turn & ~(stop_retry | stop_end), GOAL, nxt)
        nxt = np.where(new_goal_mask | rephrase_mask | repeat, GOAL, nxt)

        # ---- record the turn ------------------------------------------------
        r.update(
            slot=idx,
            pos=np.full(len(idx), pos),
            ts=now[idx],
            kind=kind,
            dev=d,
            loc=loc[idx],
            app=app[idx],
            new_voice=new_voice[idx],
            truth_int=truth_int,
            truth_ent=truth_ent,
            truth_tpl=truth_tpl,
            truth_men=truth_men,
            barge=barge,
            explicit=explicit,
            feedback_logged=feedback_logged[idx],
            annotator=(u[:, U["annotator"]] * annotator_pool).astype(np.int64),
            ann_u=u[:, U["ann_flip"]],
            ann_u2=u[:, U["ann_pick"]],
            next_reaction=np.select(
                [~alive, rephrase_mask, repeat, nxt == STOP, new_goal_mask],
                [0, 1, 2, 3, 4],
                5,
            ),
        )
        out.append(r)

        # ---- apply the transitions ------------------------------------------
        gslots = idx
        now[gslots] = now[gslots] + (base_gap + think).astype(np.int64) * 1000
        next_kind[gslots] = nxt
        after_stop[gslots] = aft
        attempts[gslots] = np.where(new_goal_mask, 0, att)
        full = np.zeros(S, dtype=bool)
        full[gslots[new_goal_mask]] = True
        keep = np.zeros(S, dtype=bool)
        keep[gslots[similar_mask]] = True
        new_goal(full, u_all[:, U["new_intent"]], u_all[:, U["new_tpl"]],
                 u_all[:, U["new_ent"]], u_all[:, U["new_alias"]], u_all[:, U["specific"]],
                 keep_intent=keep)
        reph = np.zeros(S, dtype=bool)
        reph[gslots[rephrase_mask]] = True
        ridx = np.flatnonzero(reph)
        if len(ridx):
            # misunderstood users mostly say it more explicitly
            explicit_next = np.zeros(S, dtype=bool)
            explicit_next[gslots[rephrase_mask & failed]] = True
            explicit_next &= u_all[:, U["similar"]] < 0.75
            rephrase(ridx, u_all[:, U["new_tpl"]], u_all[:, U["new_alias"]], explicit_next)
            # after a clarification, users tend to name the thing differently
            choose_mention(ridx, (u_all[:, U["new_alias"]] + 0.5) % 1.0)
        active[gslots[~alive]] = False
        if pos == MAX_TURNS - 1:
            break

    flat = {k: np.concatenate([o[k] for o in out]) for k in out[0]}
    order = np.lexsort((flat["pos"], flat["slot"]))
    return {k: v[order] for k, v in flat.items()}
