"""Which turns to annotate: a seeded, documented mix (``fpi queue``).

With a model, a budget of N turns is filled in this order:

1. **random** (``random_share`` of N, default 25%): a simple random sample of all
   turns, drawn first and independently of the model, so every turn's inclusion
   probability is known exactly (``n / population``). Only this stratum feeds the
   production measurement (:mod:`fpi.labels.measure`).
2. **coverage**: for every class the model predicts, the ``coverage_per_class``
   least certain turns predicted as that class (default 5% of N each), so rare
   predicted classes are seen at all.
3. **slice**: the slices the model's diagnosis of these same logs flags for excess
   failures (:func:`flagged_slices`, the ``slices.top`` findings ``fpi diagnose``
   lists, or those of a diagnose ``summary.json`` given as ``flags``): ``slice_share``
   of N (default 10%) split evenly over the findings (at most ``max_flags``), each
   taking turns of its slice, those with the flagged class among their two most
   probable first, least certain first. Labels there confirm or refute the finding
   and teach the model where it fails most.
4. **uncertainty**: the rest, the turns with the smallest margin between the two
   most probable classes (or the largest entropy).

Coverage, slice and uncertainty picks keep **diversity**: at most ``cluster_cap`` turns
(default 2) per cluster of near-identical turns (same predicted class and the same
recognised text once lower-cased, digits folded and punctuation dropped).

Without a model (a team's first batch) the whole budget is a **stratified random**
sample over observable strata (device type x result status), allocated as
equally as the strata sizes allow, so small strata (errors, rare devices) are
well represented; each turn's inclusion probability ``n_h / N_h`` is recorded.

Every random draw comes from one generator seeded with ``seed`` over the turns in
canonical order (session, turn), so the same logs, model and seed give the same queue
whatever order the files were read in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import polars as pl

from fpi.diagnose.rates import SLICE_DIMENSIONS, slice_columns
from fpi.errors import InputError
from fpi.schema import CLASSES, KEY_COLUMNS

if TYPE_CHECKING:
    from fpi.model import ModelBundle

KEY = list(KEY_COLUMNS)
STRATA: Final = ("random", "coverage", "slice", "uncertainty", "stratified")

#: Columns of :attr:`Queue.frame` (plus ``p_<class>`` per class with a model).
QUEUE_COLUMNS: Final = (
    "queue_rank", "session_id", "turn_index", "stratum", "inclusion_prob", "design_stratum",
    "stratum_population", "stratum_sample", "predicted", "confidence", "margin", "entropy",
    "cluster", "flag",
)


@dataclass(frozen=True)
class QueueOptions:
    """How a queue is drawn (see the module docstring for the mix)."""

    budget: int
    seed: int = 0
    random_share: float = 0.25
    #: Turns per predicted class in the coverage stratum; ``None``: 5% of the budget (>= 1).
    coverage_per_class: int | None = None
    cluster_cap: int = 2
    uncertainty: str = "margin"
    #: Share of the budget for turns of flagged slices (split evenly over the findings).
    slice_share: float = 0.1
    #: At most this many flagged findings (the largest excess first) get turns.
    max_flags: int = 10

    def check(self) -> None:
        """Raise :class:`InputError` for an option out of range."""
        if self.budget < 1:
            raise InputError(f"--budget must be at least 1, not {self.budget}")
        if not 0 <= self.random_share <= 1:
            raise InputError(f"--random-share must be in [0, 1], not {self.random_share}")
        if not 0 <= self.slice_share <= 1:
            raise InputError(f"--slice-share must be in [0, 1], not {self.slice_share}")
        if self.max_flags < 0:
            raise InputError(f"--max-flags must be at least 0, not {self.max_flags}")
        if self.cluster_cap < 1:
            raise InputError(f"--cluster-cap must be at least 1, not {self.cluster_cap}")
        if self.uncertainty not in ("margin", "entropy"):
            raise InputError(f"--uncertainty must be 'margin' or 'entropy', not "
                             f"{self.uncertainty!r}")

    @property
    def per_class(self) -> int:
        """Coverage turns per predicted class."""
        if self.coverage_per_class is not None:
            return self.coverage_per_class
        return max(1, round(0.05 * self.budget))

    def per_flag(self, flags: int) -> int:
        """Slice-stratum turns per flagged finding (0 without findings)."""
        if flags == 0 or self.slice_share == 0:
            return 0
        return max(1, round(self.slice_share * self.budget / flags))


@dataclass(frozen=True)
class Queue:
    """The turns to annotate, in queue order, with stratum and inclusion probability."""

    frame: pl.DataFrame
    population: int
    options: QueueOptions
    model: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    #: The flagged slice findings the slice stratum targeted, and where they came from.
    flags: list[dict[str, Any]] = field(default_factory=list)
    flags_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The queue's manifest (``queue.json``) without the turns."""
        opts = self.options
        return {"population": self.population, "selected": self.frame.height,
                "counts": self.counts, "model": self.model,
                "flagged_slices": {"source": self.flags_source, "findings": self.flags},
                "options": {"budget": opts.budget, "seed": opts.seed,
                            "random_share": opts.random_share,
                            "coverage_per_class": opts.per_class,
                            "slice_share": opts.slice_share, "max_flags": opts.max_flags,
                            "cluster_cap": opts.cluster_cap, "uncertainty": opts.uncertainty}}


