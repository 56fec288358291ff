"""Cutting a pool into shards and merging them back: a partition that never splits a
scoring block, per-shard decisions equal to whole-pool decisions for every row-local
policy, and a sharded step giving the single-process manifests for every policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import PolicyConfig, RunConfig, dumps_toml
from pipeline.policies import POLICIES, is_row_local
from pipeline.pruning import StepInputs, decide, pool_ids, prune_step, reset_pool
from pipeline.scoring import score_pool
from pipeline.sharding import (
    merge_decisions,
    merged_summary,
    record_sharded_step,
    score_shard,
    scoring_block_rows,
    shard_of_rank,
    split_pool,
)
from pipeline.store import RunLayout, sha256_file
from tests.builders import make_sample_table, make_scores, make_sum_scorer


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


@pytest.mark.parametrize("name", sorted(name for name in POLICIES if is_row_local(name)))
def test_every_row_local_policy_decides_a_shard_as_it_decides_the_whole_pool(
    name: str, tmp_path: Path
) -> None:
    """Deciding per shard is only exact for policies that decide a sample from its own
    row: a policy that ranks or samples the whole pool is decided on the merged scores
    (the test below)."""
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
    assert merge_decisions(parts).collect().sort("sample_id").equals(whole)


SHARDED_SAMPLES = 64
BATCH = 1  # scoring blocks of 16 rows: 64 samples make 3 shards


def run_steps(
    root: Path, policy: PolicyConfig, epochs: int, sharded: bool, run_id: str = "run"
) -> list[dict[str, Any]]:
    """Round 0 of a run in store `root`, scored by a sum scorer (a sample's loss is the
    same every epoch), each step single-process or in 3 shards."""
    layout = RunLayout(root, run_id)
    if not layout.samples.exists():
        layout.run_dir.mkdir(parents=True)
        pq.write_table(make_sample_table(SHARDED_SAMPLES), layout.samples)
    layout.config.write_text(dumps_toml(RunConfig(epochs=epochs, policy=policy)))
    scorer = make_sum_scorer(root / "scorer.onnx")
    records = [reset_pool(layout, 0, None, policy, "fp")]
    for epoch in range(1, epochs + 1):
        ids = pool_ids(layout, records[-1])
        if sharded:
            pieces = split_pool(layout.samples, ids, 3, BATCH)
            assert len(pieces) > 1 or len(ids) <= scoring_block_rows(BATCH)
            results = [
                score_shard(layout, scorer, piece, i, 0, epoch, policy, BATCH, 1)
                for i, piece in enumerate(pieces)
            ]
            summary = merged_summary([r.summary for r in results])
            raw = layout.scores(0, epoch)
        else:
            raw = root / "raw.parquet"
            summary = score_pool(scorer, layout.samples, ids, raw, BATCH, 1)
        step = StepInputs(0, epoch, raw, scorer, sha256_file(scorer), 0, summary.tokens_scored, {})
        if sharded:
            records.append(record_sharded_step(layout, records[-1], results, step, policy))
        else:
            records.append(prune_step(layout, records[-1], step, policy))
    return records


@pytest.mark.parametrize(
    "policy",
    [
        PolicyConfig(name="selective-repetition", schedule=(1.0, 0.5, 0.25)),
        PolicyConfig(name="random", reference_run="ref", seed=2),
        PolicyConfig(name="stm", patience=2, delta=0.0, floor=10.0),
        PolicyConfig(name="infobatch", anneal_epochs=0, seed=1),
    ],
    ids=["selective-repetition", "random", "stm-patience", "infobatch"],
)
def test_a_sharded_step_gives_the_single_process_manifests(
    policy: PolicyConfig, tmp_path: Path
) -> None:
    """Policies that need the whole pool decide on the merged scores; STM with patience
    reads its history in each shard. Either way the manifests match id for id."""
    runs = []
    for sharded in (False, True):
        root = tmp_path / ("sharded" if sharded else "single")
        if policy.reference_run:  # the pool sizes random follows
            reference = PolicyConfig(name="selective-repetition", schedule=(1.0, 0.5, 0.25))
            run_steps(root, reference, 3, sharded=False, run_id="ref")
        runs.append(run_steps(root, policy, 3, sharded))
    single, sharded_run = runs
    assert [r["id"] for r in sharded_run] == [r["id"] for r in single]
    if policy.name == "infobatch":  # soft: the pool stays, the weights change
        assert single[1]["pool"]["weights"]["trained"] < SHARDED_SAMPLES
    else:
        assert single[-1]["pool"]["size"] < SHARDED_SAMPLES
    assert not any(p.name.endswith(".parts") for p in (tmp_path / "sharded").rglob("*"))
