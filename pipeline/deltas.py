"""The loss-delta columns of a scoring pass: how far each sample's loss moved since the
previous pass of the same round, and running diagnostics of its loss over the round.

`loss_prev` is the sample's loss at the previous scored epoch of the same round. The first
scored epoch of a round has no previous pass: its `loss_prev`, `delta` and `rel_delta` are
null and that pass is the round's baseline. A round starts without history on purpose: the
model has moved since the previous round, and a stale loss from another round (or from
before a sample was dropped) would make any drop look sharp. This is also what the method's
Recursive STM reports: after a reset, the mass removal (the "Re-Circle") comes at the
second epoch, the first one with a delta.

The running diagnostics (`DIAGNOSTIC_COLUMNS`) summarise a sample's whole history in the
round, yet each pass computes them from its own row and the sample's row of the previous
pass only, as the deltas are: no pass ever rereads the earlier ones, and a bucket or a
shard of the pool gets the values the whole pool would. They are what the label-noise
diagnostics (`pipeline.label_noise`) read:

- `passes`: scored passes of the round in a row, this one included, that the sample was
  in: 1 at the baseline and for a sample absent from the previous pass (its history
  restarts, as its delta does);
- `mean_loss`, `min_loss`: the mean and the lowest of its loss over those passes;
- `wander`: the mean |delta| over those passes' deltas (nats per pass, the measure
  `pipeline.trajectories` ranks by); null while it has none;
- `calm`: how many passes in a row, ending with this one, moved its loss by at most
  `CALM_BAND`; 0 when this pass has no delta or moved it more.

A previous pass without these columns (a scores file from an earlier version, or a file
with only `sample_id` and `loss` given to `stm score --previous`) is read as if it were the
round's first pass, so older runs resume.
"""

from __future__ import annotations

import polars as pl

from pipeline.errors import DatasetError

# The largest |delta| (nats) that counts as no change: `pipeline.trajectories`' default
# band, so `calm` counts the passes a trajectory would call in band.
CALM_BAND = 0.05

DIAGNOSTIC_COLUMNS = ("passes", "mean_loss", "min_loss", "wander", "calm")

# The diagnostics come last, so the columns that existed before them keep their positions.
SCORE_SCHEMA = pl.Schema(
    {
        "sample_id": pl.String,
        "round": pl.Int32,
        "epoch": pl.Int32,
        "loss": pl.Float32,
        "loss_prev": pl.Float32,
        "delta": pl.Float32,
        "rel_delta": pl.Float32,
        "n_tokens": pl.Int64,
        "passes": pl.Int32,
        "mean_loss": pl.Float32,
        "min_loss": pl.Float32,
        "wander": pl.Float32,
        "calm": pl.Int32,
    }
)

SCORE_COLUMNS = list(SCORE_SCHEMA)

# The previous pass's diagnostics, joined beside the current loss under these names.
_PRIOR = {name: f"prior_{name}" for name in DIAGNOSTIC_COLUMNS}


def with_loss_deltas(
    current: pl.LazyFrame,
    previous: pl.LazyFrame | None,
    round_index: int,
    epoch: int,
) -> pl.LazyFrame:
    """Add `loss_prev`, `delta = loss_prev - loss` (positive when the loss fell),
    `rel_delta = delta / loss_prev` and the running diagnostics to raw losses; `previous`
    is the prior pass of this round, or None for the round's baseline pass."""
    if previous is None:
        joined = current.with_columns(
            pl.lit(None, dtype=pl.Float32).alias("loss_prev"),
            *(pl.lit(None, dtype=SCORE_SCHEMA[name]).alias(_PRIOR[name]) for name in _PRIOR),
        )
    else:
        prior = previous.select(
            "sample_id",
            pl.col("loss").alias("loss_prev"),
            *(
                value.alias(_PRIOR[name])
                for name, value in _diagnostics_of(previous, "previous scores").items()
            ),
        )
        # Not validated 1:1 (a third of the step's time at 10M rows): a repeated previous id
        # repeats the sample, and the pruning step refuses repeated samples.
        joined = current.join(prior, on="sample_id", how="left")
    return (
        joined.with_columns(delta=pl.col("loss_prev") - pl.col("loss"))
        .with_columns(_running_diagnostics())
        .select(
            "sample_id",
            pl.lit(round_index).alias("round"),
            pl.lit(epoch).alias("epoch"),
            "loss",
            "loss_prev",
            "delta",
            pl.when(pl.col("loss_prev") > 0)
            .then(pl.col("delta") / pl.col("loss_prev"))
            .alias("rel_delta"),
            "n_tokens",
            *DIAGNOSTIC_COLUMNS,
        )
        .cast(dict(SCORE_SCHEMA))
    )


