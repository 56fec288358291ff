"""Trajectory diagnostics on hand-built score histories: which samples settle, wander or
cannot be judged, when they settled, and which are the most unsettled."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.errors import ConfigError
from pipeline.trajectories import (
    TRAJECTORY_SCHEMA,
    TrajectoryParams,
    most_unsettled,
    trajectories,
    trajectory_counts,
)

# Binary fractions throughout, so every delta and mean is exact.
PARAMS = TrajectoryParams(band=0.125, window=2)


def make_history(losses: dict[str, list[float]], round_index: int = 0) -> pl.LazyFrame:
    """A stacked score history: each sample's loss at epochs 1, 2, ... of one round, with
    `delta = loss_prev - loss` (null at the round's first epoch) as the flow writes it."""
    rows = [
        {
            "sample_id": sample_id,
            "round": round_index,
            "epoch": epoch,
            "loss": loss,
            "loss_prev": previous,
            "delta": None if previous is None else previous - loss,
        }
        for sample_id, history in losses.items()
        for epoch, (loss, previous) in enumerate(
            zip(history, [None, *history][:-1], strict=True), start=1
        )
    ]
    schema = {
        "sample_id": pl.String,
        "round": pl.Int32,
        "epoch": pl.Int32,
        "loss": pl.Float64,
        "loss_prev": pl.Float64,
        "delta": pl.Float64,
    }
    return pl.LazyFrame(rows, schema=schema)


# Round 0 runs 4 epochs; a shorter history means the sample left the pool.
ROUND_0 = {
    "flat": [1.0, 1.0, 1.0, 1.0],  # in band from epoch 2
    "drops_then_flat": [2.0, 1.0, 1.0, 1.0],  # out at 2, in band from 3
    "oscillates": [2.0, 1.5, 2.0, 1.5],  # |delta| 0.5 every epoch
    "descends": [3.0, 2.75, 2.25, 2.0],  # still moving at the end: 0.25, 0.5, 0.25
    "moves_last": [1.0, 1.0, 1.0, 0.5],  # in band, then a jump at the last epoch
    "left_settled": [0.75, 0.625, 0.5],  # left at epoch 3, its last 2 changes in band
    "left_sharp": [2.0, 1.0, 0.25],  # left at epoch 3 on a sharp drop
    "left_early": [1.0, 1.0],  # left at epoch 2: one change, fewer than the window
}


def by_sample(frame: pl.LazyFrame) -> dict[str, dict]:
    return {row["sample_id"]: row for row in frame.collect().iter_rows(named=True)}


def test_each_sample_is_settled_wandering_or_undetermined() -> None:
    rows = by_sample(trajectories(make_history(ROUND_0), PARAMS))
    assert {s: (r["trajectory"], r["settled_at"]) for s, r in rows.items()} == {
        "flat": ("settled", 2),
        "drops_then_flat": ("settled", 3),
        "oscillates": ("wandering", None),
        "descends": ("wandering", None),
        "moves_last": ("wandering", None),
        "left_settled": ("settled", 2),
        "left_sharp": ("undetermined", None),
        "left_early": ("undetermined", None),
    }
    assert {s for s, r in rows.items() if r["settled"]} == {
        "flat",
        "drops_then_flat",
        "left_settled",
    }
    assert {s for s, r in rows.items() if r["left_pool"]} == {
        "left_settled",
        "left_sharp",
        "left_early",
    }


def test_history_columns_and_wander_is_mean_absolute_delta() -> None:
    frame = trajectories(make_history(ROUND_0), PARAMS)
    assert frame.collect_schema() == TRAJECTORY_SCHEMA
    rows = by_sample(frame)
    descends = rows["descends"]
    assert (descends["n_epochs"], descends["n_deltas"], descends["last_epoch"]) == (4, 3, 4)
    assert descends["mean_loss"] == 2.5 and descends["last_loss"] == 2.0
    assert descends["wander"] == pytest.approx(1 / 3)
    assert rows["oscillates"]["wander"] == 0.5
    assert rows["left_sharp"]["wander"] == 0.875
    assert rows["left_early"]["n_epochs"] == 2 and rows["left_early"]["wander"] == 0.0


@pytest.mark.parametrize(
    ("band", "window", "expected"),
    [
        (0.25, 3, "settled"),  # a change of exactly the band is in it
        (0.125, 3, "wandering"),
        (0.25, 4, "undetermined"),  # three changes can never fill a window of four
    ],
)
def test_band_is_inclusive_and_window_needs_enough_changes(
    band: float, window: int, expected: str
) -> None:
    history = make_history({"steady": [1.0, 0.75, 0.5, 0.25]})
    row = by_sample(trajectories(history, TrajectoryParams(band=band, window=window)))["steady"]
    assert row["trajectory"] == expected


def test_rounds_are_judged_separately() -> None:
    """A round's first epoch has no delta, and 'left the pool' is relative to its own
    round's last epoch: a short round is not a dropped sample."""
    history = pl.concat(
        [
            make_history({"a": [2.0, 1.0, 0.0, 0.0], "b": [1.0, 1.0, 1.0, 1.0]}, 0),
            make_history({"a": [1.0, 1.0, 1.0], "b": [1.0, 2.0, 1.0]}, 1),
        ]
    )
    rows = trajectories(history, PARAMS).collect()
    states = {(r, s): t for r, s, t in rows.select("round", "sample_id", "trajectory").iter_rows()}
    assert states == {
        (0, "a"): "wandering",
        (0, "b"): "settled",
        (1, "a"): "settled",
        (1, "b"): "wandering",
    }
    assert not rows["left_pool"].any()


def test_loss_rank_is_the_mean_percentile_within_each_step() -> None:
    history = make_history({"low": [1.0, 1.0], "mid": [2.0, 3.0], "high": [3.0, 2.0]})
    rows = by_sample(trajectories(history, PARAMS))
    # epoch 1: low, mid, high; epoch 2: low, high, mid -> percentiles 1/6, 1/2, 5/6
    assert rows["low"]["loss_rank"] == pytest.approx(1 / 6)
    assert rows["mid"]["loss_rank"] == pytest.approx((1 / 2 + 5 / 6) / 2)
    assert rows["high"]["loss_rank"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    alone = by_sample(trajectories(make_history({"only": [1.0, 0.5]}), PARAMS))["only"]
    assert alone["loss_rank"] == 0.5


def test_counts_per_round_and_group() -> None:
    history = pl.concat(
        [make_history(ROUND_0, 0), make_history({"flat": [1.0, 1.0], "oscillates": [1.0]}, 1)]
    )
    groups = pl.LazyFrame(
        {
            "sample_id": list(ROUND_0),
            "group": ["a", "a", "b", "b", "a", "b", "b", "a"],
        }
    )
    counts = trajectory_counts(trajectories(history, PARAMS), groups).collect()
    assert counts.to_dicts() == [
        {"round": 0, "group": "a", "settled": 2, "wandering": 1, "undetermined": 1, "total": 4},
        {"round": 0, "group": "b", "settled": 1, "wandering": 2, "undetermined": 1, "total": 4},
        {"round": 1, "group": "a", "settled": 0, "wandering": 0, "undetermined": 1, "total": 1},
        {"round": 1, "group": "b", "settled": 0, "wandering": 0, "undetermined": 1, "total": 1},
    ]


def test_most_unsettled_ranks_wandering_samples_by_wander_then_round_and_id() -> None:
    history = pl.concat(
        [
            make_history(ROUND_0, 0),
            make_history({"twin": [2.0, 1.5, 2.0, 1.5], "calm": [1.0, 1.0, 1.0, 1.0]}, 1),
        ]
    )
    ranked = most_unsettled(trajectories(history, PARAMS), top=10).collect()
    # left_sharp moved more (0.875) but left the pool: undetermined, not listed
    assert ranked.select("round", "sample_id").rows() == [
        (0, "oscillates"),
        (1, "twin"),
        (0, "descends"),
        (0, "moves_last"),
    ]
    assert most_unsettled(trajectories(history, PARAMS), top=1).collect()[
        "sample_id"
    ].to_list() == ["oscillates"]


def test_an_empty_history_gives_empty_frames() -> None:
    empty = make_history({})
    assert trajectories(empty, PARAMS).collect().is_empty()
    groups = pl.LazyFrame(schema={"sample_id": pl.String, "group": pl.String})
    assert trajectory_counts(trajectories(empty, PARAMS), groups).collect().is_empty()


@pytest.mark.parametrize(
    ("band", "window", "message"),
    [(-0.1, 3, "trajectory band must be non-negative"), (0.05, 0, "window must be at least 1")],
)
def test_parameters_are_checked(band: float, window: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrajectoryParams(band=band, window=window)


def test_a_sample_dropped_at_the_rounds_last_epoch_left_the_pool() -> None:
    """Its history is as long as a survivor's: only the policy's `keep` tells it left, so
    a sharp last drop makes it undetermined (it was mastered), not wandering."""
    history = make_history({"kept_moving": [2.0, 1.5, 1.0, 0.5], "dropped": [2.0, 1.5, 1.0, 0.5]})
    keep = pl.LazyFrame(
        {
            "sample_id": ["kept_moving"] * 4 + ["dropped"] * 4,
            "epoch": [1, 2, 3, 4] * 2,
            "keep": [True] * 4 + [True, True, True, False],
        },
        schema={"sample_id": pl.String, "epoch": pl.Int32, "keep": pl.Boolean},
    )
    rows = by_sample(trajectories(history.join(keep, on=["sample_id", "epoch"]), PARAMS))
    assert (rows["dropped"]["left_pool"], rows["dropped"]["trajectory"]) == (True, "undetermined")
    assert (rows["kept_moving"]["left_pool"], rows["kept_moving"]["trajectory"]) == (
        False,
        "wandering",
    )
    # Without decisions, the same histories cannot be told apart.
    rows = by_sample(trajectories(history, PARAMS))
    assert rows["dropped"]["trajectory"] == rows["kept_moving"]["trajectory"] == "wandering"
