"""The bounded-memory sort gives the rows of an in-memory sort, in the same order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import sorted_sink
from pipeline.sorted_sink import bucket_of, sink_sorted, sort_to, split_points


def frame(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ids = [f"id-{value:09d}" for value in rng.permutation(n * 7)[:n]]
    return pl.DataFrame({"sample_id": ids, "loss": rng.random(n).astype(np.float32)})


@pytest.mark.parametrize("in_memory_rows", [1_000, 64, 7])
def test_bucketed_sort_gives_the_in_memory_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory_rows: int
) -> None:
    monkeypatch.setattr(sorted_sink, "SORT_IN_MEMORY_ROWS", in_memory_rows)
    data = frame(500)
    out = tmp_path / "sorted.parquet"
    sort_to(data.lazy(), out, data.height)
    assert pl.read_parquet(out).equals(data.sort("sample_id"))
    assert not [p for p in tmp_path.iterdir() if p.name != "sorted.parquet"]  # parts removed


def test_skewed_ids_still_sort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids that share a long prefix: buckets may be uneven or empty, never wrong."""
    monkeypatch.setattr(sorted_sink, "SORT_IN_MEMORY_ROWS", 10)
    ids = [f"doc-{i % 3:04d}-{i:03d}" for i in range(60)][::-1]
    data = pl.DataFrame({"sample_id": ids, "loss": list(range(60))})
    out = tmp_path / "sorted.parquet"
    sort_to(data.lazy(), out, data.height)
    assert pl.read_parquet(out).equals(data.sort("sample_id"))


def test_repeated_ids_survive_the_bucketed_sort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repeated id must reach the decision pass, which refuses it."""
    monkeypatch.setattr(sorted_sink, "SORT_IN_MEMORY_ROWS", 10)
    data = pl.DataFrame({"sample_id": [f"id-{i % 17:03d}" for i in range(60)], "loss": range(60)})
    out = tmp_path / "sorted.parquet"
    sort_to(data.lazy(), out, data.height)
    written = pl.read_parquet(out)
    assert written["sample_id"].to_list() == sorted(data["sample_id"].to_list())
    assert written.sort("sample_id", "loss").equals(data.sort("sample_id", "loss"))


def test_split_points_cut_the_ids_into_about_equal_buckets() -> None:
    data = frame(4_000, seed=3).lazy()
    points = split_points(data.select("sample_id"), 4_000, 4)
    sizes = data.select(bucket_of(points).alias("b")).collect()["b"].value_counts()
    assert len(points) == 3
    assert sizes["count"].min() > 700 and sizes["count"].max() < 1_300


@pytest.mark.parametrize("in_memory_rows", [1_000, 50])
def test_a_join_is_done_bucket_by_bucket_as_it_is_done_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory_rows: int
) -> None:
    """The previous pass has more ids than the current one (the pool shrank): every match
    is found in its bucket."""
    monkeypatch.setattr(sorted_sink, "SORT_IN_MEMORY_ROWS", in_memory_rows)
    previous = frame(600, seed=1).rename({"loss": "loss_prev"})
    current = previous.sample(400, seed=2).select("sample_id", loss=pl.col("loss_prev") / 2)

    def build(current: pl.LazyFrame, previous: pl.LazyFrame) -> pl.LazyFrame:
        return current.join(previous, on="sample_id", how="left")

    out = tmp_path / "joined.parquet"
    inputs = {"current": current.lazy(), "previous": previous.lazy()}
    sink_sorted(inputs, build, out, current.height)
    expected = build(current.lazy(), previous.lazy()).sort("sample_id").collect()
    assert pl.read_parquet(out).equals(expected)
