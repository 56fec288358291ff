"""Pruning policies: pure functions from a LazyFrame of scores (the columns of
`pipeline.deltas.SCORE_SCHEMA`) to the same rows with a decision added, `keep` and a
`reason` (DECISION_SCHEMA), as datatrove's filters do, so every drop can be explained.
Keeping the scores' columns spares a join of the decisions back onto them, and keeping
their order (sorted by id) spares a sort. Adding a policy is one function and one
registry entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import polars as pl

from pipeline.config import PolicyConfig
from pipeline.errors import ConfigError

DECISION_SCHEMA = pl.Schema({"sample_id": pl.String, "keep": pl.Boolean, "reason": pl.String})

# Reasons, so audits can count and filter on them.
KEPT = "kept"
BASELINE = "baseline"
LEARNING = "learning"
ABOVE_FLOOR = "above_floor"
MASTERED = "mastered"


@dataclass(frozen=True)
class PolicyParams:
    """The parameters one pruning step ran with (the floor already tightened for its
    round); recorded verbatim in the manifest."""

    delta: float
    delta_mode: Literal["absolute", "relative"]
    floor: float

    @classmethod
    def for_round(cls, config: PolicyConfig, round_index: int) -> PolicyParams:
        return cls(config.delta, config.delta_mode, config.floor_for_round(round_index))


Policy = Callable[[pl.LazyFrame, PolicyParams], pl.LazyFrame]


def standard(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """Keep everything: the baseline STM is measured against."""
    return scores.with_columns(keep=pl.lit(True), reason=pl.lit(KEPT))


def stm(scores: pl.LazyFrame, params: PolicyParams) -> pl.LazyFrame:
    """Drop a sample when its loss fell sharply AND is at or below the mastery floor.

    The floor is the method's fix for premature ejection: a hard sample whose loss merely
    dips once is kept until it is actually learnt. Without a previous pass (`delta` null)
    nothing can be judged, so the sample is kept as the baseline.
    """
    change = pl.col("delta") if params.delta_mode == "absolute" else pl.col("rel_delta")
    no_history = pl.col("delta").is_null()
    sharp_drop = change.fill_null(-float("inf")) >= params.delta
    mastered = pl.col("loss") <= params.floor
    reason = (
        pl.when(no_history)
        .then(pl.lit(BASELINE))
        .when(~sharp_drop)
        .then(pl.lit(LEARNING))
        .when(~mastered)
        .then(pl.lit(ABOVE_FLOOR))
        .otherwise(pl.lit(MASTERED))
    )
    return scores.with_columns(reason=reason).with_columns(keep=pl.col("reason") != MASTERED)


POLICIES: dict[str, Policy] = {"standard": standard, "stm": stm}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError as err:
        known = ", ".join(sorted(POLICIES))
        raise ConfigError(
            f"config key policy.name: unknown policy {name!r} (known: {known})"
        ) from err


def policy_parameters(name: str, params: PolicyParams) -> dict[str, object]:
    """The parameters that influence a policy's decisions, for the manifest record:
    `standard` has none, so changing STM knobs does not change a standard run's ids."""
    if name == "standard":
        return {}
    return {"delta": params.delta, "delta_mode": params.delta_mode, "floor": params.floor}
