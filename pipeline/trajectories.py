"""Per-sample trajectory diagnostics from a run's score history: which samples *settle*
(their per-epoch loss change falls into a narrow band around zero and stays there) and which
keep *wandering*. Pure Polars, one row per (round, sample_id), so the columns can be joined
next to the scores (a later mislabel score reuses them).

A sample's trajectory is judged per round: a round starts from a reset pool and a fresh
baseline pass (its first scored epoch has no `delta`), so changes never span two rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline.errors import ConfigError

SETTLED = "settled"
WANDERING = "wandering"
UNDETERMINED = "undetermined"
TRAJECTORY_STATES = (SETTLED, WANDERING, UNDETERMINED)

TRAJECTORY_SCHEMA = pl.Schema(
    {
        "round": pl.Int32,
        "sample_id": pl.String,
        "n_epochs": pl.UInt32,
        "n_deltas": pl.UInt32,
        "last_epoch": pl.Int32,
        "mean_loss": pl.Float64,
        "last_loss": pl.Float64,
        "loss_rank": pl.Float64,
        "wander": pl.Float64,
        "left_pool": pl.Boolean,
        "settled": pl.Boolean,
        "settled_at": pl.Int32,
        "trajectory": pl.String,
    }
)

_KEYS = ["round", "sample_id"]


@dataclass(frozen=True)
class TrajectoryParams:
    """`band`: the largest |delta| (nats, the unit of `delta`) that counts as no change;
    `window`: how many consecutive in-band epochs, through the sample's last scored epoch,
    make it settled. One in-band epoch can be luck; `window` of them in a row is a plateau."""

    band: float = 0.05
    window: int = 3

    def __post_init__(self) -> None:
        if self.band < 0:
            raise ConfigError(f"trajectory band must be non-negative, got {self.band}")
        if self.window < 1:
            raise ConfigError(f"trajectory window must be at least 1, got {self.window}")


def _with_step_context(history: pl.LazyFrame, params: TrajectoryParams) -> pl.LazyFrame:
    """Per-row context the per-sample aggregation needs: the loss's percentile within its
    (round, epoch), the round's last scored epoch, and whether the row belongs to the
    sample's final in-band run (every scored change after its last out-of-band one)."""
    out_of_band = pl.col("delta").abs() > params.band
    last_out_of_band = pl.when(out_of_band).then(pl.col("epoch")).max().over(_KEYS)
    step = ["round", "epoch"]
    return history.with_columns(
        # midpoint percentile: 0.5 for a lone sample, no division by zero
        loss_percentile=(pl.col("loss").rank("average") - 0.5).over(step) / pl.len().over(step),
        round_last_epoch=pl.col("epoch").max().over("round"),
        in_final_band=(pl.col("delta").abs() <= params.band)
        & (pl.col("epoch") > last_out_of_band.fill_null(-1)),
    )


def trajectories(history: pl.LazyFrame, params: TrajectoryParams) -> pl.LazyFrame:
    """One row per (round, sample_id) of a stacked score history (columns `sample_id`,
    `round`, `epoch`, `loss`, `delta`, and optionally the policy's `keep`; one row per
    sample per scored epoch), with:

    - `n_epochs` scored, `n_deltas` (scored epochs with a previous pass), `last_epoch`;
    - `mean_loss`, `last_loss`, and `loss_rank`: the mean, over the sample's scored
      epochs, of its loss's percentile among the samples scored at the same (round,
      epoch) (0 lowest, 1 highest). Ranking within each step compares the sample with
      the same model state, so histories of different lengths stay comparable;
    - `wander`: the mean |delta| over the sample's scored changes (nats per epoch). The
      mean, not the sum, so a sample dropped early is not ranked calmer merely for having
      fewer epochs; in the unit of `band`, so it reads against the band directly;
    - `left_pool`: the policy dropped it (`keep` false at its last scored epoch); without
      a `keep` column, its history ends before the round's last scored epoch;
    - `settled`, `settled_at` and `trajectory`:

      * settled: its last `window` or more scored changes are all within `band`;
        `settled_at` is the first epoch of that final in-band run. This holds whether or
        not the sample later left the pool;
      * undetermined: not settled, and either fewer than `window` changes were scored
        (the round was too short to tell) or it left the pool before settling: a sample
        dropped as mastered ends on a sharp drop, and whether it would have settled is
        unknown, so it is not counted as wandering;
      * wandering: everything else: it stayed in the pool to the end of the round, had
        room to settle and did not.
    """
    settled = pl.col("in_final_band").sum() >= params.window
    if "keep" in history.collect_schema():
        # The policy's decision at the sample's last scored epoch: also right for a sample
        # dropped at the round's last epoch, whose history is as long as a survivor's.
        left_pool = pl.col("keep").sort_by("epoch").last().not_().fill_null(False)
    else:
        left_pool = pl.col("epoch").max() < pl.col("round_last_epoch").first()
    return (
        _with_step_context(history, params)
        .group_by(_KEYS)
        .agg(
            n_epochs=pl.len(),
            n_deltas=pl.col("delta").count(),
            last_epoch=pl.col("epoch").max(),
            mean_loss=pl.col("loss").mean(),
            last_loss=pl.col("loss").sort_by("epoch").last(),
            loss_rank=pl.col("loss_percentile").mean(),
            wander=pl.col("delta").abs().mean(),
            left_pool=left_pool,
            settled=settled,
            settled_at=pl.when(settled).then(pl.col("epoch").filter("in_final_band").min()),
        )
        .with_columns(
            trajectory=pl.when("settled")
            .then(pl.lit(SETTLED))
            .when((pl.col("n_deltas") < params.window) | pl.col("left_pool"))
            .then(pl.lit(UNDETERMINED))
            .otherwise(pl.lit(WANDERING))
        )
        .select(list(TRAJECTORY_SCHEMA))
        .cast(dict(TRAJECTORY_SCHEMA))
        .sort(_KEYS)
    )


def trajectory_counts(trajectory_frame: pl.LazyFrame, groups: pl.LazyFrame) -> pl.LazyFrame:
    """Samples per (round, group) in each trajectory state, one column per state (zero when
    none); `groups` maps `sample_id` to `group`."""
    counted = (
        trajectory_frame.join(groups, on="sample_id", how="left", validate="m:1")
        .group_by("round", "group")
        .agg(pl.col("trajectory").eq(state).sum().alias(state) for state in TRAJECTORY_STATES)
    )
    return counted.with_columns(total=pl.sum_horizontal(TRAJECTORY_STATES)).sort("round", "group")


def most_unsettled(trajectory_frame: pl.LazyFrame, top: int) -> pl.LazyFrame:
    """The `top` wandering (round, sample) rows with the largest `wander`; ties broken by
    round and sample_id so the list is the same on every run."""
    return (
        trajectory_frame.filter(pl.col("trajectory") == WANDERING)
        .sort(["wander", "round", "sample_id"], descending=[True, False, False])
        .head(top)
    )
