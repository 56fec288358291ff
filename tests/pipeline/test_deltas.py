from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.deltas import (
    CALM_BAND,
    DIAGNOSTIC_COLUMNS,
    SCORE_COLUMNS,
    SCORE_SCHEMA,
    with_loss_deltas,
    with_running_diagnostics,
)
from pipeline.errors import DatasetError
from pipeline.trajectories import TrajectoryParams


def test_delta_columns_arithmetic() -> None:
    current = pl.LazyFrame(
        {"sample_id": ["a", "b", "c"], "loss": [0.5, 2.0, 1.0], "n_tokens": [3, 2, 1]}
    )
    previous = pl.LazyFrame({"sample_id": ["c", "a", "b"], "loss": [0.0, 2.0, 1.0]})
    out = with_loss_deltas(current, previous, round_index=1, epoch=4).collect().sort("sample_id")
    assert out.schema == SCORE_SCHEMA
    assert out["loss_prev"].to_list() == [2.0, 1.0, 0.0]
    assert out["delta"].to_list() == [1.5, -1.0, -1.0]
    assert out["rel_delta"].to_list() == [0.75, -1.0, None]  # no ratio from a zero loss
    assert out["round"].to_list() == [1, 1, 1]
    assert out["epoch"].to_list() == [4, 4, 4]
    assert out["n_tokens"].to_list() == [3, 2, 1]


def test_baseline_pass_has_null_history() -> None:
    current = pl.LazyFrame({"sample_id": ["a"], "loss": [0.5], "n_tokens": [1]})
    out = with_loss_deltas(current, None, round_index=0, epoch=1).collect()
    assert out.select("loss_prev", "delta", "rel_delta").row(0) == (None, None, None)


def test_join_is_by_sample_id_not_row_order() -> None:
    current = pl.LazyFrame({"sample_id": ["x", "y"], "loss": [1.0, 1.0], "n_tokens": [1, 1]})
    previous = pl.LazyFrame({"sample_id": ["y", "x"], "loss": [3.0, 2.0]})
    out = with_loss_deltas(current, previous, 0, 2).collect()
    assert dict(zip(out["sample_id"], out["delta"], strict=True)) == {"x": 1.0, "y": 2.0}


def test_a_repeated_previous_id_repeats_the_sample_for_pruning_to_refuse() -> None:
    """The join is not validated (too costly at scale); the repeat it makes is refused by
    the pruning step (tests/pipeline/test_manifest.py::test_a_sample_scored_twice...)."""
    current = pl.LazyFrame({"sample_id": ["x"], "loss": [1.0], "n_tokens": [1]})
    previous = pl.LazyFrame({"sample_id": ["x", "x"], "loss": [3.0, 2.0]})
    assert with_loss_deltas(current, previous, 0, 2).collect()["sample_id"].to_list() == ["x", "x"]


def chained_passes(losses: dict[str, list[float | None]]) -> list[pl.DataFrame]:
    """The score frames of consecutive passes of round 0 (epochs 1, 2, ...), each joined to
    the one before as the flow does; a None loss leaves the sample out of that pass."""
    frames: list[pl.DataFrame] = []
    previous = None
    for epoch in range(1, len(next(iter(losses.values()))) + 1):
        rows = {sid: trail[epoch - 1] for sid, trail in losses.items()}
        present = {sid: loss for sid, loss in rows.items() if loss is not None}
        current = pl.LazyFrame(
            {"sample_id": list(present), "loss": list(present.values()), "n_tokens": 1},
            schema={"sample_id": pl.String, "loss": pl.Float32, "n_tokens": pl.Int64},
        )
        frames.append(with_loss_deltas(current, previous, 0, epoch).collect().sort("sample_id"))
        previous = frames[-1].lazy()
    return frames


def diagnostics(frame: pl.DataFrame, sample_id: str) -> tuple[object, ...]:
    return frame.filter(pl.col("sample_id") == sample_id).select(DIAGNOSTIC_COLUMNS).row(0)


def test_new_columns_come_after_the_existing_ones() -> None:
    assert SCORE_COLUMNS == [
        "sample_id",
        "round",
        "epoch",
        "loss",
        "loss_prev",
        "delta",
        "rel_delta",
        "n_tokens",
        *DIAGNOSTIC_COLUMNS,
    ]
    assert SCORE_SCHEMA.names() == SCORE_COLUMNS


def test_calm_band_is_the_trajectories_default_band() -> None:
    assert CALM_BAND == TrajectoryParams().band


