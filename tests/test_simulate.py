"""The simulator: canonical output, determinism, the causal story, profiles, CLI."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from fpi.cli import app
from fpi.schema import CLASSES, TURN_SCHEMA
from fpi.simulate import PROFILES, simulate, simulate_frame, write_simulation
from fpi.simulate import engine as E
from fpi.simulate import world as W

runner = CliRunner()

ASR, NLU, ER, RESULT, CORRECT, FALSE_WAKE = (CLASSES.index(c) for c in
                                             ("asr", "nlu", "er", "result", "correct",
                                              "false_wake"))


#: Turns of each profile's night (and of the baseline ``frame``): at this size every
#: documented range that leaves out 1 still does with its 4-s.e. allowance (the closest,
#: speaker_shift_mild's, starts at 1.008), and each ratio lies 4 or more s.e. inside it.
NIGHT = 10_000


def _frame(turns: int, **kwargs: Any) -> pl.DataFrame:
    """:func:`simulate_frame` in one batch a tenth larger than ``turns``.

    A default batch runs the engine on 20,000 turns' worth of sessions however few turns
    it keeps; a batch sized to the run simulates only what the test reads. Same seed and
    batch size: the same turns, as the tests compare.
    """
    return simulate_frame(turns, batch_size=turns + turns // 10, **kwargs)


@pytest.fixture(scope="module")
def cols() -> dict[str, np.ndarray]:
    """Engine columns (stage outputs plus the hidden truth) of 7,000 sessions (about
    20k turns: every subset the causal tests count holds ten times their minimum)."""
    return E.run_batch(PROFILES["baseline"], np.random.default_rng(2024), 7_000)


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    """A baseline night with both labels; also the baseline the profiles are compared to."""
    return _frame(NIGHT, seed=3)


# ---------------------------------------------------------------------------
# Output shape and determinism
# ---------------------------------------------------------------------------


def test_canonical_frame(frame: pl.DataFrame) -> None:
    assert frame.schema == TURN_SCHEMA
    assert frame.height == NIGHT
    assert frame.equals(frame.sort("session_id", "turn_index"))
    assert frame.select(pl.struct("session_id", "turn_index").is_unique().all()).item()
    # turn indices run 0..n-1 within each session and time moves forward
    per = frame.group_by("session_id").agg(
        pl.col("turn_index").max().alias("mx"), pl.len().alias("n"),
        pl.col("timestamp").diff().min().alias("min_gap"),
    )
    assert (per["mx"] + 1 == per["n"]).all()
    assert per["min_gap"].drop_nulls().dt.total_microseconds().min() > 0
    labels = frame["label"].struct.field("failure_point")
    assert set(labels.unique()) == set(CLASSES)
    assert frame["label"].struct.field("failure_point_2").null_count() == 0


def test_value_rules(frame: pl.DataFrame) -> None:
    unit = [
        frame["wake"].struct.field("score"),
        frame["asr"].struct.field("confidence"),
        frame["nlu"].struct.field("confidence"),
        frame["asr"].struct.field("nbest").explode().struct.field("confidence"),
        frame["er"].struct.field("entities").explode().struct.field("score"),
    ]
    for s in unit:
        s = s.drop_nulls()
        assert s.min() >= 0.0 and s.max() <= 1.0
    nbest = frame["asr"].struct.field("nbest")
    # the top hypothesis is the text, and n-best confidences never increase
    assert (nbest.list.first().struct.field("text") == frame["asr"].struct.field("text")).all()
    conf = nbest.list.eval(pl.element().struct.field("confidence").diff().max()).explode()
    assert (conf.drop_nulls() <= 1e-9).all()
    statuses = frame["result"].struct.field("status").unique().to_list()
    assert set(statuses) <= {"success", "error", "no_action", "clarification"}


def test_deterministic_and_seed_dependent() -> None:
    a = _frame(1_000, seed=5)
    b = _frame(1_000, seed=5)
    c = _frame(1_000, seed=6)
    assert_frame_equal(a, b)
    assert not a.drop("session_id").equals(c.drop("session_id"))


@pytest.fixture(scope="module")
def batches() -> list[pl.DataFrame]:
    """4,500 turns in batches of about 1,000 (each batch costs about 0.07 CPU-s)."""
    return list(simulate(4_500, seed=1, batch_size=1_000))


def test_shorter_run_is_a_prefix(batches: list[pl.DataFrame]) -> None:
    # cut inside the first batch
    short = simulate_frame(500, seed=1, batch_size=1_000)
    assert_frame_equal(short, pl.concat(batches).head(500))
    # across batches too: batch b draws from (seed, b) only (1,500 turns: into a second batch)
    shorter = simulate_frame(1_500, seed=1, batch_size=1_000)
    assert_frame_equal(shorter, pl.concat(batches).head(1_500))


def test_batches_hold_whole_sessions(batches: list[pl.DataFrame]) -> None:
    assert len(batches) > 3
    seen: set[str] = set()
    for b in batches:
        ids = set(b["session_id"].unique())
        assert not ids & seen
        seen |= ids
    assert sum(b.height for b in batches) == 4_500


def test_labels_option() -> None:
    none = _frame(500, seed=1, labels="none")  # simulate_frame passes it on
    assert none["label"].null_count() == 500
    gold = _frame(500, seed=1, labels="gold")
    assert gold["label"].struct.field("failure_point_2").null_count() == 500
    assert gold["label"].struct.field("failure_point").null_count() == 0


def test_class_mix(frame: pl.DataFrame) -> None:
    rates = frame["label"].struct.field("failure_point").value_counts(normalize=True)
    r = dict(zip(rates["failure_point"], rates["proportion"], strict=True))
    assert 0.6 <= r["correct"] <= 0.75
    for c in ("false_wake", "asr", "nlu", "er", "result"):
        assert 0.02 <= r[c] <= 0.14, (c, r[c])


# ---------------------------------------------------------------------------
# The causal story (checked on the engine's hidden truth)
# ---------------------------------------------------------------------------


def test_recovered_asr_errors_are_correct(cols: dict[str, np.ndarray]) -> None:
    t = W.tables()
    misheard = cols["e_entity"] & (cols["asr_men"] >= 0)
    recovered = misheard & (cols["er_resolved"] == cols["truth_ent"]) & cols["outcome_ok"]
    assert recovered.sum() > 50
    assert (cols["label"][recovered] == CORRECT).all()
    # the mention ER saw really was a mishearing, not the name
    men = cols["asr_men"][recovered]
    assert (t.men_kind[men] == 1).all()
    # function-word slips alone never make a failure
    func_only = cols["e_func"] & ~cols["e_content"] & ~cols["e_entity"]
    assert func_only.sum() > 100
    assert not (cols["label"][func_only] == ASR).any()


def test_propagated_asr_errors_are_asr(cols: dict[str, np.ndarray]) -> None:
    user = cols["kind"] != E.FALSE_WAKE
    propagated = user & cols["e_entity"] & cols["nlu_ok"] & ~cols["er_ok"]
    assert propagated.sum() > 50
    assert (cols["label"][propagated] == ASR).all()
    # ... even though ER and the result visibly failed on those turns
    er_failed = (cols["er_status"][propagated] != 0) | (
        cols["er_resolved"][propagated] != cols["truth_ent"][propagated]
    )
    assert er_failed.all()
    assert (cols["status"][propagated] != 0).mean() > 0.3


def test_unservable_requests_are_correct(cols: dict[str, np.ndarray]) -> None:
    unservable = (cols["kind"] == E.GOAL) & (cols["truth_int"] == W.I_UNSUPPORTED)
    handled = unservable & cols["nlu_ok"]
    assert handled.sum() > 100
    assert (cols["label"][handled] == CORRECT).all()
    assert (cols["status"][handled] == 2).all()  # no_action: the assistant said it can't


def test_false_wakes_and_labels_follow_definition(cols: dict[str, np.ndarray]) -> None:
    lab = cols["label"]
    assert ((cols["kind"] == E.FALSE_WAKE) == (lab == FALSE_WAKE)).all()
    user = cols["kind"] != E.FALSE_WAKE
    # earliest unrecovered stage: an nlu label means the text was not at fault ...
    nlu = lab == NLU
    assert not (cols["e_content"] & nlu).any()
    assert (~cols["nlu_ok"][nlu]).all()
    # ... er means NLU was right, result means NLU and ER were right
    assert cols["nlu_ok"][lab == ER].all()
    assert (cols["nlu_ok"] & cols["er_ok"])[lab == RESULT].all()
    assert (cols["svc_err"] | cols["wrong"])[lab == RESULT].all()
    # a correct turn did what the user wanted
    assert cols["outcome_ok"][user & (lab == CORRECT)].all()


def test_users_react_to_failures(cols: dict[str, np.ndarray]) -> None:
    goal = cols["kind"] == E.GOAL
    failed = goal & ~np.isin(cols["label"], [CORRECT, FALSE_WAKE])
    ok = goal & (cols["label"] == CORRECT)
    # rephrase or repeat next turn
    retry_failed = np.isin(cols["next_reaction"][failed], [1, 2]).mean()
    retry_ok = np.isin(cols["next_reaction"][ok], [1, 2]).mean()
    assert retry_failed > 0.5 > 0.15 > retry_ok
    assert cols["barge"][failed].mean() > 3 * cols["barge"][ok].mean()
    assert (cols["explicit"][failed] == 1).mean() > 5 * (cols["explicit"][ok] == 1).mean()


def test_second_annotator_agreement(frame: pl.DataFrame) -> None:
    gold = frame["label"].struct.field("failure_point")
    second = frame["label"].struct.field("failure_point_2")
    assert (gold != second).mean() < 0.1
    for c in CLASSES:
        tp = ((gold == c) & (second == c)).sum()
        f1 = 2 * tp / ((gold == c).sum() + (second == c).sum())
        assert 0.8 <= f1 <= 0.99, (c, f1)


# ---------------------------------------------------------------------------
# No single field gives the label away
# ---------------------------------------------------------------------------


def _auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve of score ``x`` for binary ``y`` (ties averaged)."""
    ranks = pl.Series(x).rank("average").to_numpy()
    n1 = y.sum()
    n0 = len(y) - n1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _numeric_fields(frame: pl.DataFrame) -> pl.DataFrame:
    nb = pl.col("asr").struct.field("nbest")
    ent = pl.col("er").struct.field("entities").list.first()
    alt = pl.col("nlu").struct.field("alternatives").list.first()
    return frame.select(
        pl.col("wake").struct.field("score").alias("wake.score"),
        pl.col("wake").struct.field("device_directed_score").alias("wake.dd"),
        pl.col("asr").struct.field("confidence").alias("asr.confidence"),
        pl.col("asr").struct.field("audio_ms").alias("asr.audio_ms"),
        pl.col("asr").struct.field("latency_ms").alias("asr.latency_ms"),
        nb.list.len().alias("asr.nbest.len"),
        nb.list.get(1, null_on_oob=True).struct.field("confidence").alias("asr.nbest.2"),
        pl.col("nlu").struct.field("confidence").alias("nlu.confidence"),
        alt.struct.field("confidence").alias("nlu.alt.confidence"),
        pl.col("nlu").struct.field("slots").list.first().struct.field("confidence")
        .alias("nlu.slot.confidence"),
        ent.struct.field("score").alias("er.score"),
        pl.col("er").struct.field("latency_ms").alias("er.latency_ms"),
        pl.col("result").struct.field("latency_ms").alias("result.latency_ms"),
    ).fill_null(-1.0)


