"""Label noise: which scored samples look mislabeled, what share of the pool they make up
as a round goes on, and a guard that quarantines them, all from the running diagnostics
`pipeline.deltas` stores beside each pass's scores.

Why it matters for STM: a mislabeled sample keeps a high loss however long the model
trains, so a rule that drops samples once mastered never drops it. Each epoch removes
clean mastered samples and keeps the noisy ones, so the noisy share of the pool grows,
and the late epochs of a round train more and more on wrong labels.

The criterion (`likely_mislabeled`), after a warm-up of `warmup` passes of the round: the
sample's loss has been at or above `high_loss` on every pass of the round so far
(`min_loss`), and it did not fall by more than the calm band on this pass (`delta`). It
reads one row, so it works per shard and per bucket like any row-local policy.

Its limits, which is why the guard is off by default:

- a clean sample that is genuinely hard (ambiguous, or beyond the model for now) and
  stalls above `high_loss` looks exactly like a mislabeled one: a loss alone cannot tell
  them apart. Counted suspects are an estimate of the noise the model has not fitted plus
  the hard samples it cannot fit yet, closer to an upper bound than to a measurement;
- the fall test reads one pass: a hard clean sample whose descent pauses for a pass
  while its loss is still above `high_loss` is suspect on that pass;
- a mislabeled sample the model memorises falls below `high_loss` and escapes it for the
  rest of the round, as does a sample whose loss dipped below once by luck.

The guard quarantines rather than deletes: a suspect leaves the pool for the rest of the
round with reason `suspect-label`, is listed in the step's decisions for an audit, and
comes back with the rest of the dataset at the next round's reset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NoReturn

import polars as pl

from pipeline.config import PolicyConfig
from pipeline.deltas import CALM_BAND
from pipeline.errors import ConfigError

SUSPECT_LABEL = "suspect-label"

# The decisions' column holding the criterion: null before the round's warm-up ends.
SUSPECT = "likely_mislabeled"

# The score columns (`pipeline.deltas.SCORE_SCHEMA`) the criterion reads.
CRITERION_COLUMNS = ("passes", "min_loss", "delta")
# ... and what the guard and the estimate read besides, from a policy's decided rows.
REQUIRED_COLUMNS = (*CRITERION_COLUMNS, "keep", "reason")

# (round, epoch, share) of one step, as `noise_warning` reads a run's history.
NoiseStep = tuple[int, int, float | None]


@dataclass(frozen=True)
class NoiseParams:
    """`high_loss`: the loss (nats) at or above which the model gives the label less than
    even odds (ln 2); `warmup`: how many passes a round starts with that are not judged
    (2: judging starts at the third pass, with two deltas behind it); `growth`: the factor
    by which the pool's likely-mislabeled share may grow within a round before
    `noise_warning` speaks; `guard`: quarantine suspects."""

    high_loss: float = 0.693
    warmup: int = 2
    growth: float = 2.0
    guard: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.high_loss) and self.high_loss > 0):
            _refuse("high_loss", f"must be a positive finite number, got {self.high_loss}")
        if self.warmup < 1:
            _refuse(
                "warmup",
                f"must be at least 1, got {self.warmup}: the baseline pass has no delta to judge",
            )
        if not self.growth > 1:
            _refuse(
                "growth",
                f"must be greater than 1, got {self.growth}: a share that did not grow "
                "is no warning",
            )

    @classmethod
    def from_policy(cls, config: PolicyConfig) -> NoiseParams:
        """The `noise_*` keys of a run's [policy]."""
        return cls(
            high_loss=config.noise_high_loss,
            warmup=config.noise_warmup,
            growth=config.noise_growth,
            guard=config.noise_guard,
        )


def _refuse(key: str, message: str) -> NoReturn:
    raise ConfigError(f"config key policy.noise_{key}: {message}", key=f"policy.noise_{key}")


def judged(params: NoiseParams) -> pl.Expr:
    """The row is past the warm-up: its sample was in more than `warmup` passes of the
    round in a row (`passes`), so it has at least `warmup` deltas behind it."""
    return (pl.col("passes") > params.warmup).fill_null(False)


