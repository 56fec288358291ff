"""Pruning policies: pure functions from a LazyFrame of scores (the columns of
`pipeline.deltas.SCORE_SCHEMA`) to the same rows with a decision added, `keep` and a
`reason` (DECISION_SCHEMA), as datatrove's filters do, so every drop can be explained.
Keeping the scores' columns spares a join of the decisions back onto them, and keeping
their order (sorted by id) spares a sort. Adding a policy is one function and one
registry entry; what a policy needs beyond the scores (a history, a sample column, a
target pool size) is resolved at the I/O edge (`pipeline.pruning`) and handed in as a
column or a parameter. docs/policies.md describes every policy."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from pipeline.config import PolicyConfig
from pipeline.errors import ConfigError

DECISION_SCHEMA = pl.Schema({"sample_id": pl.String, "keep": pl.Boolean, "reason": pl.String})

# Reasons, so audits can count and filter on them.
KEPT = "kept"
BASELINE = "baseline"
WARMUP = "warmup"
LEARNING = "learning"
ABOVE_FLOOR = "above_floor"
PATIENCE = "patience"
MASTERED = "mastered"
SHARP_DROP = "sharp_drop"
AT_FLOOR = "at_floor"
BELOW_CEILING = "below_ceiling"
IMPROVING = "improving"
HOPELESS = "hopeless"
RANDOM = "random"
BELOW_QUANTILE = "below_quantile"
SKIPPED = "skipped"
RESCALED = "rescaled"
ABOVE_MEAN = "above_mean"
ANNEAL = "anneal"

# Columns the I/O edge joins onto the scores for the policies that need them.
STREAK = "streak"  # consecutive earlier passes of the round that met STM's drop condition
RANK_SCORE = "rank_score"  # the sample table's `rank_column`, for selective-repetition

# The optional decisions column of a soft policy: how much each sample of the pool weighs
# in the next epoch's training loss (0: it sits the epoch out but stays in the pool).
WEIGHT = "weight"


@dataclass(frozen=True)
class PolicyParams:
    """The parameters one pruning step runs with (the floor already tightened for its
    round). `pool_target` is the pool size a pool-size policy keeps at this step, resolved
    by the I/O edge; it is data of the step, not a parameter recorded in the manifest."""

    delta: float
    delta_mode: Literal["absolute", "relative"]
    floor: float
    warmup: int = 0
    patience: int = 1
    ceiling: float = 1.0
    seed: int = 0
    rank_order: Literal["low_first", "high_first"] = "low_first"
    prune_ratio: float = 0.5
    pool_target: int | None = None
    last_soft_epoch: int | None = None

    @classmethod
    def for_round(cls, config: PolicyConfig, round_index: int) -> PolicyParams:
        return cls(
            delta=config.delta,
            delta_mode=config.delta_mode,
            floor=config.floor_for_round(round_index),
            warmup=config.warmup,
            patience=config.patience,
            ceiling=config.ceiling,
            seed=config.seed,
            rank_order=config.resolved_rank_order(),
            prune_ratio=config.prune_ratio,
        )


Policy = Callable[[pl.LazyFrame, PolicyParams], pl.LazyFrame]


def _no_history() -> pl.Expr:
    return pl.col("delta").is_null()


def sharp_drop(params: PolicyParams) -> pl.Expr:
    """The loss fell by at least `delta` (absolute, or relative to `loss_prev`); false
    without a previous pass."""
    change = pl.col("delta") if params.delta_mode == "absolute" else pl.col("rel_delta")
    return change.fill_null(-float("inf")) >= params.delta


def stm_condition(params: PolicyParams) -> pl.Expr:
    """STM's drop condition on one pass: a sharp drop AND a loss at or below the floor."""
    return sharp_drop(params) & (pl.col("loss") <= params.floor)


def _hopeless(params: PolicyParams) -> pl.Expr:
    """The mirror of STM's condition: no sharp drop AND a loss above the ceiling."""
    return ~_no_history() & ~sharp_drop(params) & (pl.col("loss") > params.ceiling)


def _decided(scores: pl.LazyFrame, reason: pl.Expr, dropped: tuple[str, ...]) -> pl.LazyFrame:
    return scores.with_columns(reason=reason).with_columns(
        keep=~pl.col("reason").is_in(list(dropped))
    )


