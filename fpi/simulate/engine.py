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
the profile nor on which other sessions are still active (counter-based draws,
:mod:`fpi.simulate.draws`), so profiles are compared with common random numbers.

Layout: :func:`run_batch` loops over positions (:func:`_utterance`, :func:`_pipeline`,
:func:`_feedback`, :func:`_react`, :func:`_advance`); :func:`_pipeline` is one function
per stage (:func:`_wake`, :func:`_asr`, :func:`_nlu`, :func:`_er`, the result service's
:func:`_route_intent`, :func:`_route_entity` and :func:`_serve`, :func:`_gold_label`),
each passing a small record (:class:`Asr`, :class:`Nlu`, :class:`Er`, :class:`Reply`...)
to the next.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from fpi.simulate import world
from fpi.simulate.draws import (
    ER_NOISE_WIDTH,
    UNIFORM_INDEX,
    UNIFORM_NAMES,
    TurnDraws,
    turn_draws,
)
from fpi.simulate.profiles import Profile

#: Turn kinds.
FALSE_WAKE, GOAL, STOP = 0, 1, 2
#: Intents whose plain "play X" phrasing is ambiguous between media.
MEDIA_INTENTS = np.array([world.I_MUSIC, world.I_VIDEO, world.I_AUDIOBOOK])
#: Longest session (turns); longer ones are cut, as a session timeout would.
MAX_TURNS = 20
#: Session start times are spread over one day from here.
DAY_START = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
DAY_START_US = int(DAY_START.timestamp() * 1_000_000)

#: Largest catalogue: width of the per-entity ER noise.
_CAT_WIDTH = ER_NOISE_WIDTH