def likely_mislabeled(params: NoiseParams) -> pl.Expr:
    """True on a score row whose sample looks mislabeled: past the warm-up, its loss at or
    above `high_loss` on every pass of the round so far (`min_loss`), and not falling by
    more than `CALM_BAND` on this pass (`delta`, positive when the loss fell).

    Why these three: every loss is high early in a round, so the warm-up waits for the
    clean samples to separate. `min_loss` rather than the current loss, because the loss
    of a label the model cannot fit stays high while the clean samples' fall; one pass
    below `high_loss` shows the model can fit the label, so that sample is cleared for the
    round (a conservative choice: one low pass clears a sample, one high pass never makes
    a suspect). The fall test
    spares a hard but clean sample while the model is learning it: a loss still dropping
    by more than the calm band is progress, not noise; once it stalls above `high_loss`,
    it is as suspect as a mislabeled sample, and no loss-only test can do better. Null
    columns count as not suspect."""
    return (
        judged(params)
        & (pl.col("min_loss") >= params.high_loss).fill_null(False)
        & (pl.col("delta") <= CALM_BAND).fill_null(False)
    )


def with_noise_guard(decided: pl.LazyFrame, params: NoiseParams) -> pl.LazyFrame:
    """A policy's decided rows (its scores with `keep` and `reason`) with every likely
    mislabeled sample it would keep quarantined: `keep` false, reason `suspect-label`.
    A sample the policy dropped keeps its reason: it left for that reason whatever its
    label. Rows, their order and the other columns are unchanged, so the guard composes
    with any policy and stays row-local. Without `params.guard`, `decided` as it is."""
    if not params.guard:
        return decided
    _require(decided, REQUIRED_COLUMNS, "the noise guard")
    quarantine = pl.col("keep") & likely_mislabeled(params)
    return decided.with_columns(
        keep=pl.col("keep") & ~quarantine,
        reason=pl.when(quarantine).then(pl.lit(SUSPECT_LABEL)).otherwise(pl.col("reason")),
    )