def _categorical_fields(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        pl.col("result").struct.field("status").alias("result.status"),
        pl.col("er").struct.field("entities").list.first().struct.field("status")
        .alias("er.status"),
        pl.col("nlu").struct.field("domain").alias("nlu.domain"),
        pl.col("nlu").struct.field("intent").alias("nlu.intent"),
        pl.col("device").struct.field("type").alias("device.type"),
        pl.col("feedback").struct.field("barge_in").cast(pl.String).alias("feedback.barge_in"),
        pl.col("feedback").struct.field("explicit").alias("feedback.explicit"),
        pl.col("result").struct.field("response_text").str.slice(0, 12).alias("response.start"),
    ).fill_null("<null>")


def test_no_single_field_separates_a_class(frame: pl.DataFrame) -> None:
    gold = frame["label"].struct.field("failure_point").to_numpy()
    num = _numeric_fields(frame)
    cat = _categorical_fields(frame)
    for c in CLASSES[1:]:
        keep = (gold == c) | (gold == "correct")
        y = gold[keep] == c
        for name in num.columns:
            auc = _auc(num[name].to_numpy()[keep], y)
            # a one-feature threshold stump: well below perfect separation
            assert max(auc, 1 - auc) < 0.93, (c, name, auc)
        for name in cat.columns:
            values = cat[name].to_numpy()[keep]
            # the best "value in a set" stump: the set of values where c is the majority
            table = pl.DataFrame({"v": values, "y": y}).group_by("v").agg(
                pl.col("y").sum().alias("pos"), pl.len().alias("n")
            )
            chosen = table.filter(pl.col("pos") * 2 > pl.col("n"))
            tp = chosen["pos"].sum()
            fp = (chosen["n"] - chosen["pos"]).sum()
            f1 = 2 * tp / (2 * tp + fp + (y.sum() - tp)) if tp else 0.0
            assert f1 < 0.8, (c, name, f1)


