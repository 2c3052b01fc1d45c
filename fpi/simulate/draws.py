"""The simulator's random numbers: counter-based, named, a row per session.

A session's numbers depend only on (batch key, session, turn position, stream,
column), not on the profile nor on which other sessions are still active, so
profiles are compared with common random numbers and a shorter run is a prefix of
a longer one. Each turn draws :data:`UNIFORM_NAMES` uniforms and
:data:`NORMAL_NAMES` normals (looked up by name in :class:`TurnDraws`), plus ER's
and NLU's per-entry noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fpi.simulate import world

#: The named uniform and normal draws of every turn (columns of :class:`TurnDraws`).
UNIFORM_NAMES = (
    "fw_in", "bg_tpl", "stop_tpl", "func", "content", "entity", "trunc", "mishear",
    "nb_truth", "nb_n", "er_fault", "er_lowres", "er_outage", "res_err", "res_wrong",
    "res_wrong_ent", "res_text", "unres_kind", "barge", "explicit", "react", "react2",
    "new_intent", "new_tpl", "new_ent", "new_alias", "similar", "gap", "fb_app",
    "ann_flip", "ann_pick", "annotator", "res_text2", "nb_pick", "nb_pick2", "specific",
)
NORMAL_NAMES = (
    "wake", "dd", "clarity_turn", "asr_conf", "asr_audio", "asr_lat", "nlu_conf",
    "er_lat", "res_lat", "gap", "slot_conf", "er_score", "nb_c1", "nb_c2", "nb_c3",
)
UNIFORM_INDEX = {name: i for i, name in enumerate(UNIFORM_NAMES)}
NORMAL_INDEX = {name: i for i, name in enumerate(NORMAL_NAMES)}
#: Largest catalogue: width of the per-entity ER noise.
ER_NOISE_WIDTH = max(len(c) for c in world.tables().cat_entities)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective scramble of 64-bit counters."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def counter_uniforms(
    key: np.uint64, slots: np.ndarray, pos: int, stream: int, n: int
) -> np.ndarray:
    """Uniforms in [0, 1) for (slot, position, stream, column): counter-based, so a
    slot's numbers do not depend on which other slots are active."""
    with np.errstate(over="ignore"):
        row = mix(key ^ mix(slots.astype(np.uint64) * np.uint64(64 * 8)
                            + np.uint64(pos * 8 + stream) + GOLDEN))
        x = mix(row[:, None] + np.arange(1, n + 1, dtype=np.uint64)[None, :] * GOLDEN)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def counter_normals(
    key: np.uint64, slots: np.ndarray, pos: int, stream: int, n: int
) -> np.ndarray:
    """Standard normals (Box-Muller on :func:`counter_uniforms`)."""
    u = counter_uniforms(key, slots, pos, stream + 16, 2 * n)
    radius = np.sqrt(-2.0 * np.log1p(-u[:, :n]))
    return radius * np.cos(2.0 * np.pi * u[:, n:])


@dataclass(frozen=True)
class TurnDraws:
    """One turn position's random numbers, a row per active session, looked up by name."""

    uniforms: np.ndarray  # (n, len(UNIFORM_NAMES))
    normals: np.ndarray  # (n, len(NORMAL_NAMES))
    er_noise: np.ndarray  # (n, ER_NOISE_WIDTH) normals: noise on ER's score of each entry
    nlu_noise: np.ndarray  # (n, world.K) uniforms: NLU's Gumbel noise per intent

    def uniform(self, name: str) -> np.ndarray:
        """The uniform draw ``name`` (one of ``UNIFORM_NAMES``) of every row."""
        return self.uniforms[:, UNIFORM_INDEX[name]]

    def normal(self, name: str) -> np.ndarray:
        """The standard normal draw ``name`` (one of ``NORMAL_NAMES``) of every row."""
        return self.normals[:, NORMAL_INDEX[name]]


def turn_draws(key: np.uint64, rows: np.ndarray, position: int) -> TurnDraws:
    """The random numbers of the turn at ``position`` of sessions ``rows``: counter-based,
    they depend on (batch, session, position) only, and only active sessions pay."""
    return TurnDraws(
        uniforms=counter_uniforms(key, rows, position, 0, len(UNIFORM_NAMES)),
        normals=counter_normals(key, rows, position, 1, len(NORMAL_NAMES)),
        er_noise=counter_normals(key, rows, position, 2, ER_NOISE_WIDTH),
        nlu_noise=counter_uniforms(key, rows, position, 3, world.K),
    )