@dataclass(frozen=True)
class NoiseEstimate:
    """Counts of one step's decided rows: `scored` rows, `judged` past the warm-up,
    `suspects` likely mislabeled, `suspects_in_pool` of them kept, the `pool` kept and the
    samples `quarantined` by the guard. Counts add up, so the estimates of a step's
    slices or shards sum to the step's (`+`)."""

    scored: int
    judged: int
    suspects: int
    suspects_in_pool: int
    pool: int
    quarantined: int

    @property
    def share(self) -> float | None:
        """The likely-mislabeled share of the pool the model trains on next; None before
        the warm-up (nothing judged) or for an empty pool. With the guard on it is 0: the
        guard quarantines every suspect the policy kept."""
        if self.judged == 0 or self.pool == 0:
            return None
        return self.suspects_in_pool / self.pool

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> NoiseEstimate:
        """From a row of the `noise_counts` aggregations."""
        return cls(**{f.name: int(counts[f.name]) for f in fields(cls)})

    def __add__(self, other: NoiseEstimate) -> NoiseEstimate:
        return NoiseEstimate(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


def suspect_column(params: NoiseParams) -> pl.Expr:
    """`likely_mislabeled` for a decisions file: the criterion, null while the sample is
    not judged yet, so counts can tell judged samples from the others."""
    return pl.when(judged(params)).then(likely_mislabeled(params)).alias(SUSPECT)


def noise_counts() -> list[pl.Expr]:
    """The aggregations behind a `NoiseEstimate` over decided rows with `keep`, `reason`
    and `likely_mislabeled` (`suspect_column`), one named sum each: what the decision
    pass folds in slice by slice, and what `stm manifests verify` recounts."""
    suspect = pl.col(SUSPECT).fill_null(False)
    kept = pl.col("keep").fill_null(False)
    return [
        pl.len().alias("scored"),
        pl.col(SUSPECT).is_not_null().sum().alias("judged"),
        suspect.sum().alias("suspects"),
        (suspect & kept).sum().alias("suspects_in_pool"),
        kept.sum().alias("pool"),
        (pl.col("reason") == SUSPECT_LABEL).fill_null(False).sum().alias("quarantined"),
    ]


def noise_estimate(decisions: pl.LazyFrame | pl.DataFrame) -> NoiseEstimate:
    """The noise estimate of one step's decided rows, in one aggregation."""
    _require(decisions.lazy(), (SUSPECT, "keep", "reason"), "the noise estimate")
    return NoiseEstimate.from_counts(
        decisions.lazy().select(noise_counts()).collect().row(0, named=True)
    )


def noise_record(
    params: NoiseParams,
    estimate: NoiseEstimate,
    round_index: int,
    epoch: int,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """A step's label-noise entry for its manifest. `previous`: the entry of the previous
    step of the same round (None at its first step), which carries the round's start: the
    first step whose share is above 0 (a start at 0 would leave growth undefined for the
    rest of the round). Everything here follows from the estimate and `previous`, so a
    resumed run needs no history and `stm manifests verify` recomputes it."""
    share = estimate.share
    start_epoch, start_share = None, None
    if previous and previous.get("round_start_share"):
        start_epoch, start_share = previous["round_start_epoch"], previous["round_start_share"]
    elif share:
        start_epoch, start_share = epoch, share
    history: list[NoiseStep] = [(round_index, epoch, share)]
    if start_epoch is not None and start_epoch != epoch:
        history.insert(0, (round_index, start_epoch, start_share))
    return {
        "guard": params.guard,
        "high_loss": params.high_loss,
        "warmup": params.warmup,
        "growth_threshold": params.growth,
        "scored_suspects": estimate.suspects,
        "pool_suspects": estimate.suspects_in_pool,
        "quarantined": estimate.quarantined,
        "share": share,
        "round_start_epoch": start_epoch,
        "round_start_share": start_share,
        "growth": noise_growth(start_share, share),
        "warning": noise_warning(history, params),
    }


def previous_noise(parent: dict[str, Any], round_index: int) -> dict[str, Any] | None:
    """The noise entry a step continues from: its parent's, when the parent is a step of
    the same round (a reset starts the round afresh; an older record has none)."""
    if parent["round"] != round_index or parent["kind"] != "prune":
        return None
    return parent.get("noise")


def params_of_record(noise: dict[str, Any]) -> NoiseParams:
    """The settings a manifest's noise entry was computed with."""
    return NoiseParams(
        high_loss=noise["high_loss"],
        warmup=noise["warmup"],
        growth=noise["growth_threshold"],
        guard=noise["guard"],
    )


def noise_growth(first_share: float | None, share: float | None) -> float | None:
    """How many times `share` is `first_share`; None when either is unknown or the first
    is 0: growth from nothing has no factor, and a warning on the first few suspects of a
    pool that had none would fire on a single sample."""
    if first_share is None or share is None or first_share <= 0:
        return None
    return share / first_share


def noise_warning(history: Sequence[NoiseStep], params: NoiseParams) -> str | None:
    """One line when the likely-mislabeled share of the pool at the latest step of
    `history` is more than `params.growth` times the share at its round's first judged
    step (the first with a share), else None. Steps may come in any order."""
    if not history:
        return None
    steps = sorted(history, key=lambda step: step[:2])
    round_index, epoch, share = steps[-1]
    if share is None:
        return None
    first_epoch, first_share = next(
        (e, s) for r, e, s in steps if r == round_index and s is not None
    )
    growth = noise_growth(first_share, share)
    if growth is None or growth <= params.growth:
        return None
    return (
        f"round {round_index} epoch {epoch}: likely-mislabeled share of the pool grew "
        f"{growth:.1f}x since epoch {first_epoch} ({first_share:.1%} -> {share:.1%}, "
        f"threshold {params.growth:.1f}x); consider policy.noise_guard = true (docs/label-noise.md)"
    )


def _require(frame: pl.LazyFrame, columns: Sequence[str], what: str) -> None:
    """Refuse rows without the columns a computation reads (the score diagnostics of
    `pipeline.deltas`, a policy's keep and reason, the criterion's column), or every
    sample would silently count as clean."""
    missing = [name for name in columns if name not in frame.collect_schema().names()]
    if missing:
        raise ValueError(
            f"{what} needs the columns {', '.join(columns)}; missing: {', '.join(missing)}"
        )
