"""Cutting a pool into shards and merging them back: a partition that never splits a
scoring block, and per-shard decisions equal to whole-pool decisions for every policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import PolicyConfig
from pipeline.policies import POLICIES
from pipeline.pruning import decide
from pipeline.sharding import merge_decisions, scoring_block_rows, shard_of_rank, split_pool
from tests.builders import make_sample_table, make_scores


@pytest.mark.parametrize(
    ("rows", "shards", "block"), [(10, 3, 1), (112, 3, 32), (5, 8, 1), (7, 2, 100)]
)
def test_shards_are_contiguous_near_equal_and_never_split_a_block(rows, shards, block) -> None:
    shard = shard_of_rank(rows, shards, block)
    assert len(shard) == rows
    assert (np.diff(shard) >= 0).all() and shard[0] == 0
    assert len(set(shard)) <= min(shards, rows)
    blocks = np.arange(rows) // block
    for b in set(blocks):
        assert len(set(shard[blocks == b])) == 1


def write_samples(path: Path, n: int) -> pa.Table:
    table = make_sample_table(n)
    # Stored out of id order: the cut follows the table's row order, as scoring does.
    table = table.take(np.random.default_rng(0).permutation(n))
    pq.write_table(table, path)
    return table


def test_split_pool_is_a_deterministic_partition_in_table_order(tmp_path: Path) -> None:
    table = write_samples(tmp_path / "samples.parquet", 50)
    pool = (
        table.column("sample_id").combine_chunks().filter(pa.array([i % 4 != 0 for i in range(50)]))
    )
    pieces = split_pool(tmp_path / "samples.parquet", pool, shards=3, batch_size=1)
    again = split_pool(tmp_path / "samples.parquet", pool.take(np.arange(len(pool))[::-1]), 3, 1)
    assert [p.to_pylist() for p in pieces] == [p.to_pylist() for p in again]
    assert len(pieces) == 3
    joined = [i for p in pieces for i in p.to_pylist()]
    assert sorted(joined) == sorted(pool.to_pylist())
    table_order = [i for i in table.column("sample_id").to_pylist() if i in set(joined)]
    assert joined == table_order


def test_a_pool_smaller_than_a_block_is_one_shard(tmp_path: Path) -> None:
    table = write_samples(tmp_path / "samples.parquet", 20)
    pieces = split_pool(tmp_path / "samples.parquet", table.column("sample_id"), 4, 2)
    assert scoring_block_rows(2) >= 20
    assert len(pieces) == 1


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_decides_a_shard_as_it_decides_the_whole_pool(
    name: str, tmp_path: Path
) -> None:
    """Deciding per shard is only exact for policies that decide a sample from its own
    row: a policy that ranks or samples the whole pool must not be sharded like this."""
    n = 40
    rng = np.random.default_rng(1)
    scores = make_scores(
        loss=rng.uniform(0, 2, n).tolist(), loss_prev=rng.uniform(0, 2, n).tolist()
    ).collect()
    policy = PolicyConfig(name=name, floor=1.0, delta=0.2)
    whole = decide(scores.lazy(), policy, 0).collect().sort("sample_id")
    parts = []
    for i, piece in enumerate((scores[:13], scores[13:27], scores[27:])):
        part = tmp_path / f"part-{i}.parquet"
        decide(piece.lazy(), policy, 0).sink_parquet(part)
        parts.append(part)
    assert merge_decisions(parts).collect().equals(whole)
