from __future__ import annotations

import polars as pl

from pipeline.deltas import SCORE_SCHEMA, with_loss_deltas


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