#: The default assistant's response phrasing per response kind ("{x}": a name or the
#: mention); styles and languages phrase the same kinds their own way.
RESPONSES: tuple[str, ...] = tuple(v[0] for v in world.ENGLISH.responses)
#: Success response per intent (index into RESPONSES).
_SUCCESS_RESPONSE = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 12])
#: Action verb per intent (empty: no action).
ACTION_VERBS: tuple[str, ...] = (
    "turn_on", "turn_off", "open", "play_music", "play_video", "play_audiobook", "weather",
    "add_to_list", "set_timer", "answer", "", "stop", "",
)
STATUS_NAMES: tuple[str, ...] = ("success", "error", "no_action", "clarification")
ER_STATUS_NAMES: tuple[str, ...] = ("resolved", "unresolved", "ambiguous")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pick(p_rows: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Row-wise categorical draw: index where the cumulative probability passes
    ``uniform``."""
    cum = np.cumsum(p_rows, axis=1)
    cum[:, -1] = 1.0 + 1e-9
    return (uniform[:, None] > cum).sum(axis=1)


_PADDED: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _padded(table: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``table`` as a padded matrix and row lengths (cached: the tables are static)."""
    key = id(table)
    if key not in _PADDED:
        width = max(len(row) for row in table)
        pad = np.full((len(table), width), -1, dtype=np.int64)
        counts = np.zeros(len(table), dtype=np.int64)
        for i, row in enumerate(table):
            pad[i, : len(row)] = row
            counts[i] = len(row)
        _PADDED[key] = (pad, counts)
    return _PADDED[key]


def _ragged_pick(
    table: tuple[np.ndarray, ...], rows: np.ndarray, uniform: np.ndarray
) -> np.ndarray:
    """Pick uniformly one element of ``table[row]`` per row (-1 where empty)."""
    pad, counts = _padded(table)
    lengths = counts[rows]
    column = np.minimum((uniform * lengths).astype(np.int64), np.maximum(lengths - 1, 0))
    return np.where(lengths > 0, pad[rows, column], -1)


class _Static:
    """Per-process precomputations on top of one language's world tables."""

    def __init__(self, language: str = "en") -> None:
        tables = world.tables(language)
        self.tables = tables
        lang = world.get_language(language)
        self.locale_weights = np.array(lang.locale_weights)
        self.locale_accent = np.array(lang.locale_accent)
        if max(len(c) for c in tables.cat_entities) > _CAT_WIDTH:
            raise ValueError(f"{language}: a catalogue is wider than {_CAT_WIDTH} entries")
        # padded per-intent template choice
        self.intent_tpl = tables.intent_templates
        self.intent_tpl_p = tables.intent_template_p
        width = max(len(x) for x in tables.intent_templates)
        self.tpl_pad = np.zeros((world.K, width), dtype=np.int64)
        self.tpl_cum = np.ones((world.K, width))
        for k, (ids, p) in enumerate(zip(tables.intent_templates, tables.intent_template_p,
                                         strict=True)):
            if len(ids):
                self.tpl_pad[k, : len(ids)] = ids
                self.tpl_pad[k, len(ids) :] = ids[-1]
                self.tpl_cum[k, : len(ids)] = np.cumsum(p)
        # phrasings that say unmistakably which intent is meant ("watch X", "read X"):
        # what users switch to after being misunderstood
        self.tpl_cum_specific = self.tpl_cum.copy()
        for k, ids in enumerate(tables.intent_templates):
            if not len(ids):
                continue
            cue = tables.tpl_cue[ids]
            others = np.delete(cue, k, axis=1).max(axis=1)
            specific = (cue[:, k] > 0) & (cue[:, k] - others >= 0.2)
            if specific.any():
                p = np.where(specific, tables.intent_template_p[k], 0.0)
                p = p / p.sum()
                self.tpl_cum_specific[k, : len(ids)] = np.cumsum(p)
        # padded catalogue membership for ER
        n_cat = len(world.CATALOGUES)
        self.cat_pad = np.full((n_cat, _CAT_WIDTH), -1, dtype=np.int64)
        for c, ents in enumerate(tables.cat_indexed):
            self.cat_pad[c, : len(ents)] = ents
        # goal entity per intent: catalogue members
        self.stop_tpls = tables.intent_templates[world.I_STOP]
        # a mention is "genuinely ambiguous" in a catalogue when two entries match it exactly
        exact = tables.sim >= 0.999
        self.men_dup = np.zeros((len(tables.men_text), n_cat), dtype=bool)
        for c, ents in enumerate(tables.cat_indexed):
            self.men_dup[:, c] = exact[:, ents].sum(axis=1) >= 2
        # what a duration mention denotes (timers are parsed, not resolved)
        dur = tables.cat_entities[world.CATALOGUES.index("duration")]
        best = tables.sim[:, dur].argmax(axis=1)
        self.men_duration = np.where(tables.sim[:, dur].max(axis=1) >= 0.85, dur[best], -1)
        self.intent_has_slot = tables.intent_catalogue >= 0
        self.intent_resolves = np.array([it.resolves for it in world.INTENTS])
        self.mention_of_alias = tables.ent_aliases


_STATIC: dict[str, _Static] = {}


def static(language: str = "en") -> _Static:
    """The shared precomputed tables of a language (built on first use)."""
    if language not in _STATIC:
        _STATIC[language] = _Static(language)
    return _STATIC[language]


# ---------------------------------------------------------------------------
# One turn per active session: the pipeline
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Speaker:
    """Who speaks a turn, on what and where (a row per turn)."""

    device: np.ndarray
    environment: np.ndarray
    locale: np.ndarray
    app: np.ndarray
    clarity: np.ndarray
    #: (hidden) speakers of a population the acoustic model never trained on
    new_voice: np.ndarray


@dataclass(frozen=True)
class Utterance:
    """What the user said and meant (or the background phrase of a false wake)."""

    kind: np.ndarray
    template: np.ndarray
    mention: np.ndarray
    intent: np.ndarray
    entity: np.ndarray

    @property
    def false_wake(self) -> np.ndarray:
        return self.kind == FALSE_WAKE


@dataclass(frozen=True)
class Wake:
    """The trigger's scores."""

    score: np.ndarray
    device_directed: np.ndarray


@dataclass(frozen=True)
class Heard:
    """What ASR recognised, and its (hidden) errors."""

    template: np.ndarray
    mention: np.ndarray
    function_error: np.ndarray
    content_error: np.ndarray
    #: a misheard entity name (``entity_error`` also counts a truncated one)
    misheard_entity: np.ndarray
    truncated: np.ndarray

    @property
    def entity_error(self) -> np.ndarray:
        return self.misheard_entity | self.truncated


@dataclass(frozen=True)
class NBest:
    """ASR's alternatives after the top hypothesis (three columns, ``valid`` where listed)."""

    templates: np.ndarray
    mentions: np.ndarray
    confidences: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class Asr:
    """The recogniser's output."""

    heard: Heard
    confidence: np.ndarray
    audio_ms: np.ndarray
    latency_ms: np.ndarray
    nbest: NBest


@dataclass(frozen=True)
class Nlu:
    """The intent NLU chose, its runners-up and the slot it filled."""

    intent: np.ndarray
    confidence: np.ndarray
    alternatives: np.ndarray
    alternative_confidences: np.ndarray
    alternatives_valid: np.ndarray
    slot_catalogue: np.ndarray
    slot_present: np.ndarray
    slot_confidence: np.ndarray


@dataclass(frozen=True)
class Er:
    """Entity resolution of the recognised mention in NLU's catalogue."""

    resolves: np.ndarray
    catalogue: np.ndarray
    status: np.ndarray
    score: np.ndarray
    resolved: np.ndarray
    latency_ms: np.ndarray
    best: np.ndarray
    second: np.ndarray
    outage: np.ndarray
    index_fault: np.ndarray
    genuine_duplicate: np.ndarray

    @property
    def resolved_ok(self) -> np.ndarray:
        return self.resolves & (self.status == 0)

    @property
    def unresolved(self) -> np.ndarray:
        return self.resolves & (self.status == 1)

    @property
    def ambiguous(self) -> np.ndarray:
        return self.resolves & (self.status == 2)


@dataclass
class Reply:
    """The result service's answer, decided step by step (:func:`_route_intent`,
    :func:`_route_entity`, :func:`_serve`)."""

    status: np.ndarray
    response: np.ndarray
    #: entity whose name fills the response's ``{x}`` ...
    response_entity: np.ndarray
    #: ... or the mention that fills it
    response_mention: np.ndarray
    action_entity: np.ndarray
    acted: np.ndarray
    timer_value: np.ndarray


@dataclass(frozen=True)
class Service:
    """What went wrong once the service acted, and how long it took."""

    error: np.ndarray
    wrong: np.ndarray
    latency_ms: np.ndarray


@dataclass(frozen=True)
class Judgement:
    """The gold label and the per-stage verdicts it came from."""

    label: np.ndarray
    outcome_ok: np.ndarray
    nlu_ok: np.ndarray
    er_ok: np.ndarray


def _pipeline(
    static: _Static, profile: _ProfileArrays, speaker: Speaker, said: Utterance,
    draws: TurnDraws,
) -> dict[str, np.ndarray]:
    """Run one turn per row through wake, ASR, NLU, ER and result; label it.

    Each stage reads only the previous stage's output; the label is computed last
    from the outputs and the truth (``said``). Returns per-row columns (outputs,
    label, and the hidden error flags the tests check the story with).
    """
    wake = _wake(speaker, said.false_wake, draws)
    asr = _asr(static, profile, speaker, said, draws)
    nlu = _nlu(static, speaker, asr.heard, draws)
    er = _er(static, profile, asr.heard, nlu, draws)
    # the result service acts on NLU's intent and ER's entity
    reply = _route_intent(static, asr.heard.mention, nlu, draws)
    _route_entity(reply, asr.heard.mention, nlu, er, draws)
    service = _serve(static, profile, reply, nlu, er, draws)
    judgement = _gold_label(static, said, asr.heard, nlu, er, reply, service)
    return _turn_columns(wake, asr, nlu, er, reply, service, judgement)


def _wake(speaker: Speaker, false_wake: np.ndarray, draws: TurnDraws) -> Wake:
    """The trigger fires on the user or on background speech.

    Scores overlap: near-field TV audio looks like a user, a mumbling user does not.
    """
    device, environment = speaker.device, speaker.environment
    tv_bias = np.where(device == world.DEVICE_TYPES.index("tv"), 0.7, 0.0)
    wake_logit = (np.where(false_wake, 0.9 + tv_bias, 2.1 - 1.2 * world.ENV_NOISE[environment])
                  + 0.9 * draws.normal("wake"))
    directed_logit = (
        np.where(false_wake, 0.1 + 0.5 * tv_bias, 1.9 - 0.8 * world.DEVICE_FARFIELD[device])
        + 1.0 * draws.normal("dd")
    )
    return Wake(score=_sigmoid(wake_logit), device_directed=_sigmoid(directed_logit))


def _asr_difficulty(
    static: _Static, profile: _ProfileArrays, speaker: Speaker, false_wake: np.ndarray,
    draws: TurnDraws,
) -> np.ndarray:
    """How hard the turn is to hear: room, distance, accent, speaker, profile."""
    device = speaker.device
    difficulty = (
        world.ENV_NOISE[speaker.environment]
        + 0.35 * world.DEVICE_FARFIELD[device]
        + static.locale_accent[speaker.locale]
        + 0.1 * speaker.clarity
        + 0.08 * draws.normal("clarity_turn")
        + profile.asr_extra[device]
        + np.where(false_wake, 0.3, 0.0)
    )
    return np.clip(difficulty, 0.0, 1.6)


def _mishear(
    tables: world.Tables, said: Utterance, error_difficulty: np.ndarray, draws: TurnDraws
) -> Heard:
    """ASR hears the truth through the room: errors in function words, content words
    (another phrasing), the entity name (a confusable one) or a truncated name."""
    user = ~said.false_wake
    has_slot = said.mention >= 0
    function_error = user & (draws.uniform("func") < 0.05 + 0.3 * error_difficulty)
    content_error = user & (draws.uniform("content") < 0.02 + 0.15 * error_difficulty)
    entity_error = user & has_slot & (draws.uniform("entity") < 0.07 + 0.42 * error_difficulty)
    truncated = (user & has_slot & ~entity_error
                 & (draws.uniform("trunc") < 0.002 + 0.012 * error_difficulty))
    template = said.template.copy()
    template = np.where(content_error, tables.tpl_content[template], template)
    template = np.where(function_error, tables.tpl_func[template], template)
    content_changed = template != np.where(function_error, tables.tpl_func[said.template],
                                           said.template)
    mention = said.mention.copy()
    true_entity = np.where(said.mention >= 0,
                           tables.men_entity[np.maximum(said.mention, 0)], 0)
    misheard = _ragged_pick(tables.ent_mishear, true_entity, draws.uniform("mishear"))
    mention = np.where(entity_error & (misheard >= 0), misheard, mention)
    mention = np.where(truncated, -1, mention)
    return Heard(
        template=template,
        mention=mention,
        function_error=function_error,
        content_error=content_error & content_changed,
        misheard_entity=entity_error & (misheard >= 0),
        truncated=truncated,
    )


def _asr(
    static: _Static, profile: _ProfileArrays, speaker: Speaker, said: Utterance,
    draws: TurnDraws,
) -> Asr:
    """The recogniser: what it heard, its confidence, timings and n-best list."""
    tables = static.tables
    difficulty = _asr_difficulty(static, profile, speaker, said.false_wake, draws)
    heard = _mishear(tables, said, _voice_error_difficulty(difficulty, speaker.new_voice,
                                                           profile), draws)
    calibration = np.array([0.55, 0.2, -0.35, 0.1, 0.45])[speaker.device]  # far-field
    # models are overconfident; how much of its own errors the recogniser notices (less
    # on voices it never heard)
    notice = np.where(speaker.new_voice, profile.new_voice_notice, 1.0)
    logit = (
        2.5
        + calibration
        - 2.0 * difficulty
        - 1.4 * heard.content_error * notice
        - 1.0 * heard.misheard_entity * notice
        - 1.4 * heard.truncated * notice
        - 0.25 * heard.function_error
        + 0.75 * draws.normal("asr_conf")
        + profile.asr_overconfidence
    )
    confidence = _sigmoid(logit)
    mention = heard.mention
    words = tables.tpl_words[heard.template] + np.where(
        mention >= 0, tables.men_words[np.maximum(mention, 0)], 0)
    return Asr(
        heard=heard,
        confidence=confidence,
        audio_ms=np.maximum(300.0, 420.0 + 330.0 * words + 160.0 * draws.normal("asr_audio")),
        latency_ms=np.exp(5.4 + 0.25 * draws.normal("asr_lat")) + 120.0 * difficulty,
        nbest=_nbest(tables, said, heard, difficulty, confidence, draws),
    )


def _nbest(
    tables: world.Tables, said: Utterance, heard: Heard, difficulty: np.ndarray,
    confidence: np.ndarray, draws: TurnDraws,
) -> NBest:
    """The n-best list after the top hypothesis: (maybe) the truth, a function-word
    variant, another mishearing of the heard entity. More alternatives and closer
    scores when the turn is hard."""
    template, mention = heard.template, heard.mention
    any_error = heard.content_error | heard.entity_error
    n_alt = np.minimum(3, (draws.uniform("nb_n") * (1.0 + 3.2 * difficulty)).astype(np.int64))
    n_alt = np.where(any_error & (n_alt == 0) & (draws.uniform("nb_truth") < 0.5), 1, n_alt)
    truth_first = any_error & (draws.uniform("nb_truth") < 0.7)
    other_mention = _ragged_pick(
        tables.ent_mishear, np.where(mention >= 0, tables.men_entity[np.maximum(mention, 0)], 0),
        draws.uniform("nb_pick"),
    )
    other_mention = np.where(mention >= 0, other_mention, -1)
    third_is_content = draws.uniform("nb_pick2") < 0.5
    templates = np.stack([
        np.where(truth_first, said.template,
                 np.where(mention >= 0, template, tables.tpl_content[template])),
        tables.tpl_func[template],
        np.where(third_is_content, tables.tpl_content[template], tables.tpl_func[said.template]),
    ], axis=1)
    mentions = np.stack([
        np.where(truth_first, said.mention, np.where(mention >= 0, other_mention, mention)),
        mention,
        np.where(third_is_content, mention, said.mention),
    ], axis=1)
    # shares of the remaining probability mass: the truth, when present, gets a big one
    rest = 1.0 - confidence
    share = np.stack([
        np.where(truth_first, 0.55, 0.3) + 0.1 * np.abs(draws.normal("nb_c1")),
        0.18 + 0.05 * np.abs(draws.normal("nb_c2")),
        0.09 + 0.03 * np.abs(draws.normal("nb_c3")),
    ], axis=1)
    share = np.minimum(share, 0.95)
    confidences = rest[:, None] * share
    confidences = np.minimum(confidences, confidence[:, None] * 0.98)
    confidences = np.minimum.accumulate(confidences, axis=1)
    return NBest(templates=templates, mentions=mentions, confidences=confidences,
                 valid=np.arange(3)[None, :] < n_alt[:, None])


def _intent_scores(
    tables: world.Tables, device: np.ndarray, heard: Heard, nlu_noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """NLU's score of every intent (keyword cues on the recognised phrasing, the
    gazetteer on the mention, device priors, model noise) and the gazetteer's fit of
    the mention to every catalogue."""
    mention = heard.mention
    cue = tables.tpl_cue[heard.template]  # (n, K)
    gazetteer = np.where(mention[:, None] >= 0, tables.gaz[np.maximum(mention, 0)], 0.0)
    slot_catalogue = tables.intent_catalogue
    gazetteer_k = np.where(slot_catalogue[None, :] >= 0,
                           gazetteer[:, np.maximum(slot_catalogue, 0)], 0.0)
    # a slot-taking intent with a mention that fits none of its catalogue is unlikely
    fit = np.where(mention[:, None] >= 0, world.GAZ_WEIGHT * (gazetteer_k - 0.45), 0.0)
    fit = np.where(slot_catalogue[None, :] >= 0, fit,
                   np.where(mention[:, None] >= 0, -0.15, 0.0))
    score = cue + fit
    score[:, world.I_FALLBACK] = world.FALLBACK_SCORE
    # device priors: screens mean video, speakers and cars mean audio
    prior = np.zeros((len(world.DEVICE_TYPES), world.K))
    prior[:, world.I_VIDEO] = [-0.12, 0.12, 0.0, -0.2, 0.18]
    prior[:, world.I_AUDIOBOOK] = [0.06, -0.06, 0.0, 0.1, -0.12]
    score = score + prior[device]
    # NLU noise: an imperfect model (Gumbel noise makes the argmax a softmax draw)
    gumbel = -np.log(-np.log(np.clip(nlu_noise, 1e-12, 1.0 - 1e-12)))
    return score + 0.17 * gumbel, gazetteer


def _nlu(static: _Static, speaker: Speaker, heard: Heard, draws: TurnDraws) -> Nlu:
    """NLU: the best-scoring intent, its softmax confidence, two runners-up, the slot."""
    tables = static.tables
    score, gazetteer = _intent_scores(tables, speaker.device, heard, draws.nlu_noise)
    rows = np.arange(len(score))
    order = np.argsort(-score, axis=1)
    intent = order[:, 0]
    temperature = np.array([5.0, 6.5, 7.5, 9.0])[speaker.app]  # newer NLU models are
    # more overconfident
    exp = np.exp(temperature[:, None] * (score - score.max(axis=1, keepdims=True)))
    prob = exp / exp.sum(axis=1, keepdims=True)
    alternatives = order[:, 1:3]
    alternative_confidences = np.take_along_axis(prob, alternatives, axis=1)
    slot_catalogue = tables.intent_catalogue[intent]
    return Nlu(
        intent=intent,
        confidence=prob[rows, intent],
        alternatives=alternatives,
        alternative_confidences=alternative_confidences,
        alternatives_valid=alternative_confidences >= 0.03,
        slot_catalogue=slot_catalogue,
        slot_present=(slot_catalogue >= 0) & (heard.mention >= 0),
        slot_confidence=_sigmoid(-1.0 + 4.0 * gazetteer[rows, np.maximum(slot_catalogue, 0)]
                                 + 0.6 * draws.normal("slot_conf")),
    )


def _er(
    static: _Static, profile: _ProfileArrays, heard: Heard, nlu: Nlu, draws: TurnDraws
) -> Er:
    """ER: fuzzy-match the recognised mention against the catalogue NLU chose."""
    tables, mention = static.tables, heard.mention
    resolves = nlu.slot_present & static.intent_resolves[nlu.intent]
    catalogue = np.maximum(nlu.slot_catalogue, 0)
    members = static.cat_pad[catalogue]  # (n, _CAT_WIDTH)
    is_member = members >= 0
    sims = np.where(is_member,
                    tables.sim[np.maximum(mention, 0)[:, None], np.maximum(members, 0)], -1.0)
    sims = sims + 0.03 * draws.er_noise[:, : sims.shape[1]] * is_member
    # fault: the best entry is missing from the index (stale shard)
    ranked = np.argsort(-sims, axis=1)
    index_fault = resolves & (draws.uniform("er_fault") < 0.1)
    first = np.where(index_fault, ranked[:, 1], ranked[:, 0])
    second = np.where(index_fault, ranked[:, 2], ranked[:, 1])
    rows = np.arange(len(mention))
    best_score, second_score = sims[rows, first], sims[rows, second]
    outage = (resolves & (catalogue == profile.er_outage_cat)
              & (draws.uniform("er_outage") < profile.er_outage_rate))
    low_resolved = ((best_score >= 0.62) & (best_score < 0.8)
                    & (draws.uniform("er_lowres") < (best_score - 0.62) / 0.18))
    status = np.where(best_score >= 0.8,
                      np.where(best_score - second_score >= 0.1, 0, 2),
                      np.where(low_resolved, 0, 1))
    status = np.where(outage, 1, status)
    best = members[rows, first]
    latency = np.exp(3.6 + 0.35 * draws.normal("er_lat")) + np.where(
        outage, 1800.0 + 900.0 * np.abs(draws.normal("er_lat")), 0.0)
    mention0 = np.maximum(mention, 0)
    return Er(
        resolves=resolves,
        catalogue=catalogue,
        status=status,
        score=np.clip(np.where(outage, 0.0, best_score), 0.0, 1.0),
        resolved=np.where(resolves & (status == 0), best, -1),
        latency_ms=latency,
        best=best,
        second=members[rows, second],
        outage=outage,
        index_fault=index_fault,
        genuine_duplicate=(static.men_dup[mention0, catalogue] & (mention >= 0)
                           & (tables.men_kind[mention0] == 0)),
    )


def _route_intent(static: _Static, mention: np.ndarray, nlu: Nlu, draws: TurnDraws) -> Reply:
    """The service's answer from NLU's intent alone: success by default; no action for
    fallbacks and unsupported requests; a question back when a needed slot is missing
    or a timer's duration cannot be parsed."""
    intent, slot_present = nlu.intent, nlu.slot_present
    n = len(intent)
    status = np.zeros(n, dtype=np.int64)  # success
    response = _SUCCESS_RESPONSE[intent].copy()
    acted = np.ones(n, dtype=bool)
    timer_value = np.where(mention >= 0, static.men_duration[np.maximum(mention, 0)], -1)
    is_fallback = intent == world.I_FALLBACK
    is_unsupported = intent == world.I_UNSUPPORTED
    is_timer = intent == world.I_TIMER
    needs_slot = static.intent_has_slot[intent] & ~is_timer
    slot_missing = needs_slot & ~slot_present & (intent != world.I_WEATHER)
    status = np.where(is_fallback | is_unsupported, 2, status)
    response = np.where(is_fallback, 12 + (draws.uniform("res_text") < 0.4), response)
    response = np.where(is_unsupported, 10 + (draws.uniform("res_text") < 0.4), response)
    acted &= ~(is_fallback | is_unsupported)
    status = np.where(slot_missing, 3, status)
    response = np.where(slot_missing, 19, response)
    acted &= ~slot_missing
    response = np.where((intent == world.I_WEATHER) & ~slot_present, 20, response)  # weather here
    # timers: parse the duration, ask again if it cannot be parsed
    timer_bad = is_timer & (~slot_present | (timer_value < 0))
    status = np.where(timer_bad, 3, status)
    response = np.where(timer_bad, 19, response)
    acted &= ~timer_bad
    timer_ok = is_timer & ~timer_bad
    return Reply(
        status=status,
        response=response,
        response_entity=np.full(n, -1, dtype=np.int64),
        response_mention=np.where(timer_ok, mention, np.full(n, -1, dtype=np.int64)),
        action_entity=np.where(timer_ok, timer_value, np.full(n, -1, dtype=np.int64)),
        acted=acted,
        timer_value=timer_value,
    )


def _route_entity(reply: Reply, mention: np.ndarray, nlu: Nlu, er: Er,
                  draws: TurnDraws) -> None:
    """Update ``reply`` with ER's outcome: not found, which one?, or the entity."""
    intent, res_text = nlu.intent, draws.uniform("res_text")
    unresolved = er.unresolved
    # shopping lists take an unknown item as free text, questions go to web search
    free_text = unresolved & ~er.outage & np.isin(intent, [world.INTENT_INDEX["AddToListIntent"],
                                                           world.INTENT_INDEX["QuestionIntent"]])
    reply.response = np.where(free_text, np.where(intent == world.I_QUESTION, 22, 7),
                              reply.response)
    reply.response_mention = np.where(free_text, mention, reply.response_mention)
    unresolved = unresolved & ~free_text
    reply.status = np.where(unresolved, np.where(draws.uniform("unres_kind") < 0.6, 1, 2),
                            reply.status)
    reply.response = np.where(unresolved, 14 + (res_text < 0.35), reply.response)
    reply.response_mention = np.where(unresolved, mention, reply.response_mention)
    # an ER timeout is answered like a service error
    reply.response = np.where(unresolved & er.outage & (res_text < 0.5), 17, reply.response)
    # some services answer "not found" with a generic error message
    reply.response = np.where(unresolved & (draws.uniform("res_text2") < 0.15), 17,
                              reply.response)
    ambiguous = er.ambiguous
    reply.status = np.where(ambiguous, 3, reply.status)
    reply.response = np.where(ambiguous, np.where(res_text < 0.8, 16, 21), reply.response)
    reply.acted &= ~(unresolved | ambiguous)
    reply.response_entity = np.where(er.resolved_ok, er.best, reply.response_entity)
    reply.action_entity = np.where(er.resolved_ok, er.best, reply.action_entity)


def _serve(static: _Static, profile: _ProfileArrays, reply: Reply, nlu: Nlu, er: Er,
           draws: TurnDraws) -> Service:
    """Update ``reply`` with the service acting: service errors and wrong content, once
    there is something to act on; its latency; stopping says nothing."""
    tables, res_text = static.tables, draws.uniform("res_text")
    domain = world.INTENT_DOMAIN[nlu.intent]
    is_stop = nlu.intent == world.I_STOP
    serviceable = reply.acted & ~is_stop
    p_error = (0.04 + profile.result_err[domain]
               + np.where(domain == world.DOMAINS.index("knowledge"), 0.01, 0.0))
    service_error = serviceable & (draws.uniform("res_err") < p_error)
    reply.status = np.where(service_error, 1, reply.status)
    reply.response = np.where(service_error, 17 + (res_text < 0.4), reply.response)
    # ... and a failing service often says it found nothing
    reply.response = np.where(service_error & (draws.uniform("res_text2") < 0.25), 14,
                              reply.response)
    reply.acted &= ~service_error
    action_entity = reply.action_entity
    p_wrong = np.array([0.012, 0.03, 0.05, 0.05, 0.012, 0.012, 0.012, 0.07, 0.0, 0.0,
                        0.0])[domain]
    wrong = (reply.acted & ~is_stop & (action_entity >= 0)
             & (draws.uniform("res_wrong") < p_wrong))
    other = _ragged_pick(
        tables.cat_entities,
        np.where(action_entity >= 0, tables.ent_catalogue[np.maximum(action_entity, 0)], 0),
        draws.uniform("res_wrong_ent"),
    )
    wrong_entity = np.where(other == action_entity, er.second, other)
    wrong = wrong & (wrong_entity >= 0) & (wrong_entity != action_entity)
    # knowledge answers go wrong silently (same words, wrong facts)
    shown_wrong = wrong & (domain != world.DOMAINS.index("knowledge"))
    reply.action_entity = np.where(wrong, wrong_entity, action_entity)
    reply.response_entity = np.where(shown_wrong, wrong_entity, reply.response_entity)
    latency = np.exp(5.6 + 0.45 * draws.normal("res_lat")) + np.where(
        service_error & (res_text < 0.5), 2500.0, 0.0)
    reply.response = np.where(is_stop, -1, reply.response)
    return Service(error=service_error, wrong=wrong, latency_ms=latency)


def _gold_label(static: _Static, said: Utterance, heard: Heard, nlu: Nlu, er: Er,
                reply: Reply, service: Service) -> Judgement:
    """Compare each stage's output with the user's goal: the earliest unrecovered error."""
    tables = static.tables
    truth_intent, truth_entity = said.intent, said.entity
    mention0 = np.maximum(heard.mention, 0)
    truth_resolves = static.intent_resolves[truth_intent] & (truth_entity >= 0)
    nlu_ok = nlu.intent == truth_intent
    truth_indexed = tables.ent_indexed[np.maximum(truth_entity, 0)]
    said_right = ((heard.mention >= 0) & (tables.men_kind[mention0] == 0)
                  & (tables.men_entity[mention0] == truth_entity))
    er_ok = (
        ~truth_resolves
        | (er.resolved_ok & (er.resolved == truth_entity))
        | (er.ambiguous & er.genuine_duplicate)
        | (er.unresolved & ~er.outage & ~truth_indexed & said_right)
    )
    er_ok = er_ok & ~(~truth_resolves & er.resolves & (truth_intent != world.I_UNSUPPORTED))
    value_ok = np.where(truth_intent == world.I_TIMER, reply.timer_value == truth_entity, True)
    slot_missing = (static.intent_has_slot[truth_intent] & (truth_entity >= 0)
                    & ~nlu.slot_present)
    result_ok = ~service.error & ~service.wrong
    outcome_ok = nlu_ok & er_ok & value_ok & result_ok & ~slot_missing
    label = np.full(len(truth_intent), 0, dtype=np.int64)  # correct
    bad = ~outcome_ok
    asr_fault = ((heard.content_error & ~nlu_ok)
                 | (heard.entity_error & (~nlu_ok | ~er_ok | ~value_ok | slot_missing)))
    label = np.where(bad & asr_fault, 2, label)
    label = np.where(bad & ~asr_fault & ~nlu_ok, 3, label)
    label = np.where(bad & ~asr_fault & nlu_ok & (~er_ok | slot_missing), 4, label)
    label = np.where(bad & ~asr_fault & nlu_ok & er_ok & ~slot_missing & ~value_ok, 2, label)
    label = np.where(bad & ~asr_fault & nlu_ok & er_ok & ~slot_missing & value_ok, 5, label)
    label = np.where(said.false_wake, 1, label)
    return Judgement(label=label, outcome_ok=outcome_ok, nlu_ok=nlu_ok, er_ok=er_ok)


def _turn_columns(wake: Wake, asr: Asr, nlu: Nlu, er: Er, reply: Reply, service: Service,
                  judgement: Judgement) -> dict[str, np.ndarray]:
    """The stages' outputs as the engine's flat per-turn columns."""
    heard, nbest = asr.heard, asr.nbest
    is_stop = nlu.intent == world.I_STOP
    return {
        "wake_score": wake.score,
        "dd_score": wake.device_directed,
        "asr_tpl": heard.template,
        "asr_men": heard.mention,
        "asr_conf": asr.confidence,
        "audio_ms": asr.audio_ms,
        "asr_lat": asr.latency_ms,
        "alt_tpl": nbest.templates,
        "alt_men": nbest.mentions,
        "alt_conf": nbest.confidences,
        "alt_valid": nbest.valid,
        "nlu_int": nlu.intent,
        "nlu_conf": nlu.confidence,
        "nlu_alt_int": nlu.alternatives,
        "nlu_alt_conf": nlu.alternative_confidences,
        "nlu_alt_valid": nlu.alternatives_valid,
        "slot_present": nlu.slot_present,
        "slot_conf": nlu.slot_confidence,
        "er_present": er.resolves,
        "er_status": er.status,
        "er_score": er.score,
        "er_resolved": er.resolved,
        "er_lat": er.latency_ms,
        "status": reply.status,
        "resp": reply.response,
        "resp_x": reply.response_entity,
        "resp_x_men": reply.response_mention,
        "amb_a": er.best,
        "amb_b": er.second,
        "action_int": np.where(reply.acted, nlu.intent, -1),
        "action_ent": np.where(reply.acted, reply.action_entity, -1),
        "res_lat": service.latency_ms,
        "label": judgement.label,
        "outcome_ok": judgement.outcome_ok,
        "clarified": reply.status == 3,
        "e_func": heard.function_error,
        "e_content": heard.content_error,
        "e_entity": heard.entity_error,
        "nlu_ok": judgement.nlu_ok,
        "er_ok": judgement.er_ok,
        "svc_err": service.error,
        "wrong": service.wrong,
        "genuine_amb": er.ambiguous & er.genuine_duplicate,
        "er_fault": er.index_fault | er.outage,
        "did_action": reply.acted & ~is_stop,
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
        weights = world.DEVICE_WEIGHTS
        if profile.device_weights:
            weights = np.array([profile.device_weights[d] for d in world.DEVICE_TYPES])
            weights = weights / weights.sum()
        self.device_weights = weights
        self.new_voice_share = profile.new_voice_share
        self.new_voice_error = profile.new_voice_error
        self.new_voice_notice = profile.new_voice_notice
        self.asr_extra = np.array(
            [profile.asr_extra_difficulty.get(d, 0.0) for d in world.DEVICE_TYPES]
        )
        self.er_outage_cat = (
            world.CATALOGUES.index(profile.er_outage_catalogue)
            if profile.er_outage_catalogue
            else -99
        )
        self.er_outage_rate = profile.er_outage_rate
        self.asr_overconfidence = profile.asr_overconfidence
        self.result_err = np.array(
            [
                profile.result_error_extra.get(d, profile.result_error_extra.get("*", 0.0))
                for d in world.DOMAINS
            ]
        )
        self.fw_mult = np.array([profile.false_wake_mult.get(d, 1.0) for d in world.DEVICE_TYPES])


# ---------------------------------------------------------------------------
# Sessions: users, goals and reactions, position by position
# ---------------------------------------------------------------------------

#: Probability a session is only background noise (one false wake), per environment;
#: multiplied per device by the profile.
_BG_SESSION = 0.16
#: Probability a user turn is preceded by a false wake, per unit of background.
_FW_IN_SESSION = 0.05
#: Annotators labelling the turns (ids a01..a12).
_ANNOTATORS = 12
#: What the user does after a failed turn, by cumulative probability: rephrase .46,
#: repeat .20, stop+retry .10, stop+end .06, abandon .10, new goal .08.
_UNHAPPY_CHOICES = np.array([0.46, 0.66, 0.76, 0.82, 0.92, 1.0])


@dataclass
class Sessions:
    """The sessions of a batch: who they are (fixed) and where they stand (updated
    after every turn). A row per session."""

    device: np.ndarray
    environment: np.ndarray
    locale: np.ndarray
    app: np.ndarray
    clarity: np.ndarray
    new_voice: np.ndarray
    #: how much background speech the room has (false wakes)
    background: np.ndarray
    #: sessions that are only background noise (one false wake)
    background_only: np.ndarray
    #: users of the oldest app version do not send feedback events
    feedback_logged: np.ndarray
    # the goal the user pursues, and how they phrase it
    goal_intent: np.ndarray
    goal_entity: np.ndarray
    goal_template: np.ndarray
    goal_mention: np.ndarray
    # where each session stands
    now_us: np.ndarray
    next_kind: np.ndarray
    after_stop: np.ndarray  # 0 end, 1 retry goal, 2 resume pending
    attempts: np.ndarray
    active: np.ndarray

    def speaker(self, rows: np.ndarray) -> Speaker:
        """The speakers of the sessions ``rows``."""
        return Speaker(self.device[rows], self.environment[rows], self.locale[rows],
                       self.app[rows], self.clarity[rows], self.new_voice[rows])


@dataclass(frozen=True)
class GoalDraws:
    """The uniforms a new goal (or a new phrasing of one) draws from, a row per session."""

    intent: np.ndarray
    template: np.ndarray
    entity: np.ndarray
    alias: np.ndarray
    specific: np.ndarray


def _start_sessions(
    static: _Static, profile: _ProfileArrays, rng: np.random.Generator, n_sessions: int
) -> tuple[Sessions, np.uint64]:
    """Draw the sessions' users, devices, rooms and first goals; and the batch's key for
    the counter-based draws of its turns."""
    head = rng.random((n_sessions, 8))
    device = _pick(np.broadcast_to(profile.device_weights, (n_sessions, len(world.DEVICE_TYPES))),
                   head[:, 0])
    environment = _pick(world.ENV_GIVEN_DEVICE[device], head[:, 1])
    locale = _pick(np.broadcast_to(static.locale_weights,
                                   (n_sessions, len(static.locale_weights))), head[:, 2])
    app = _pick(np.broadcast_to(world.APP_WEIGHTS, (n_sessions, len(world.APP_VERSIONS))),
                head[:, 3])
    clarity = rng.standard_normal(n_sessions)
    background = world.ENV_BACKGROUND[environment] * profile.fw_mult[device]
    background_only = head[:, 4] < _BG_SESSION * background
    start_us = DAY_START_US + (head[:, 5] * 86_400e3).astype(np.int64) * 1000  # ms
    sessions = Sessions(
        device=device, environment=environment, locale=locale, app=app, clarity=clarity,
        # a hidden speaker population (profiles): the last head column, unused otherwise
        new_voice=head[:, 7] < profile.new_voice_share,
        background=background, background_only=background_only, feedback_logged=app != 0,
        goal_intent=_pick(world.GOAL_MIX[device], head[:, 6]),
        goal_entity=np.full(n_sessions, -1, dtype=np.int64),
        goal_template=np.zeros(n_sessions, dtype=np.int64),
        goal_mention=np.full(n_sessions, -1, dtype=np.int64),
        now_us=start_us.copy(),
        next_kind=np.where(background_only, FALSE_WAKE, GOAL),
        after_stop=np.zeros(n_sessions, dtype=np.int64),
        attempts=np.zeros(n_sessions, dtype=np.int64),
        active=np.ones(n_sessions, dtype=bool),
    )
    first = rng.random((n_sessions, 5))
    key = np.uint64(rng.integers(0, 2**63, dtype=np.int64))
    _new_goal(static, sessions, ~background_only,
              GoalDraws(first[:, 0], first[:, 1], first[:, 2], first[:, 3], first[:, 4]))
    return sessions, key


def _new_goal(static: _Static, sessions: Sessions, mask: np.ndarray, draws: GoalDraws,
              keep_intent: np.ndarray | None = None) -> None:
    """Give the sessions in ``mask`` a new goal (the same intent where ``keep_intent``):
    intent, phrasing, entity, mention."""
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        return
    intent = _pick(world.GOAL_MIX[sessions.device[rows]], draws.intent[rows])
    if keep_intent is not None:
        intent = np.where(keep_intent[rows], sessions.goal_intent[rows], intent)
    sessions.goal_intent[rows] = intent
    # people who know "play X" is ambiguous often say which medium they mean
    specific = np.zeros(len(mask), dtype=bool)
    specific[rows] = np.isin(intent, MEDIA_INTENTS) & (draws.specific[rows] < 0.45)
    _rephrase(static, sessions, rows, draws.template, specific)
    catalogue = static.tables.goal_catalogue[intent]
    entity = _ragged_pick(static.tables.cat_entities, np.maximum(catalogue, 0),
                          draws.entity[rows])
    sessions.goal_entity[rows] = np.where(catalogue >= 0, entity, -1)
    _choose_mention(static, sessions, rows, draws.alias)


def _rephrase(static: _Static, sessions: Sessions, rows: np.ndarray, u_template: np.ndarray,
              specific: np.ndarray | None = None) -> None:
    """A new phrasing of the goal of sessions ``rows`` (an unmistakable one where
    ``specific``)."""
    intent = sessions.goal_intent[rows]
    cum = static.tpl_cum[intent]
    if specific is not None:
        cum = np.where(specific[rows][:, None], static.tpl_cum_specific[intent], cum)
    choice = (u_template[rows][:, None] > cum).sum(axis=1)
    sessions.goal_template[rows] = static.tpl_pad[
        intent, np.minimum(choice, static.tpl_pad.shape[1] - 1)]


def _choose_mention(static: _Static, sessions: Sessions, rows: np.ndarray,
                    u_alias: np.ndarray) -> None:
    """How the users of sessions ``rows`` name their goal's entity: mostly the usual
    name, sometimes another alias; nothing when the phrasing has no slot."""
    tables = static.tables
    entity = sessions.goal_entity[rows]
    has = tables.tpl_has_slot[sessions.goal_template[rows]] & (entity >= 0)
    alias = u_alias[rows]
    first = np.array([a[0] for a in tables.ent_aliases])[np.maximum(entity, 0)]
    other = _ragged_pick(tables.ent_aliases, np.maximum(entity, 0), alias * 4.0 % 1.0)
    mention = np.where(alias < 0.75, first, other)
    sessions.goal_mention[rows] = np.where(has, mention, -1)


def _utterance(static: _Static, sessions: Sessions, rows: np.ndarray,
               draws: TurnDraws) -> Utterance:
    """What the sessions ``rows`` say at this position: their goal, a "stop", or
    background speech that woke the device (before a user turn, sometimes)."""
    tables = static.tables
    kind = sessions.next_kind[rows].copy()
    false_wake_first = (kind != FALSE_WAKE) & (
        draws.uniform("fw_in") < _FW_IN_SESSION * sessions.background[rows])
    kind = np.where(false_wake_first, FALSE_WAKE, kind)
    background = tables.background_templates
    background_template = background[
        np.minimum((draws.uniform("bg_tpl") * len(background)).astype(np.int64),
                   len(background) - 1)]
    stops = static.stop_tpls
    stop_template = stops[np.minimum((draws.uniform("stop_tpl") * len(stops)).astype(np.int64),
                                     len(stops) - 1)]
    is_false_wake, is_stop = kind == FALSE_WAKE, kind == STOP
    mention = np.where(kind == GOAL, sessions.goal_mention[rows], -1)
    entity = np.where(kind == GOAL, sessions.goal_entity[rows], -1)
    return Utterance(
        kind=kind,
        template=np.select([is_false_wake, is_stop], [background_template, stop_template],
                           sessions.goal_template[rows]),
        mention=mention,
        intent=np.select([is_false_wake, is_stop], [world.I_FALLBACK, world.I_STOP],
                         sessions.goal_intent[rows]),
        # a phrasing without a slot does not convey the entity
        entity=np.where(mention >= 0, entity, -1),
    )


@dataclass(frozen=True)
class Feedback:
    """The user's experience of a turn and their immediate reaction to it."""

    satisfied: np.ndarray
    failed: np.ndarray
    barge_in: np.ndarray
    explicit: np.ndarray  # 0 none, 1 negative, 2 positive
    #: speaking, processing and the response (cut short by a barge-in), in ms
    busy_ms: np.ndarray


def _feedback(said: Utterance, turn: dict[str, np.ndarray], draws: TurnDraws) -> Feedback:
    """Served (right and done: an unservable request or a question back is not done) or
    failed; barge-ins and explicit feedback follow."""
    satisfied = turn["outcome_ok"] & (turn["status"] == 0)
    failed = (said.kind == GOAL) & ~satisfied
    false_wake_acted = said.false_wake & turn["did_action"]
    # wrong content starting to play is interrupted more than a spoken apology
    wrong_action = failed & turn["did_action"]
    p_barge = np.where(failed, np.where(wrong_action, 0.45, 0.25), 0.05) + np.where(
        false_wake_acted, 0.25, 0.0)
    barge_in = draws.uniform("barge") < p_barge
    u_explicit = draws.uniform("explicit")
    p_negative = np.where(failed & (turn["label"] != 0), 0.11, 0.004)
    explicit = np.where(u_explicit < p_negative, 1, np.where(
        u_explicit > 1.0 - np.where(satisfied, 0.02, 0.002), 2, 0))
    explicit = np.where(said.kind == GOAL, explicit,
                        np.where(false_wake_acted & (u_explicit < 0.05), 1, 0))
    response_ms = np.where(barge_in, 900.0, 2600.0)
    busy_ms = turn["audio_ms"] + turn["asr_lat"] + turn["res_lat"] + response_ms
    return Feedback(satisfied=satisfied, failed=failed, barge_in=barge_in, explicit=explicit,
                    busy_ms=busy_ms)


@dataclass
class NextTurn:
    """What each session does after its turn, decided case by case (:func:`_react`)."""

    kind: np.ndarray
    after_stop: np.ndarray
    attempts: np.ndarray
    alive: np.ndarray
    #: the user's pause before the next turn, in ms
    think_ms: np.ndarray
    new_goal: np.ndarray
    similar_goal: np.ndarray
    rephrase: np.ndarray
    repeat: np.ndarray

    def reaction(self) -> np.ndarray:
        """0 end, 1 rephrase, 2 repeat, 3 stop, 4 new goal, 5 carry on."""
        return np.select([~self.alive, self.rephrase, self.repeat, self.kind == STOP,
                          self.new_goal], [0, 1, 2, 3, 4], 5)


def _after_false_wake_or_stop(state: NextTurn, said: Utterance, did_action: np.ndarray,
                              background_only: np.ndarray, pending: np.ndarray,
                              react: np.ndarray, pause: np.ndarray) -> None:
    """A false wake: maybe the user says "stop" if the device did something. A stop
    turn: end, retry the goal, or carry on with what was pending."""
    false_wake = said.false_wake
    say_stop = false_wake & did_action & (react < 0.5)
    state.kind = np.where(say_stop, STOP, state.kind)
    state.after_stop = np.where(say_stop, np.where(background_only, 0, 2), state.after_stop)
    state.think_ms = np.where(false_wake, np.where(say_stop, 1200.0, 6000.0) * pause,
                              state.think_ms)
    state.alive &= ~(false_wake & background_only & ~say_stop)
    state.kind = np.where(false_wake & ~say_stop & ~background_only, pending, state.kind)
    is_stop = said.kind == STOP
    state.alive &= ~(is_stop & (state.after_stop == 0))
    state.kind = np.where(is_stop, GOAL, state.kind)
    state.rephrase |= is_stop & (state.after_stop == 1)
    state.think_ms = np.where(is_stop, 4000.0 * pause, state.think_ms)


def _after_goal(state: NextTurn, said: Utterance, feedback: Feedback, turn: dict[str, np.ndarray],
                position: int, draws: TurnDraws, pause: np.ndarray) -> None:
    """A goal turn: satisfied users move on (or end); an unservable request handled
    right is rephrased a little or dropped; failures are retried, up to a point."""
    react, goal_turn, failed = draws.uniform("react"), said.kind == GOAL, feedback.failed
    done = feedback.satisfied & goal_turn
    carry_on = done & (react < 0.62 - 0.04 * position)
    state.alive &= ~(done & ~carry_on)
    similar = carry_on & (draws.uniform("react2") < 0.16)
    state.new_goal |= carry_on
    state.similar_goal |= similar
    state.think_ms = np.where(carry_on, np.where(similar, 7000.0, 22000.0) * pause * pause,
                              state.think_ms)
    state.attempts = np.where(done, 0, state.attempts)
    unsupported_ok = goal_turn & turn["outcome_ok"] & (said.intent == world.I_UNSUPPORTED)
    unsupported_rephrase = unsupported_ok & (react < 0.25)
    unsupported_new = unsupported_ok & ~unsupported_rephrase & (react < 0.6)
    state.alive &= ~(unsupported_ok & ~unsupported_rephrase & ~unsupported_new)
    state.rephrase |= unsupported_rephrase
    state.new_goal |= unsupported_new
    state.think_ms = np.where(
        unsupported_ok, np.where(unsupported_rephrase, 3500.0, 15000.0) * pause, state.think_ms)
    # not satisfied (a failure or a clarification question)
    unhappy = failed & ~unsupported_ok
    state.attempts = np.where(unhappy, state.attempts + 1, state.attempts)
    gave_up = unhappy & (state.attempts >= 3)
    state.alive &= ~(gave_up & (react < 0.6))
    state.new_goal |= gave_up & (react >= 0.6)
    stop = _after_failure(state, unhappy & ~gave_up, turn["clarified"], react, pause)
    state.think_ms = np.where(gave_up, 15000.0 * pause, state.think_ms)
    state.kind = np.where(goal_turn & ~stop, GOAL, state.kind)
    state.kind = np.where(state.new_goal | state.rephrase | state.repeat, GOAL, state.kind)


def _after_failure(state: NextTurn, live: np.ndarray, clarified: np.ndarray, react: np.ndarray,
                   pause: np.ndarray) -> np.ndarray:
    """A user still trying: rephrase, repeat, stop and retry, stop and end, abandon, or
    move on (a clarification question is answered by rephrasing). Returns who says
    "stop" next."""
    choice = (react[:, None] > _UNHAPPY_CHOICES[None, :]).sum(axis=1)
    choice = np.where(clarified, 0, choice)
    state.rephrase |= live & (choice == 0)
    state.repeat = live & (choice == 1)
    stop_retry, stop_end = live & (choice == 2), live & (choice == 3)
    state.kind = np.where(stop_retry | stop_end, STOP, state.kind)
    state.after_stop = np.where(stop_retry, 1, np.where(stop_end, 0, state.after_stop))
    state.alive &= ~(live & (choice == 4))
    state.new_goal |= live & (choice == 5)
    state.think_ms = np.where(
        live,
        np.select([choice == 0, choice == 1, (choice == 2) | (choice == 3)],
                  [3200.0, 1800.0, 900.0], 12000.0) * pause,
        state.think_ms,
    )
    return stop_retry | stop_end


def _react(sessions: Sessions, rows: np.ndarray, said: Utterance, feedback: Feedback,
           turn: dict[str, np.ndarray], position: int, draws: TurnDraws) -> NextTurn:
    """The user's reaction to the turn: what each session does next, and when."""
    n = len(rows)
    state = NextTurn(
        kind=sessions.next_kind[rows].copy(), after_stop=sessions.after_stop[rows].copy(),
        attempts=sessions.attempts[rows].copy(), alive=np.ones(n, dtype=bool),
        think_ms=np.zeros(n), new_goal=np.zeros(n, dtype=bool),
        similar_goal=np.zeros(n, dtype=bool), rephrase=np.zeros(n, dtype=bool),
        repeat=np.zeros(n, dtype=bool),
    )
    pause = np.exp(0.5 * draws.normal("gap"))
    _after_false_wake_or_stop(state, said, turn["did_action"], sessions.background_only[rows],
                              sessions.next_kind[rows], draws.uniform("react"), pause)
    _after_goal(state, said, feedback, turn, position, draws, pause)
    return state


def _advance(static: _Static, sessions: Sessions, rows: np.ndarray, state: NextTurn,
             feedback: Feedback, uniforms: np.ndarray) -> None:
    """Move the sessions ``rows`` on: the clock, the next kind of turn, new goals and
    new phrasings; end the sessions that ended. ``uniforms``: the turn's uniform draws
    as a row per session of the batch."""
    sessions.now_us[rows] = (sessions.now_us[rows]
                             + (feedback.busy_ms + state.think_ms).astype(np.int64) * 1000)
    sessions.next_kind[rows] = state.kind
    sessions.after_stop[rows] = state.after_stop
    sessions.attempts[rows] = np.where(state.new_goal, 0, state.attempts)
    n_sessions = len(sessions.device)
    new_goal = np.zeros(n_sessions, dtype=bool)
    new_goal[rows[state.new_goal]] = True
    keep_intent = np.zeros(n_sessions, dtype=bool)
    keep_intent[rows[state.similar_goal]] = True

    def uniform(name: str) -> np.ndarray:
        return uniforms[:, UNIFORM_INDEX[name]]

    _new_goal(static, sessions, new_goal,
              GoalDraws(uniform("new_intent"), uniform("new_tpl"), uniform("new_ent"),
                        uniform("new_alias"), uniform("specific")),
              keep_intent=keep_intent)
    rephrase = np.zeros(n_sessions, dtype=bool)
    rephrase[rows[state.rephrase]] = True
    rephrased = np.flatnonzero(rephrase)
    if len(rephrased):
        # misunderstood users mostly say it more explicitly
        explicit_next = np.zeros(n_sessions, dtype=bool)
        explicit_next[rows[state.rephrase & feedback.failed]] = True
        explicit_next &= uniform("similar") < 0.75
        _rephrase(static, sessions, rephrased, uniform("new_tpl"), explicit_next)
        # after a clarification, users tend to name the thing differently
        _choose_mention(static, sessions, rephrased, (uniform("new_alias") + 0.5) % 1.0)
    sessions.active[rows[~state.alive]] = False


def _record(turn: dict[str, np.ndarray], sessions: Sessions, rows: np.ndarray, position: int,
            said: Utterance, feedback: Feedback, state: NextTurn, draws: TurnDraws) -> None:
    """Add the turn's identity, truth, feedback and annotation draws to its columns."""
    turn.update(
        slot=rows,
        pos=np.full(len(rows), position),
        ts=sessions.now_us[rows],
        kind=said.kind,
        dev=sessions.device[rows],
        loc=sessions.locale[rows],
        app=sessions.app[rows],
        new_voice=sessions.new_voice[rows],
        truth_int=said.intent,
        truth_ent=said.entity,
        truth_tpl=said.template,
        truth_men=said.mention,
        barge=feedback.barge_in,
        explicit=feedback.explicit,
        feedback_logged=sessions.feedback_logged[rows],
        annotator=(draws.uniform("annotator") * _ANNOTATORS).astype(np.int64),
        ann_u=draws.uniform("ann_flip"),
        ann_u2=draws.uniform("ann_pick"),
        next_reaction=state.reaction(),
    )


def run_batch(
    profile: Profile, rng: np.random.Generator, n_sessions: int, language: str = "en"
) -> dict[str, np.ndarray]:
    """Simulate ``n_sessions`` sessions; return flat per-turn columns (unsorted).

    Columns ``slot`` (session index within the batch) and ``pos`` (turn index)
    identify each turn; the rest are stage outputs, the label and hidden truth.
    ``language`` picks the world's text (catalogues, phrasings; see
    :mod:`fpi.simulate.language`); the mechanics are the same in every language.
    Every active session emits its next turn at once, position by position.
    """
    st = static(language)
    profile_arrays = _ProfileArrays(profile)
    sessions, key = _start_sessions(st, profile_arrays, rng, n_sessions)
    turns: list[dict[str, np.ndarray]] = []
    for position in range(MAX_TURNS):
        rows = np.flatnonzero(sessions.active)
        if len(rows) == 0:
            break
        draws = turn_draws(key, rows, position)
        said = _utterance(st, sessions, rows, draws)
        turn = _pipeline(st, profile_arrays, sessions.speaker(rows), said, draws)
        feedback = _feedback(said, turn, draws)
        state = _react(sessions, rows, said, feedback, turn, position, draws)
        _record(turn, sessions, rows, position, said, feedback, state, draws)
        turns.append(turn)
        uniforms = np.zeros((n_sessions, len(UNIFORM_NAMES)))
        uniforms[rows] = draws.uniforms
        _advance(st, sessions, rows, state, feedback, uniforms)
    flat = {k: np.concatenate([turn[k] for turn in turns]) for k in turns[0]}
    order = np.lexsort((flat["pos"], flat["slot"]))
    return {k: v[order] for k, v in flat.items()}
