"""Simulation profiles: the baseline assistant and named regressions.

A profile changes exactly one mechanism of the simulated pipeline. Every random
draw is made the same way whatever the profile (common random numbers), so a
regression night and its baseline with the same seed differ only where the
mechanism acted and in what followed from it (the users' reactions).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    """Knobs of one simulated night. Defaults are the baseline assistant.

    Attributes
    ----------
    name, description
        Identification; the description says what changes and by how much.
    asr_extra_difficulty
        Acoustic difficulty added per device type (raises ASR error rates and
        lowers ASR confidence, as a worse acoustic model would).
    asr_overconfidence
        Logit added to every ASR confidence. With extra difficulty it models speakers
        the recogniser was not tuned to: more errors at the same logged confidence
        (the meaning of a confidence changes: conditional shift, not only prior shift).
    er_outage_catalogue, er_outage_rate
        Share of entity lookups in one catalogue that fail (index unavailable).
    result_error_extra
        Extra probability of a service error, per domain (``"*"``: every domain).
    false_wake_mult
        Multiplier of the false-wake rate per device type.
    device_weights
        Share of sessions per device type (empty: the baseline mix). Only who uses
        the assistant moves; every component behaves as before (a prior shift).
    new_voice_share, new_voice_error, new_voice_notice
        A hidden speaker population (voices and accents the acoustic model never
        trained on): the share of sessions, the acoustic difficulty its ASR *errors*
        follow on top of the difficulty the confidence follows, and how much of an
        error's usual confidence drop the recogniser still shows (1: all). ASR is
        wrong more often at the same reported confidence: a conditional shift.
    expected
        The documented effect: ``{class: (scope, low, high)}`` bounds on the
        ratio of the class rate under this profile to the baseline rate, where
        scope is ``"all"`` or ``"device=<type>"`` / ``"domain=<name>"`` (the domain NLU
        assigned). Measured on 200,000 turns (seed 1); tests check it. Classes not listed
        move by less than 15% (what the change pre-empts downstream, users' reactions).
    """

    name: str
    description: str
    asr_extra_difficulty: dict[str, float] = field(default_factory=dict)
    asr_overconfidence: float = 0.0
    er_outage_catalogue: str | None = None
    er_outage_rate: float = 0.0
    result_error_extra: dict[str, float] = field(default_factory=dict)
    false_wake_mult: dict[str, float] = field(default_factory=dict)
    device_weights: dict[str, float] = field(default_factory=dict)
    new_voice_share: float = 0.0
    new_voice_error: float = 0.0
    new_voice_notice: float = 1.0
    expected: dict[str, tuple[str, float, float]] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("baseline", "The assistant as it usually behaves."),
        Profile(
            "asr_farfield",
            "ASR regression on far-field speakers: +0.45 acoustic difficulty on `speaker` "
            "devices (more misrecognised content words and names, lower ASR confidence).",
            asr_extra_difficulty={"speaker": 0.45},
            expected={"asr": ("device=speaker", 1.55, 1.95)},
        ),
        Profile(
            "clarity_shift",
            "New speaker population: +0.3 acoustic difficulty on every device with the "
            "ASR confidence 0.6 logit higher, so more recognition errors at the same "
            "logged confidence (conditional shift).",
            asr_extra_difficulty=dict.fromkeys(("speaker", "screen", "phone", "car", "tv"), 0.3),
            asr_overconfidence=0.6,
            # misheard names that used to fail at ER now fail at ASR
            expected={"asr": ("all", 1.4, 1.65), "er": ("all", 0.7, 0.9)},
        ),
        Profile(
            "er_outage_music",
            "Entity-resolution outage for music: 60% of music catalogue lookups fail "
            "(entity unresolved, slow lookup).",
            er_outage_catalogue="music",
            er_outage_rate=0.6,
            # misheard names ER used to recover now fail too: their failure point is asr
            expected={"er": ("domain=music", 5.5, 8.0), "asr": ("all", 1.03, 1.2)},
        ),
        Profile(
            "result_outage",
            "Result-service outage: +8 points of service errors in every domain.",
            result_error_extra={"*": 0.08},
            expected={"result": ("all", 1.95, 2.45)},
        ),
        Profile(
            "false_wake_tv",
            "False-wake surge on TV sticks: false-wake rate x4 on `tv` devices.",
            false_wake_mult={"tv": 4.0},
            expected={"false_wake": ("device=tv", 3.4, 4.3)},
        ),
        Profile(
            "speaker_shift",
            "New voices (conditional shift): half the sessions are spoken by a hidden "
            "speaker population the acoustic model never trained on; ASR errs as if the "
            "audio were 0.35 harder while its confidence only sees the usual difficulty, "
            "and it notices half of its usual drop on its own errors (over-confident): "
            "more ASR errors at the same reported confidence.",
            new_voice_share=0.5,
            new_voice_error=0.35,
            new_voice_notice=0.5,
            expected={"asr": ("all", 1.22, 1.42)},
        ),
        Profile(
            "speaker_shift_mild",
            "Milder new voices (conditional shift): 30% of the sessions from the hidden "
            "speaker population; ASR errs as if the audio were 0.2 harder, and notices "
            "80% of its usual confidence drop on its own errors.",
            new_voice_share=0.3,
            new_voice_error=0.2,
            new_voice_notice=0.8,
            expected={"asr": ("all", 1.05, 1.2)},
        ),
        Profile(
            "device_mix",
            "Traffic drift (prior shift only): a phone-app launch moves the device mix to "
            "phones 45%, speakers 18%, cars 15%, screens 12%, TV sticks 10%; no component "
            "changes, so each device's failure rates stay as they were.",
            device_weights={"speaker": 0.18, "screen": 0.12, "phone": 0.45, "car": 0.15,
                            "tv": 0.10},
            # fewer far-field speakers and TV sticks: fewer ASR errors and false wakes
            expected={"asr": ("all", 0.85, 0.94), "false_wake": ("all", 0.85, 1.0)},
        ),
    )
}