# ---------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------


def _rate(frame: pl.DataFrame, cls: str, scope: str) -> tuple[float, int]:
    if scope.startswith("device="):
        frame = frame.filter(pl.col("device").struct.field("type") == scope.split("=")[1])
    elif scope.startswith("domain="):
        frame = frame.filter(pl.col("nlu").struct.field("domain") == scope.split("=")[1])
    gold = frame["label"].struct.field("failure_point")
    return float((gold == cls).mean()), frame.height


class _Nights(dict[str, pl.DataFrame]):
    """Profile name -> its night, each simulated when a test first asks for it."""

    def __missing__(self, name: str) -> pl.DataFrame:
        self[name] = _frame(NIGHT, seed=3, profile=name)
        return self[name]


@pytest.fixture(scope="module")
def nights(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Every profile's night, same seed as the baseline ``frame`` (common random numbers).
    The rate checks take their tolerance from these sample sizes (binomial s.e.). Each
    night (about 0.25 CPU-s) is simulated when a test first reads it: a test of two
    profiles does not wait for the other eight."""
    return _Nights(baseline=frame)


def _in_scope(cls: str, scope: str) -> tuple[pl.Expr, pl.Expr]:
    """Whether a turn is in ``scope``, and whether it is also of class ``cls``."""
    if scope.startswith("device="):
        inside = pl.col("device").struct.field("type") == scope.split("=")[1]
    elif scope.startswith("domain="):
        inside = pl.col("nlu").struct.field("domain") == scope.split("=")[1]
    else:
        inside = pl.lit(True)
    return inside, inside & (pl.col("label").struct.field("failure_point") == cls)


def _paired_ratio(base: pl.DataFrame, night: pl.DataFrame, cls: str,
                  scope: str) -> tuple[float, float]:
    """The class's rate in ``scope`` on the profile's night over the baseline's, on the
    turns both nights have, and its standard error from those pairs (delta method on the
    log of the ratio of four means). The nights share their random numbers, so most turns
    agree and the paired error is a fraction of two independent binomial ones: small
    enough that a profile which moved nothing would fail every documented range that
    leaves out 1, except er_outage_music's ASR rate (1.03 to 1.2), whose band reaches
    0.98 at 10,000 turns."""
    inside, hit = _in_scope(cls, scope)
    keys = ["session_id", "turn_index"]
    pairs = base.select(*keys, inside.alias("b"), hit.alias("a")).join(
        night.select(*keys, inside.alias("e"), hit.alias("c")), on=keys)
    means = pairs.select(pl.col("a", "b", "c", "e").cast(pl.Float64).mean()).row(0, named=True)
    influence = pairs.select(pl.col("c") / means["c"] - pl.col("e") / means["e"]
                             - pl.col("a") / means["a"] + pl.col("b") / means["b"])
    ratio = (means["c"] / means["e"]) / (means["a"] / means["b"])
    return ratio, ratio * math.sqrt(float(influence.to_series().var()) / pairs.height)


@pytest.mark.slow
@pytest.mark.parametrize("name", [p for p in PROFILES if p != "baseline"])
def test_profile_moves_its_rate_by_the_documented_amount(
    name: str, nights: dict[str, pl.DataFrame]
) -> None:
    base, night = nights["baseline"], nights[name]
    for cls, (scope, low, high) in PROFILES[name].expected.items():
        ratio, se = _paired_ratio(base, night, cls, scope)
        assert low - 4 * se <= ratio <= high + 4 * se, (cls, scope, ratio, se)


@pytest.mark.slow
@pytest.mark.parametrize("name", [p for p in PROFILES if p != "baseline"])
def test_profile_leaves_other_classes_alone(name: str, nights: dict[str, pl.DataFrame]) -> None:
    base, night = nights["baseline"], nights[name]
    moved = set(PROFILES[name].expected)
    for cls in CLASSES[1:]:
        if cls in moved:
            continue
        r0, n0 = _rate(base, cls, "all")
        r1, n1 = _rate(night, cls, "all")
        se = math.sqrt(r0 * (1 - r0) / n0 + r1 * (1 - r1) / n1)
        # common random numbers keep most turns identical, so this is tight; the
        # 15% relative allowance covers what the change pre-empts downstream
        # (a turn ASR now fails cannot fail later) and the users' reactions
        assert abs(r1 - r0) <= 4 * se + 0.15 * r0, (cls, r0, r1)


def test_device_scoped_profile_leaves_other_devices_identical(
    nights: dict[str, pl.DataFrame],
) -> None:
    base = nights["baseline"]
    for name, device in (("asr_farfield", "speaker"), ("false_wake_tv", "tv")):
        other = pl.col("device").struct.field("type") != device
        a = base.filter(other)
        b = nights[name].filter(other)
        # the run is cut at a fixed number of turns, so compare whole sessions both have
        common = set(a["session_id"]) & set(b["session_id"])
        a = a.filter(pl.col("session_id").is_in(list(common)))
        b = b.filter(pl.col("session_id").is_in(list(common)))
        assert a.height > NIGHT // 2
        assert_frame_equal(a.head(NIGHT // 2), b.head(NIGHT // 2))


def test_write_simulation_truth(tmp_path) -> None:
    out = tmp_path / "night.parquet"
    s = write_simulation(out, turns=4_000, seed=2, profile="result_outage", labels="none",
                         batch_size=4_400)  # the batch _frame simulates 4,000 turns in
    truth = json.loads(s.truth_path.read_text())
    assert s.truth_path.name == "night.parquet.truth.json"
    assert truth["turns"] == 4_000 and sum(truth["counts"].values()) == 4_000
    assert truth["profile"] == "result_outage"
    assert sum(v["turns"] for v in truth["by_device_type"].values()) == 4_000
    assert sum(v["turns"] for v in truth["by_domain"].values()) == 4_000
    written = pl.read_parquet(out)
    assert written["label"].null_count() == 4_000
    gold = _frame(4_000, seed=2, profile="result_outage")
    counts = gold["label"].struct.field("failure_point").value_counts()
    assert dict(zip(counts["failure_point"], counts["count"], strict=True)) == {
        k: v for k, v in truth["counts"].items() if v
    }


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def test_cli_simulate(tmp_path) -> None:
    out = tmp_path / "n.jsonl.gz"
    res = runner.invoke(app, ["simulate", "-o", str(out), "--turns", "800", "--seed", "4",
                              "--profile", "asr_farfield", "--json"])
    assert res.exit_code == 0, res.output
    assert out.exists() and (tmp_path / "n.jsonl.gz.truth.json").exists()
    truth = json.loads(res.stdout)
    assert truth["turns"] == 800 and truth["profile"] == "asr_farfield"
    assert "true failure points" in res.stderr


def test_cli_list_profiles() -> None:
    res = runner.invoke(app, ["simulate", "--list-profiles"])
    assert res.exit_code == 0
    for name in PROFILES:
        assert name in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "nope"], "unknown profile 'nope'"),
        (["--labels", "some"], "--labels"),
        (["--format", "xml"], "unknown format 'xml'"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args: list[str], message: str) -> None:
    out = tmp_path / "x.jsonl"
    res = runner.invoke(app, ["simulate", "-o", str(out), "-n", "10", *args])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not out.exists()


def test_cli_requires_output() -> None:
    res = runner.invoke(app, ["simulate", "-n", "10"])
    assert res.exit_code == 2
    assert "--output" in res.stderr
