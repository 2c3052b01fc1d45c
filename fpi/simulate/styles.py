"""Assistant styles: assistants unlike the default one, for the same simulated users.

A style is what another team's assistant does differently *in its logs and its
words*: the language its users speak (a :class:`~fpi.simulate.language.Language`:
catalogues, phrasings, ASR confusions, NLU cues, responses), whether it names
the resolved entity or just says "OK.", how its apologies and questions back are
phrased, how its recogniser's and NLU's confidences are calibrated and on what
scale they are logged, and which fields its clients log at all. The generative
story and the gold label are the same as the default assistant's (the label is
still derived from the stage outputs and the hidden truth, never logged): an
English style with the same seed has exactly the default's turns and labels, only
logged differently, so style effects can be measured in isolation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fpi.errors import InputError
from fpi.simulate import world
from fpi.simulate.draws import GOLDEN, mix
from fpi.simulate.language import TERSE_KINDS, Language, ResponseTable

Scale = Literal["unit", "percent", "logit"]


@dataclass(frozen=True)
class ConfidenceLog:
    """How a stage's confidence is calibrated and logged.

    Attributes
    ----------
    slope, shift
        The logged confidence is ``sigmoid(slope * logit(p) + shift)`` of the default
        assistant's ``p``: ``slope > 1`` or ``shift > 0`` is over-confident, ``slope < 1``
        squeezes everything towards the middle (under-confident).
    scale
        ``unit``: the spec's field in [0, 1]. ``percent``: an integer 0-100 logged as an
        extra field (``<stage>.score``), the spec's field absent. ``logit``: the raw
        log-odds logged as an extra field (``<stage>.logit``), the spec's field absent.
    step
        Quantisation of a ``unit`` confidence (0.05: values 0.00, 0.05, ...); 0: none.
    """

    slope: float = 1.0
    shift: float = 0.0
    scale: Scale = "unit"
    step: float = 0.0

    @property
    def is_identity(self) -> bool:
        """Logs exactly the default assistant's values."""
        return self == ConfidenceLog()

    def calibrate(self, p: np.ndarray) -> np.ndarray:
        """The recalibrated confidence (still a probability-like number in [0, 1])."""
        if self.slope == 1.0 and self.shift == 0.0:
            return p
        return 1.0 / (1.0 + np.exp(-self.log_odds(p)))

    def log_odds(self, p: np.ndarray) -> np.ndarray:
        """``slope * logit(p) + shift``: the value a ``logit`` scale logs."""
        q = np.clip(p, 1e-4, 1.0 - 1e-4)
        return self.slope * np.log(q / (1.0 - q)) + self.shift


@dataclass(frozen=True)
class AssistantStyle:
    """One simulated assistant's language, phrasing, calibration and logging.

    Attributes
    ----------
    name, description
        Identification; the description says what differs from ``default``.
    language
        Code of the world's language pack (``en``, ``de``, ``es``, ``ja``).
    confirmations
        ``name``: success responses name the resolved entity ("Playing Dune (2021).");
        ``terse``: they do not ("OK.", "Done.").
    responses
        A response table replacing the language's usual phrasing (apologies, questions
        back...), or None.
    asr_confidence, nlu_confidence
        Calibration and scale of the ASR and NLU confidences (and of the n-best and
        the NLU alternatives).
    log_nbest, log_nlu_alternatives, log_latency
        Whether the clients log the n-best list, NLU's alternatives, the stage
        latencies.
    feedback_from
        The oldest app version (of 4.2.1, 4.3.0, 4.3.2, 5.0.0) that sends feedback
        events; None: no client does.
    """

    name: str
    description: str
    language: str = "en"
    confirmations: Literal["name", "terse"] = "name"
    responses: ResponseTable | None = None
    asr_confidence: ConfidenceLog = field(default_factory=ConfidenceLog)
    nlu_confidence: ConfidenceLog = field(default_factory=ConfidenceLog)
    log_nbest: bool = True
    log_nlu_alternatives: bool = True
    log_latency: bool = True
    feedback_from: str | None = "4.3.0"

    @property
    def lang(self) -> Language:
        """The style's language pack."""
        return world.get_language(self.language)

    def feedback_logged(self, app: np.ndarray) -> np.ndarray:
        """Whether a turn's client (app version index) logs feedback events."""
        if self.feedback_from is None:
            return np.zeros(len(app), dtype=bool)
        return app >= world.APP_VERSIONS.index(self.feedback_from)


def response_table(style: AssistantStyle) -> ResponseTable:
    """Variants per response kind: the language's (or the style's) phrasing, with
    terse confirmations in place of the named ones when the style says so."""
    table = style.responses or style.lang.responses
    if style.confirmations == "terse":
        terse = style.lang.confirmations
        table = tuple(terse if kind in TERSE_KINDS else variants
                      for kind, variants in enumerate(table))
    return table


