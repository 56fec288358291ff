"""Scoring in shards: a pool's ids split into disjoint pieces that can be scored and
decided apart (on other processes or machines), and the pieces merged back into the files
one single-process pass writes. Shard parts live beside the step's scores file, so a
worker that can read the store can write them."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.config import PolicyConfig
from pipeline.decision_pass import row_count
from pipeline.deltas import with_loss_deltas
from pipeline.policies import is_row_local
from pipeline.pruning import StepInputs, decide_step, record_decisions, record_pruning
from pipeline.scoring import SORT_WINDOW_BATCHES, ScoreSummary, score_pool
from pipeline.sorted_sink import sort_to
from pipeline.store import RunLayout, atomic_path, step_name


@dataclass(frozen=True)
class ShardPaths:
    """Where one shard of a step writes its scores (with deltas) and its decisions."""

    scores: Path
    decisions: Path


@dataclass(frozen=True)
class ShardResult:
    paths: ShardPaths
    summary: ScoreSummary


def split_pool(samples: Path, pool: pa.Array, shards: int, batch_size: int) -> list[pa.Array]:
    """The pool's ids cut into at most `shards` near-equal pieces (none empty) that score
    exactly as the whole pool does in one process.

    A sample's loss can differ by float rounding with the batch it is scored in
    (`pipeline.scorer_check`), so a shard must be scored in the very batches of the
    single-process pass, or a loss at a threshold could decide differently. `score_pool`
    forms its batches from consecutive blocks of `scoring_block_rows` pool rows in the
    sample table's order; cutting only between blocks gives each shard the same batches.
    The cut depends only on the pool and the sample table, so a rerun or a resumed run
    cuts the same way."""
    ordered = (
        pl.scan_parquet(samples)
        .select("sample_id")
        .with_row_index("row")
        .join(pl.LazyFrame({"sample_id": pl.Series(pool)}), on="sample_id", how="semi")
        .sort("row")
        .collect()
        .get_column("sample_id")
    )
    shard = shard_of_rank(len(ordered), shards, scoring_block_rows(batch_size))
    pieces = pl.DataFrame({"sample_id": ordered, "shard": shard})
    return [
        piece.get_column("sample_id").to_arrow()
        for piece in pieces.partition_by("shard", maintain_order=True)
    ]


def scoring_block_rows(batch_size: int) -> int:
    """The rows `score_pool` sorts by length and cuts into batches together."""
    return batch_size * SORT_WINDOW_BATCHES


def shard_of_rank(rows: int, shards: int, block_rows: int) -> np.ndarray:
    """The shard of each of `rows` rows: contiguous, near-equal in rows, never splitting
    a block (each block goes where its first row would)."""
    block_start = np.arange(rows) // block_rows * block_rows
    return block_start * shards // max(rows, 1)


def parts_dir(layout: RunLayout, round_index: int, epoch: int) -> Path:
    """The step's shard parts: hidden beside its scores file, removed once merged."""
    return layout.scores(round_index, epoch).parent / f".{step_name(round_index, epoch)}.parts"


def shard_paths(layout: RunLayout, round_index: int, epoch: int, shard: int) -> ShardPaths:
    parts = parts_dir(layout, round_index, epoch)
    return ShardPaths(
        parts / f"scores-{shard:05d}.parquet", parts / f"decisions-{shard:05d}.parquet"
    )


def score_shard(
    layout: RunLayout,
    scorer: Path,
    ids: pa.Array,
    shard: int,
    round_index: int,
    epoch: int,
    policy: PolicyConfig,
    batch_size: int,
    threads: int,
) -> ShardResult:
    """Score one shard, join its losses to the previous pass of the round and, for a
    row-local policy, decide on each of its samples. Deciding per shard is exact because
    such a policy decides a sample from its own row (tests/pipeline/test_sharding.py holds
    each of them to it); a policy that needs the whole pool (counts, ranks) decides on the
    merged scores in `record_sharded_step`."""
    paths = shard_paths(layout, round_index, epoch, shard)
    paths.scores.parent.mkdir(parents=True, exist_ok=True)
    raw = paths.scores.with_suffix(".raw.parquet")
    summary = score_pool(scorer, layout.samples, ids, raw, batch_size, threads)
    previous = None
    if epoch > 1:
        previous = pl.scan_parquet(layout.scores(round_index, epoch - 1))
    scores = with_loss_deltas(pl.scan_parquet(raw), previous, round_index, epoch)
    with atomic_path(paths.scores) as tmp:
        scores.sink_parquet(tmp)
    raw.unlink()
    if is_row_local(policy.name):
        scored = pl.scan_parquet(paths.scores)
        decisions = decide_step(layout, scored, policy, round_index, epoch)
        with atomic_path(paths.decisions) as tmp:
            decisions.sink_parquet(tmp)
    return ShardResult(paths, summary)


def merge_scores(parts: list[Path], out: Path) -> None:
    """The shards' scores as one file, sorted by sample_id as a single pass writes it."""
    merged = pl.scan_parquet(parts)
    rows = sum(row_count(part) for part in parts)
    with atomic_path(out) as tmp:
        sort_to(merged, tmp, rows)


def merge_decisions(parts: list[Path]) -> pl.LazyFrame:
    """The shards' decisions as one frame, in shard order: the decision pass sorts them
    (in bounded memory) when they do not line up with the pool."""
    return pl.scan_parquet(parts)


def merged_summary(summaries: list[ScoreSummary]) -> ScoreSummary:
    """The shards' counts added up; seconds is the slowest shard's (they run at once)."""
    return ScoreSummary(
        sum(s.samples for s in summaries),
        sum(s.tokens_scored for s in summaries),
        max((s.seconds for s in summaries), default=0.0),
    )


def record_sharded_step(
    layout: RunLayout,
    parent: dict[str, Any],
    results: list[ShardResult],
    step: StepInputs,
    policy: PolicyConfig,
) -> dict[str, Any]:
    """Merge the shards of a step into its scores and decisions, write its pool and
    manifest as a single-process step would, then drop the parts. A policy that is not
    row-local decides here, on the merged scores, as the single-process step does. A
    retry after a failure merges the same parts again: they are removed last."""
    scores_path = layout.scores(step.round_index, step.epoch)
    merge_scores([r.paths.scores for r in results], scores_path)
    if is_row_local(policy.name):
        decided = merge_decisions([r.paths.decisions for r in results])
        record = record_decisions(layout, parent, scores_path, decided, step, policy)
    else:
        record = record_pruning(layout, parent, scores_path, step, policy)
    shutil.rmtree(parts_dir(layout, step.round_index, step.epoch), ignore_errors=True)
    return record
