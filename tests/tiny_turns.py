"""A tiny, deterministic, learnable frame of canonical turns, shared by the tests.

``make_turns`` is imported by test modules and by ``conftest.py`` (the session's model
is trained on ``make_turns(300, seed=0)``); it is a helper module, not a test module.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from fpi.schema import CLASSES, TURN_SCHEMA

T0 = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
_REQUESTS = [
    ("smart_home", "TurnOnIntent", "device", "turn on the kitchen lights", "kitchen lights"),
    ("music", "PlayMusicIntent", "artist", "play songs by the beatles", "the beatles"),
    ("weather", "GetWeatherIntent", "city", "what is the weather in paris", "paris"),
    ("timer", "SetTimerIntent", "duration", "set a timer for ten minutes", "ten minutes"),
    ("shopping", "AddToListIntent", "item", "add milk to my shopping list", "milk"),
]


def turn(
    sid: str, idx: int, cls: str, rng: np.random.Generator, req: int, when: datetime
) -> dict[str, Any]:
    domain, intent, slot, text, value = _REQUESTS[req]
    other = _REQUESTS[(req + 1) % len(_REQUESTS)]
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    wake = {"detected": True, "score": u(0.7, 1), "device_directed_score": u(0.7, 1)}
    heard, conf = text, u(0.8, 1)
    runner = text.replace("the ", "a ", 1)
    if cls == "false_wake":
        wake["device_directed_score"] = u(0.0, 0.4)
        heard, conf, runner = "the news tonight", u(0.2, 0.6), "news tonight"
    if cls == "asr":
        heard, runner, conf = text.replace(value, "garbage store"), text, u(0.3, 0.6)
    dom, inte, nconf = domain, intent, u(0.8, 1)
    if cls == "nlu":
        dom, inte, nconf = other[0], other[1], u(0.3, 0.6)
    mention = value if cls != "asr" else "garbage store"
    status, resolved, score = "resolved", value.title(), u(0.8, 1)
    if cls in ("er", "asr"):
        status, resolved, score = "unresolved", None, u(0.0, 0.4)
    rstatus, response = "success", f"OK, {value}."
    if cls == "result":
        rstatus, response = "error", "Sorry, something went wrong."
    if cls in ("er", "asr"):
        rstatus, response = "error", f"Sorry, I couldn't find {mention}."
    return {
        "schema_version": 1,
        "session_id": sid,
        "turn_index": idx,
        "timestamp": when,
        "device": {"type": "speaker", "has_screen": False, "locale": "en-US", "app_version": "1"},
        "wake": wake,
        "asr": {
            "text": heard,
            "confidence": conf,
            "nbest": [{"text": heard, "confidence": conf},
                      {"text": runner, "confidence": conf / 3}],
            "audio_ms": u(800, 3000),
            "latency_ms": u(100, 400),
        },
        "nlu": {
            "domain": dom,
            "intent": inte,
            "confidence": nconf,
            "alternatives": [{"domain": other[0] if cls != "nlu" else domain,
                              "intent": other[1] if cls != "nlu" else intent,
                              "confidence": (1 - nconf) / 2}],
            "slots": [{"name": slot, "value": mention, "confidence": u(0.5, 1)}],
        },
        "er": {
            "entities": [{"slot": slot, "mention": mention, "resolved_id": resolved and "id1",
                          "resolved_name": resolved, "score": score, "status": status}],
            "latency_ms": u(10, 60),
        },
        "result": {"status": rstatus, "action": "do" if rstatus == "success" else None,
                   "response_text": response, "latency_ms": u(50, 300)},
        "feedback": {"barge_in": cls != "correct" and rng.random() < 0.3,
                     "explicit": "negative" if cls != "correct" and rng.random() < 0.1 else None},
        "label": {"failure_point": cls, "annotator": "a1",
                  "failure_point_2": cls if rng.random() < 0.9 else str(rng.choice(CLASSES))},
        "extra": None,
    }


def make_turns(n_sessions: int = 40, seed: int = 0, labels: bool = True) -> pl.DataFrame:
    """Canonical frame of ``n_sessions`` small sessions; each class appears often enough."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for s in range(n_sessions):
        when = T0 + timedelta(minutes=7 * s)
        n_turns = int(rng.integers(1, 5))
        for i in range(n_turns):
            cls = CLASSES[int(rng.integers(0, len(CLASSES)))]
            rows.append(turn(f"s{seed}-{s:04d}", i, cls, rng, int(rng.integers(0, 5)), when))
            when += timedelta(seconds=float(rng.uniform(3, 20)))
    frame = pl.DataFrame(rows, schema=TURN_SCHEMA)
    if not labels:
        frame = frame.with_columns(pl.lit(None, dtype=TURN_SCHEMA["label"]).alias("label"))
    return frame