#: A terse English assistant's own phrasing: no "sorry", no "did you mean".
_TERSE_EN: ResponseTable = (
    ("OK.",), ("OK.",), ("OK.",), ("OK.",), ("OK.",), ("OK.",),
    ("{x}: 14 degrees, partly cloudy.", "Partly cloudy in {x}, 14 degrees."),
    ("OK.",), ("OK.",),
    ("{x}: here's a summary.", "From the encyclopedia: {x}."),
    ("I can't do that yet.", "That's not supported."),
    ("That's not supported here.", "Not available."),
    ("Hmm?", "Come again?"),
    ("No idea, I'm afraid.", "Hmm, not sure."),
    ("Couldn't find {x}.", "No results for {x}."),
    ("Nothing called {x}.", "{x}? No match."),
    ("Which one: {x}?", "{x}, which one?"),
    ("That didn't work.", "Something broke. Try again."),
    ("Something's off on my end. Try again in a bit.", "Service unavailable."),
    ("What should I do with that?", "And then?"),
    ("14 degrees, partly cloudy.", "Partly cloudy, 14 degrees."),
    ("Which one?", "Which?"),
    ("Top web result for {x}.", "Web result: {x}."),
)

STYLES: dict[str, AssistantStyle] = {
    style.name: style
    for style in (
        AssistantStyle("default", "The default simulated assistant (docs/simulator.md)."),
        AssistantStyle(
            "terse",
            "English; confirms with \"OK.\" instead of naming the entity; apologies and "
            "questions back in its own words (no \"sorry\", no \"did you mean\"); ASR "
            "confidence logged as an integer 0-100 (extra `asr.score`), n-best without "
            "confidences; NLU under-confident.",
            confirmations="terse",
            responses=_TERSE_EN,
            asr_confidence=ConfidenceLog(scale="percent"),
            nlu_confidence=ConfidenceLog(slope=0.45, shift=-0.3),
        ),
        AssistantStyle(
            "legacy",
            "English, old clients: no n-best, no NLU alternatives, no latencies, feedback "
            "only from app 5.0.0; ASR and NLU over-confident, confidences in steps of 0.05.",
            asr_confidence=ConfidenceLog(slope=1.6, shift=1.2, step=0.05),
            nlu_confidence=ConfidenceLog(slope=1.8, shift=1.0, step=0.05),
            log_nbest=False,
            log_nlu_alternatives=False,
            log_latency=False,
            feedback_from="5.0.0",
        ),
        AssistantStyle(
            "de",
            "German (de-DE, de-AT, de-CH); names the entity; ASR confidence logged as raw "
            "log-odds (extra `asr.logit`), n-best without confidences; NLU under-confident.",
            language="de",
            asr_confidence=ConfidenceLog(slope=0.8, shift=-0.4, scale="logit"),
            nlu_confidence=ConfidenceLog(slope=0.6),
        ),
        AssistantStyle(
            "es",
            "Spanish (es-ES, es-MX, es-US, es-AR); terse confirmations (\"Vale.\", "
            "\"Hecho.\"); ASR over-confident; no NLU alternatives.",
            language="es",
            confirmations="terse",
            asr_confidence=ConfidenceLog(slope=1.4, shift=0.8),
            log_nlu_alternatives=False,
        ),
        AssistantStyle(
            "ja",
            "Japanese (ja-JP, written without spaces); names the entity; ASR confidence "
            "logged as an integer 0-100 (extra `asr.score`); no feedback events; no "
            "latencies.",
            language="ja",
            asr_confidence=ConfidenceLog(scale="percent"),
            nlu_confidence=ConfidenceLog(slope=1.3, shift=0.5),
            log_latency=False,
            feedback_from=None,
        ),
    )
}


def get_style(style: str | AssistantStyle) -> AssistantStyle:
    """Look a style up by name (an :class:`AssistantStyle` passes through)."""
    if isinstance(style, AssistantStyle):
        return style
    try:
        return STYLES[style]
    except KeyError:
        raise InputError(
            f"unknown assistant style {style!r}; known styles: {', '.join(STYLES)}"
        ) from None




def turn_uniforms(seed: int, session: np.ndarray, turn: np.ndarray, salt: int) -> np.ndarray:
    """Uniforms in [0, 1) keyed by (seed, session number, turn index, salt): the style's
    own draws (which phrasing variant), independent of the engine's random numbers."""
    with np.errstate(over="ignore"):
        key = mix(np.array([seed % 2**64], dtype=np.uint64) * GOLDEN + np.uint64(salt))
        counter = session.astype(np.uint64) * np.uint64(64) + turn.astype(np.uint64)
        x = mix(key ^ mix(counter + GOLDEN))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