def cluster_key() -> pl.Expr:
    """Near-duplicate key: recognised text lower-cased, digits as 0, punctuation dropped."""
    text = pl.col("asr").struct.field("text").fill_null("").str.to_lowercase()
    text = text.str.replace_all(r"[0-9]", "0").str.replace_all(r"[^a-z0 ']+", " ")
    return text.str.replace_all(r"\s+", " ").str.strip_chars()


def _base(turns: pl.DataFrame, seed: int) -> pl.DataFrame:
    """One row per turn in canonical order with a seeded uniform draw ``_u`` and its
    slice values (``_slice_<dimension>``)."""
    slices = slice_columns(turns)
    base = turns.select(*KEY, cluster_key().alias("_text"),
                        pl.col("device").struct.field("type").fill_null("unknown")
                        .alias("_device"),
                        pl.col("result").struct.field("status").fill_null("none")
                        .alias("_status")).hstack(
        slices.rename({c: f"_slice_{c}" for c in slices.columns})).sort(KEY)
    u = np.random.default_rng(seed).random(base.height)
    return base.with_columns(pl.Series("_u", u))


def _scores(base: pl.DataFrame, proba: np.ndarray) -> pl.DataFrame:
    top2 = np.sort(proba, axis=1)[:, -2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(proba > 0, proba * np.log(proba), 0.0).sum(axis=1)
    cols = {f"p_{c}": proba[:, i] for i, c in enumerate(CLASSES)}
    return base.with_columns(
        pl.Series("predicted", np.asarray(CLASSES, dtype=object)[proba.argmax(axis=1)],
                  dtype=pl.String),
        pl.Series("confidence", top2[:, 1]), pl.Series("margin", top2[:, 1] - top2[:, 0]),
        pl.Series("entropy", ent), *(pl.Series(k, v) for k, v in cols.items()),
    ).with_columns(pl.concat_str("predicted", pl.lit("|"), "_text").alias("cluster"))


def _capped(cands: pl.DataFrame, chosen: pl.DataFrame, cap: int, order: list[str],
            descending: list[bool]) -> pl.DataFrame:
    """``cands`` in ``order``, keeping at most ``cap`` turns per cluster overall."""
    used = chosen.group_by("cluster").len("_used") if chosen.height else pl.DataFrame(
        schema={"cluster": pl.String, "_used": pl.UInt32})
    ranked = cands.sort([*order, *KEY], descending=[*descending, *([False] * len(KEY))])
    ranked = ranked.with_columns(pl.int_range(1, pl.len() + 1).over("cluster").alias("_k"))
    ranked = ranked.join(used, on="cluster", how="left", maintain_order="left")
    return ranked.filter(pl.col("_k") + pl.col("_used").fill_null(0) <= cap).drop("_k", "_used")


def _flag_name(flag: Mapping[str, Any]) -> str:
    return f"{flag['dimension']}={flag['value']}: {flag['class']}"


def _slice_picks(rest: pl.DataFrame, chosen: pl.DataFrame, flags: Sequence[Mapping[str, Any]],
                 opts: QueueOptions) -> list[pl.DataFrame]:
    """Per flagged finding, turns of its slice: flagged class in the top two first,
    then the smallest margin, within the cluster cap."""
    n = opts.per_flag(len(flags))
    picks: list[pl.DataFrame] = []
    for flag in flags:
        c, col = str(flag["class"]), f"_slice_{flag['dimension']}"
        so_far = pl.concat([chosen, *picks], how="diagonal_relaxed")
        cands = rest.join(so_far.select(KEY), on=KEY, how="anti").filter(
            pl.col(col) == str(flag["value"])).with_columns(
            (pl.col(f"p_{c}") >= pl.col("confidence") - pl.col("margin") - 1e-12)
            .alias("_top2"))
        cands = _capped(cands, so_far, opts.cluster_cap, ["_top2", "margin"], [True, False])
        picks.append(cands.head(n).drop("_top2").with_columns(
            pl.lit("slice").alias("stratum"), pl.lit(_flag_name(flag)).alias("flag")))
    return picks


def _with_model(base: pl.DataFrame, opts: QueueOptions,
                flags: Sequence[Mapping[str, Any]] = ()) -> pl.DataFrame:
    n_pop = base.height
    n_rand = min(n_pop, round(opts.random_share * opts.budget))
    rand = base.sort("_u", *KEY).head(n_rand).with_columns(
        pl.lit("random").alias("stratum"), pl.lit(n_rand / n_pop).alias("inclusion_prob"),
        pl.lit("all").alias("design_stratum"), pl.lit(n_pop).alias("stratum_population"),
        pl.lit(n_rand).alias("stratum_sample"))
    chosen = [rand]
    rest = base.join(rand.select(KEY), on=KEY, how="anti")
    cover: list[pl.DataFrame] = []
    for c in CLASSES:
        so_far = pl.concat(chosen + cover, how="diagonal_relaxed")
        cands = _capped(rest.filter(pl.col("predicted") == c), so_far, opts.cluster_cap,
                        ["margin"], [False])
        cover.append(cands.head(opts.per_class).with_columns(pl.lit("coverage").alias("stratum")))
    picked = pl.concat(chosen + cover, how="diagonal_relaxed")
    picked = pl.concat([picked, *_slice_picks(rest, picked, flags, opts)],
                       how="diagonal_relaxed")
    room = max(0, opts.budget - picked.height)
    rest = base.join(picked.select(KEY), on=KEY, how="anti")
    order, desc = (["margin"], [False]) if opts.uncertainty == "margin" else (["entropy"], [True])
    unc = _capped(rest, picked, opts.cluster_cap, order, desc).head(room).with_columns(
        pl.lit("uncertainty").alias("stratum"))
    return pl.concat([picked, unc], how="diagonal_relaxed").head(opts.budget)


def flagged_slices(base: pl.DataFrame, proba: np.ndarray, bundle: ModelBundle, *,
                   min_support: int = 50, seed: int = 0) -> list[dict[str, Any]]:
    """The slices ``fpi diagnose`` would flag on these turns: the ``slices.top``
    findings (dimension, value, class, excess failures) of the model's rate estimate,
    same-turn duplicates merged. ``base`` and ``proba`` in canonical order."""
    from fpi.diagnose.rates import estimate_rates, slice_rates
    from fpi.diagnose.slices_compare import collapse, same_turn_groups

    prior = bundle.manifest["training"]["class_prior"]
    train_prior = np.array([prior[c] for c in CLASSES], dtype=np.float64)
    heldout = bundle.manifest.get("heldout") or {}
    conf, soft = (None if heldout.get(k) is None else np.asarray(heldout[k], np.float64)
                  for k in ("confusion", "soft_confusion"))
    rates = estimate_rates(proba, train_prior=train_prior, confusion=conf, soft_confusion=soft,
                           groups=base["session_id"].to_numpy(), seed=seed)
    slices = base.select(pl.col(f"_slice_{d}").alias(d) for d in SLICE_DIMENSIONS)
    doc = slice_rates(slices, proba, rates, train_prior=train_prior, confusion=conf,
                      soft_confusion=soft, min_support=min_support)
    return collapse(doc["top"], same_turn_groups(slices, min_support))


def read_flagged_slices(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The flagged slice findings (``slices.top``) of an ``fpi diagnose`` summary.json.

    Raises
    ------
    InputError
        The file is missing, not JSON, or has no ``slices.top`` list of findings
        with ``dimension``, ``value`` and ``class``.
    """
    file = Path(path)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{file}: cannot read a diagnose summary: {exc}") from exc
    top = ((doc.get("slices") or {}).get("top") if isinstance(doc, dict) else None)
    if not isinstance(top, list) or not all(
            isinstance(t, dict) and t.get("dimension") in SLICE_DIMENSIONS
            and t.get("class") in CLASSES[1:] and t.get("value") is not None for t in top):
        raise InputError(f"{file}: not an `fpi diagnose` summary.json (no slices.top list of "
                         f"findings with a known dimension, a value and a failure class)")
    return [dict(t) for t in top]


def allocate(sizes: list[int], budget: int) -> list[int]:
    """Equal allocation of ``budget`` over strata of ``sizes``, capped by each size.

    Water-filling: the smallest strata are taken whole when their equal share exceeds
    them; what they leave goes to the others. Ties of the remainder go to the larger
    strata first, then to the earlier ones.
    """
    alloc = [0] * len(sizes)
    left, budget = list(range(len(sizes))), min(budget, sum(sizes))
    for i in sorted(left, key=lambda j: (sizes[j], j)):
        share = budget // len(left)
        alloc[i] = min(sizes[i], share)
        budget -= alloc[i]
        left.remove(i)
    # the remainder (< number of strata) goes one each to strata with room
    for i in sorted(range(len(sizes)), key=lambda j: (-sizes[j], j)):
        if budget == 0:
            break
        if alloc[i] < sizes[i]:
            alloc[i] += 1
            budget -= 1
    return alloc


def _stratified(base: pl.DataFrame, opts: QueueOptions) -> pl.DataFrame:
    strata = base.with_columns(pl.concat_str("_device", pl.lit("|"), "_status")
                               .alias("design_stratum"))
    sizes = strata.group_by("design_stratum").len().sort("design_stratum")
    alloc = allocate(sizes["len"].to_list(), opts.budget)
    plan = sizes.with_columns(pl.Series("stratum_sample", alloc, dtype=pl.Int64),
                              pl.col("len").cast(pl.Int64).alias("stratum_population"))
    ranked = strata.sort("_u", *KEY).with_columns(
        pl.int_range(1, pl.len() + 1).over("design_stratum").alias("_k"))
    picked = ranked.join(plan.drop("len"), on="design_stratum").filter(
        pl.col("_k") <= pl.col("stratum_sample")).drop("_k")
    return picked.with_columns(
        pl.lit("stratified").alias("stratum"),
        (pl.col("stratum_sample") / pl.col("stratum_population")).alias("inclusion_prob"),
        pl.concat_str("_device", pl.lit("|"), "_text").alias("cluster"),
    ).sort("_u", *KEY)


def build_queue(turns: pl.DataFrame, options: QueueOptions,
                bundle: ModelBundle | None = None,
                features: pl.DataFrame | None = None,
                flags: Sequence[Mapping[str, Any]] | None = None) -> Queue:
    """Choose ``options.budget`` turns of ``turns`` (canonical frame) to annotate.

    ``flags``: the flagged slice findings to target (:func:`read_flagged_slices`);
    ``None``: those of the model's own diagnosis of ``turns`` (:func:`flagged_slices`).
    Without a bundle there is no slice stratum.

    Raises
    ------
    InputError
        An option is out of range or there are no turns.
    SchemaError
        The bundle cannot score these turns.
    """
    options.check()
    if turns.height == 0:
        raise InputError("no turns to choose from")
    base = _base(turns, options.seed)
    model_info, source, used = None, None, []
    if bundle is None:
        picked = _stratified(base, options)
    else:
        from fpi.features import build_features

        bundle.check_compatible(turns)
        feats = build_features(turns) if features is None else features
        order = turns.select(KEY).with_row_index("_row").sort(KEY)["_row"].to_numpy()
        proba = bundle.predict_proba(feats)[order]
        if options.slice_share > 0 and options.max_flags > 0:
            source = "model" if flags is None else "given"
            found = flagged_slices(base, proba, bundle, seed=options.seed) if flags is None \
                else flags
            used = [dict(f) for f in found[:options.max_flags]]
        picked = _with_model(_scores(base, proba), options, used)
        model_info = {"path": str(bundle.path) if bundle.path else None,
                      "fingerprint": bundle.manifest.get("training", {}).get("fingerprint"),
                      "fpi_version": bundle.manifest.get("fpi_version")}
    frame = _finish(picked, bundle is not None)
    counts = dict(frame.group_by("stratum").len().sort("stratum").iter_rows())
    return Queue(frame, base.height, options, model_info, counts, used, source)


def _finish(picked: pl.DataFrame, scored: bool) -> pl.DataFrame:
    missing = [c for c in QUEUE_COLUMNS if c not in picked.columns and c != "queue_rank"]
    picked = picked.with_columns(
        pl.lit(None, pl.Float64 if c in ("confidence", "margin", "entropy", "inclusion_prob")
               else pl.Int64 if c.startswith("stratum_") else pl.String).alias(c)
        for c in missing)
    probs = [f"p_{c}" for c in CLASSES] if scored else []
    return picked.with_row_index("queue_rank", offset=1).select(
        pl.col("queue_rank").cast(pl.Int64), *QUEUE_COLUMNS[1:], *probs).with_columns(
        pl.col("stratum_population").cast(pl.Int64), pl.col("stratum_sample").cast(pl.Int64),
        pl.col("inclusion_prob").cast(pl.Float64))