def test_running_diagnostics_over_four_passes() -> None:
    passes = chained_passes(
        {
            "flat": [2.0, 1.5, 1.5, 1.5],
            "back": [1.0, 1.0, 0.75, 0.75],
            "gap": [1.0, 1.25, None, 0.5],  # absent from pass 3: starts over at pass 4
        }
    )
    assert [diagnostics(frame, "flat") for frame in passes] == [
        (1, 2.0, 2.0, None, 0),
        (2, 1.75, 1.5, 0.5, 0),
        (3, pytest.approx(5 / 3), 1.5, 0.25, 1),
        (4, 1.625, 1.5, pytest.approx(1 / 6), 2),
    ]
    assert [diagnostics(frame, "back") for frame in passes] == [
        (1, 1.0, 1.0, None, 0),
        (2, 1.0, 1.0, 0.0, 1),
        (3, pytest.approx(11 / 12), 0.75, 0.125, 0),
        (4, 0.875, 0.75, pytest.approx(1 / 12), 1),
    ]
    gap = [frame.filter(pl.col("sample_id") == "gap") for frame in passes]
    assert [frame.height for frame in gap] == [1, 1, 0, 1]
    assert diagnostics(passes[1], "gap") == (2, 1.125, 1.0, 0.25, 0)
    assert diagnostics(passes[3], "gap") == (1, 0.5, 0.5, None, 0)
    assert passes[3].filter(pl.col("sample_id") == "gap")["delta"].to_list() == [None]


@pytest.mark.parametrize("columns", [["sample_id", "loss"], SCORE_COLUMNS[:8]])
def test_a_previous_pass_without_diagnostics_counts_as_the_rounds_first(
    columns: list[str],
) -> None:
    """A scores file from before the diagnostics (or a bare `stm score --previous` file):
    the run resumes as if that pass had been the round's first."""
    first = with_loss_deltas(
        pl.LazyFrame({"sample_id": ["a", "b"], "loss": [3.0, 1.03125], "n_tokens": [1, 1]}),
        pl.LazyFrame({"sample_id": ["a", "b"], "loss": [4.0, 9.0]}),
        0,
        4,
    ).select(columns)
    current = pl.LazyFrame({"sample_id": ["a", "b"], "loss": [1.0, 1.0], "n_tokens": [1, 1]})
    out = with_loss_deltas(current, first, 0, 5).collect()
    assert out.schema == SCORE_SCHEMA
    assert diagnostics(out, "a") == (2, 2.0, 1.0, 2.0, 0)
    assert diagnostics(out, "b") == (2, 1.015625, 1.0, 0.03125, 1)  # 0.03 nats: in band


def test_a_previous_pass_with_some_diagnostics_is_refused() -> None:
    previous = pl.LazyFrame({"sample_id": ["a"], "loss": [1.0], "passes": [3]})
    current = pl.LazyFrame({"sample_id": ["a"], "loss": [1.0], "n_tokens": [1]})
    with pytest.raises(DatasetError, match="previous scores: column 'mean_loss' missing"):
        with_loss_deltas(current, previous, 0, 2)


def test_diagnostics_are_row_local() -> None:
    """Each id gets the same values whether the pool is joined whole or in pieces, as the
    bounded-memory sort (buckets) and the shards join it."""
    passes = chained_passes({f"s{i}": [2.0, 2.0 - i / 8] for i in range(8)})
    current = pl.LazyFrame(
        {"sample_id": [f"s{i}" for i in range(8)], "loss": [1.0] * 8, "n_tokens": [1] * 8}
    )
    whole = with_loss_deltas(current, passes[1].lazy(), 0, 3).collect().sort("sample_id")
    pieces = [pl.col("sample_id") < "s4", pl.col("sample_id") >= "s4"]
    halves = [
        with_loss_deltas(current.filter(piece), passes[1].lazy().filter(piece), 0, 3).collect()
        for piece in pieces
    ]
    assert_frame_equal(pl.concat(halves).sort("sample_id"), whole)


def test_with_running_diagnostics_derives_them_from_the_deltas() -> None:
    """A scores file made by another tool, given to `stm prune`: its previous pass is
    taken as the round's first."""
    scores = pl.LazyFrame(
        {
            "sample_id": ["a", "b"],
            "loss": [1.0, 0.5],
            "loss_prev": [3.0, None],
            "delta": [2.0, None],
        }
    )
    out = with_running_diagnostics(scores).collect()
    assert out.columns == ["sample_id", "loss", "loss_prev", "delta", *DIAGNOSTIC_COLUMNS]
    assert out.schema["passes"] == pl.Int32 and out.schema["wander"] == pl.Float32
    assert diagnostics(out, "a") == (2, 2.0, 1.0, 2.0, 0)
    assert diagnostics(out, "b") == (1, 0.5, 0.5, None, 0)


def test_with_running_diagnostics_keeps_given_ones_and_refuses_a_partial_set() -> None:
    scores = chained_passes({"a": [2.0, 1.0]})[1].lazy()
    assert_frame_equal(with_running_diagnostics(scores).collect(), scores.collect())
    with pytest.raises(DatasetError, match="^mine.parquet: column 'calm' missing beside"):
        with_running_diagnostics(scores.drop("calm"), "mine.parquet")