def with_running_diagnostics(scores: pl.LazyFrame, source: str = "scores") -> pl.LazyFrame:
    """A score frame with the running diagnostics: as given when it has them all, else
    derived from its own `loss`, `loss_prev` and `delta` as if its previous pass were the
    round's first (a file of losses and deltas made by another tool, given to `stm prune`).
    The derived columns come last; `source` names the frame in an error."""
    if _has_diagnostics(scores, source):
        return scores
    first = _first_pass(pl.col("loss_prev"))
    return (
        scores.with_columns(value.alias(_PRIOR[name]) for name, value in first.items())
        .with_columns(_running_diagnostics())
        .drop(_PRIOR.values())
        .cast({name: SCORE_SCHEMA[name] for name in DIAGNOSTIC_COLUMNS})
    )


def _first_pass(loss: pl.Expr) -> dict[str, pl.Expr]:
    """The diagnostics of a sample at its first pass of the round, of loss `loss`."""
    return {
        "passes": pl.lit(1, dtype=pl.Int32),
        "mean_loss": loss,
        "min_loss": loss,
        "wander": pl.lit(None, dtype=pl.Float32),
        "calm": pl.lit(0, dtype=pl.Int32),
    }


def _diagnostics_of(scores: pl.LazyFrame, what: str) -> dict[str, pl.Expr]:
    """The diagnostic columns of a pass's scores, or, when it has none, what they are at a
    round's first pass."""
    if _has_diagnostics(scores, what):
        return {name: pl.col(name) for name in DIAGNOSTIC_COLUMNS}
    return _first_pass(pl.col("loss"))


def _has_diagnostics(scores: pl.LazyFrame, what: str) -> bool:
    """Whether `scores` has every diagnostic column (False: none of them). A partial set
    is refused rather than half-derived: the file was edited by hand or written by another
    tool, and which half to trust is unknown."""
    names = scores.collect_schema().names()
    present = [name for name in DIAGNOSTIC_COLUMNS if name in names]
    missing = [name for name in DIAGNOSTIC_COLUMNS if name not in names]
    if present and missing:
        raise DatasetError(
            f"{what}: column '{missing[0]}' missing beside the other running diagnostics "
            f"({', '.join(present)}); give all of {', '.join(DIAGNOSTIC_COLUMNS)} or none"
        )
    return not missing


def _running_diagnostics() -> list[pl.Expr]:
    """This pass's diagnostics from `loss`, `delta` and the previous pass's (the `prior_`
    columns). A sample without a delta (baseline, or absent from the previous pass) starts
    over. They read the loss and delta as stored (Float32), so `min_loss` is one of the
    stored losses and `calm` agrees with a band test on the stored deltas; means are
    updated in Float64."""
    continues = pl.col("delta").is_not_null()
    prior = {name: pl.col(column) for name, column in _PRIOR.items()}
    before = prior["passes"].cast(pl.Float64)  # passes before this one
    loss = pl.col("loss").cast(pl.Float32).cast(pl.Float64)
    change = pl.col("delta").cast(pl.Float32).abs()
    # The previous pass's `passes - 1` deltas plus this one: `wander` is null (no delta)
    # exactly when that count was 0.
    wander = (
        prior["wander"].cast(pl.Float64).fill_null(0.0) * (before - 1) + change.cast(pl.Float64)
    ) / before
    return [
        pl.when(continues).then(prior["passes"] + 1).otherwise(1).alias("passes"),
        pl.when(continues)
        .then((prior["mean_loss"].cast(pl.Float64) * before + loss) / (before + 1))
        .otherwise(loss)
        .alias("mean_loss"),
        pl.when(continues)
        .then(pl.min_horizontal(prior["min_loss"].cast(pl.Float64), loss))
        .otherwise(loss)
        .alias("min_loss"),
        pl.when(continues).then(wander).alias("wander"),
        pl.when(continues & (change <= CALM_BAND))
        .then(prior["calm"] + 1)
        .otherwise(0)
        .alias("calm"),
    ]