def standard(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """Keep everything: the baseline STM is measured against."""
    return scores.with_columns(keep=pl.lit(True), reason=pl.lit(KEPT))


def stm(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """Drop a sample when its loss fell sharply AND is at or below the mastery floor.

    The floor is the method's fix for premature ejection: a hard sample whose loss merely
    dips once is kept until it is actually learnt. Without a previous pass (`delta` null)
    nothing can be judged, so the sample is kept as the baseline. Nothing is dropped in
    the first `warmup` epochs of a round, and with `patience` p > 1 the condition must
    hold on p consecutive passes: the edge joins a `streak` column counting the earlier
    ones (`stm_streak`)."""
    reason = pl.when(_no_history()).then(pl.lit(BASELINE))
    if params.warmup > 0:
        reason = reason.when(pl.col("epoch") <= params.warmup).then(pl.lit(WARMUP))
    reason = (
        reason.when(~sharp_drop(params))
        .then(pl.lit(LEARNING))
        .when(pl.col("loss") > params.floor)
        .then(pl.lit(ABOVE_FLOOR))
    )
    if params.patience > 1:
        reason = reason.when(pl.col(STREAK) + 1 < params.patience).then(pl.lit(PATIENCE))
    return _decided(scores, reason.otherwise(pl.lit(MASTERED)), (MASTERED,))


def stm_streak(history: list[pl.LazyFrame], params: PolicyParams) -> pl.LazyFrame:
    """(sample_id, streak): for each sample of the latest pass of `history` (earlier
    passes of the round, oldest first), how many of the last passes in a row met STM's
    drop condition. A sample missing from a pass breaks its streak there."""
    if not history:
        raise ValueError("stm_streak needs at least one earlier pass")
    met = [
        pass_scores.select("sample_id", stm_condition(params).alias(f"met_{i}"))
        for i, pass_scores in enumerate(history)
    ]
    joined = met[-1]
    for frame in reversed(met[:-1]):
        joined = joined.join(frame, on="sample_id", how="left", maintain_order="left")
    unbroken = pl.lit(True)
    streak = pl.lit(0, dtype=pl.Int32)
    for i in reversed(range(len(met))):
        unbroken = unbroken & pl.col(f"met_{i}").fill_null(False)
        streak = streak + unbroken.cast(pl.Int32)
    return joined.select("sample_id", streak.alias(STREAK))


def floor_only(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """Drop a sample once its loss is at or below the floor, whatever its trajectory: a
    level, not a derivative. The baseline pass drops nothing, as in STM."""
    reason = (
        pl.when(_no_history())
        .then(pl.lit(BASELINE))
        .when(pl.col("loss") <= params.floor)
        .then(pl.lit(AT_FLOOR))
        .otherwise(pl.lit(ABOVE_FLOOR))
    )
    return _decided(scores, reason, (AT_FLOOR,))


def delta_only(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """The method's naive rule before the mastery floor: drop on any sharp drop, however
    high the loss still is (the premature ejection the floor was added against)."""
    reason = (
        pl.when(_no_history())
        .then(pl.lit(BASELINE))
        .when(sharp_drop(params))
        .then(pl.lit(SHARP_DROP))
        .otherwise(pl.lit(LEARNING))
    )
    return _decided(scores, reason, (SHARP_DROP,))


def anti_stm(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """STM mirrored, "drop the hard ones": drop a sample whose loss is above the ceiling
    AND did not fall sharply since the previous pass (it looks hopeless). A sample below
    the ceiling, or above it but falling sharply, is kept."""
    reason = (
        pl.when(_no_history())
        .then(pl.lit(BASELINE))
        .when(pl.col("loss") <= params.ceiling)
        .then(pl.lit(BELOW_CEILING))
        .when(sharp_drop(params))
        .then(pl.lit(IMPROVING))
        .otherwise(pl.lit(HOPELESS))
    )
    return _decided(scores, reason, (HOPELESS,))


def dual_stm(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """Drop the mastered (STM's condition) OR the hopeless (anti-stm's condition); the
    two cannot both hold, since one needs a sharp drop and the other its absence."""
    reason = (
        pl.when(_no_history())
        .then(pl.lit(BASELINE))
        .when(stm_condition(params))
        .then(pl.lit(MASTERED))
        .when(_hopeless(params))
        .then(pl.lit(HOPELESS))
        .when(sharp_drop(params))
        .then(pl.lit(ABOVE_FLOOR))
        .otherwise(pl.lit(LEARNING))
    )
    return _decided(scores, reason, (MASTERED, HOPELESS))


def random_drop_mask(
    ids: pl.Series, target: int, seed: int, round_index: int, epoch: int
) -> np.ndarray:
    """A mask of the `len(ids) - target` ids to drop, drawn by numpy's Generator seeded
    with (seed, round, epoch) over the ids in sorted order, so the draw depends on neither
    the row order nor the Polars version."""
    order = ids.arg_sort().to_numpy()
    drop = np.zeros(len(ids), dtype=bool)
    count = max(len(ids) - target, 0)
    if count:
        rng = np.random.default_rng([seed, round_index, epoch])
        drop[order[rng.choice(len(ids), size=count, replace=False)]] = True
    return drop


def _pool_target(params: PolicyParams, policy: str) -> int:
    if params.pool_target is None:
        raise ValueError(f"policy {policy!r} needs the step's pool_target from the I/O edge")
    return params.pool_target


def _seeded_draw(draw: Callable[[pl.Series, int, int], np.ndarray], dtype: pl.DataType) -> pl.Expr:
    """A column computed over the whole pass by `draw(ids, round, epoch)`: the step is
    read from the scores (one round and epoch per pass), so the draw is seeded by it."""

    def batch(columns: pl.Series) -> pl.Series:
        fields = columns.struct
        if not len(columns):
            return pl.Series([], dtype=dtype)
        step = int(fields.field("round")[0]), int(fields.field("epoch")[0])
        return pl.Series(draw(fields.field("sample_id"), *step), dtype=dtype)

    return pl.struct("sample_id", "round", "epoch").map_batches(batch, return_dtype=dtype)


def random_control(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """Drop random samples so that the pool keeps `pool_target` samples (a reference run's
    pool size at the same step): a control with STM's savings and no signal."""
    target = _pool_target(params, "random")

    def mask(ids: pl.Series, round_index: int, epoch: int) -> np.ndarray:
        return random_drop_mask(ids, target, params.seed, round_index, epoch)

    dropped = _seeded_draw(mask, pl.Boolean)
    return scores.with_columns(
        reason=pl.when(dropped).then(pl.lit(RANDOM)).otherwise(pl.lit(KEPT))
    ).with_columns(keep=pl.col("reason") == KEPT)


def repetition_target(schedule: tuple[float, ...], epoch: int, dataset_size: int) -> int:
    """The pool size selective repetition keeps after `epoch` (from 1): the schedule's
    fraction of the whole dataset, the last fraction for every later epoch."""
    fraction = schedule[min(epoch, len(schedule)) - 1]
    # Rounded first: 0.07 * 100 is 7.000000000000001 in floats, and its ceil 8.
    return math.ceil(round(fraction * dataset_size, 6))


def selective_repetition(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """Keep the `pool_target` best-ranked samples: by the `rank_score` column the edge
    joins from the sample table, else by loss; `rank_order` says whether low or high
    ranks first. Ties go to the smaller sample_id and a missing score ranks last, so the
    cut is the same whatever the row order."""
    target = _pool_target(params, "selective-repetition")
    key = RANK_SCORE if RANK_SCORE in scores.collect_schema() else "loss"
    # NaN sorts above every number in Polars: as a missing score, it must rank last.
    rank = pl.col(key).fill_nan(None) if scores.collect_schema()[key].is_float() else pl.col(key)
    position = (
        pl.int_range(pl.len())
        .sort_by(
            [rank, pl.col("sample_id")],
            descending=[params.rank_order == "high_first", False],
            nulls_last=True,
        )
        .arg_sort()
    )
    return scores.with_columns(
        reason=pl.when(position < target).then(pl.lit(KEPT)).otherwise(pl.lit(BELOW_QUANTILE))
    ).with_columns(keep=pl.col("reason") == KEPT)


def uniform_draws(ids: pl.Series, seed: int, round_index: int, epoch: int) -> np.ndarray:
    """One uniform number in [0, 1) per id, drawn by numpy's Generator seeded with (seed,
    round, epoch) over the ids in sorted order: the same draw whatever the row order."""
    order = ids.arg_sort().to_numpy()
    draws = np.empty(len(ids), dtype=np.float64)
    draws[order] = np.random.default_rng([seed, round_index, epoch]).random(len(ids))
    return draws


def infobatch(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """Soft pruning in the style of InfoBatch (Qin et al., ICLR 2024): each epoch, a
    sample whose loss is below the pass's mean sits the next epoch out with probability
    `prune_ratio` (`skipped`, weight 0); the other below-mean samples weigh 1/(1 -
    prune_ratio) (`rescaled`), so the expected gradient stays that of the full pool; the
    rest weigh 1 (`above_mean`). Nothing leaves the pool for good: every sample is scored
    again and drawn afresh each epoch. In the last epochs the whole pool trains unweighted
    (`anneal`), InfoBatch's annealing, which undoes the bias of the rescaling: the
    decisions after epochs `last_soft_epoch + 1` onwards (the edge resolves it from the
    run's epochs and `anneal_epochs`) weight every sample 1."""
    if params.last_soft_epoch is None:
        raise ValueError("policy 'infobatch' needs the step's last_soft_epoch from the I/O edge")
    ratio = params.prune_ratio

    def draws(ids: pl.Series, round_index: int, epoch: int) -> np.ndarray:
        return uniform_draws(ids, params.seed, round_index, epoch)

    drawn = _seeded_draw(draws, pl.Float64)
    below_mean = pl.col("loss") < pl.col("loss").mean()
    reason = (
        pl.when(pl.col("epoch") > params.last_soft_epoch)
        .then(pl.lit(ANNEAL))
        .when(~below_mean)
        .then(pl.lit(ABOVE_MEAN))
        .when(drawn < ratio)
        .then(pl.lit(SKIPPED))
        .otherwise(pl.lit(RESCALED))
    )
    weight = (
        pl.when(pl.col("reason") == SKIPPED)
        .then(0.0)
        .when(pl.col("reason") == RESCALED)
        .then(1.0 / (1.0 - ratio))
        .otherwise(1.0)
    )
    return scores.with_columns(reason=reason).with_columns(
        keep=pl.lit(True), weight=weight.cast(pl.Float64)
    )


@dataclass(frozen=True)
class PolicyEntry:
    """A registered policy. `row_local`: it decides a sample from its own row (and its
    own history), so a shard of the pool can be decided apart; otherwise it needs the
    whole pool (counts, ranks). `params`: the PolicyConfig keys that change its decisions,
    recorded in the manifest."""

    decide: Policy
    row_local: bool
    params: tuple[str, ...]


POLICIES: dict[str, PolicyEntry] = {
    "standard": PolicyEntry(standard, True, ()),
    "stm": PolicyEntry(stm, True, ("delta", "delta_mode", "floor", "warmup", "patience")),
    "floor-only": PolicyEntry(floor_only, True, ("floor",)),
    "delta-only": PolicyEntry(delta_only, True, ("delta", "delta_mode")),
    "anti-stm": PolicyEntry(anti_stm, True, ("delta", "delta_mode", "ceiling")),
    "dual-stm": PolicyEntry(dual_stm, True, ("delta", "delta_mode", "floor", "ceiling")),
    "random": PolicyEntry(random_control, False, ("reference_run", "seed")),
    "selective-repetition": PolicyEntry(
        selective_repetition, False, ("schedule", "rank_column", "rank_order")
    ),
    "infobatch": PolicyEntry(infobatch, False, ("prune_ratio", "anneal_epochs", "seed")),
}


def _entry(name: str) -> PolicyEntry:
    try:
        return POLICIES[name]
    except KeyError as err:
        known = ", ".join(sorted(POLICIES))
        raise ConfigError(
            f"config key policy.name: unknown policy {name!r} (known: {known})"
        ) from err


def get_policy(name: str) -> Policy:
    return _entry(name).decide


def is_row_local(name: str) -> bool:
    return _entry(name).row_local


def policy_parameters(name: str, config: PolicyConfig, round_index: int) -> dict[str, object]:
    """The parameters that influence a policy's decisions, for the manifest record. A key
    added after manifests existed (warmup, patience) is recorded only when it differs from
    its default, so the manifests of runs that do not use it keep their ids; `standard`
    has none, so changing STM knobs does not change a standard run's ids."""
    defaults = PolicyConfig()
    out: dict[str, object] = {}
    for key in _entry(name).params:
        value = config.floor_for_round(round_index) if key == "floor" else getattr(config, key)
        if key == "rank_order":
            value = config.resolved_rank_order()
        if key in OPTIONAL_PARAMS and value == getattr(defaults, key):
            continue
        out[key] = list(value) if isinstance(value, tuple) else value
    if config.noise_guard:  # the guard changes decisions; the estimate alone does not
        out |= {key: getattr(config, key) for key in NOISE_GUARD_PARAMS}
    return out


# The noise keys that change decisions, recorded for every policy when the guard is on.
NOISE_GUARD_PARAMS = ("noise_guard", "noise_high_loss", "noise_warmup")


# Keys recorded only when set away from their default (see policy_parameters).
OPTIONAL_PARAMS = frozenset({"warmup", "patience", "rank_column"})
