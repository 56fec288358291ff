"""One bounded-memory pass over a step's decisions: it checks that they cover the parent
pool exactly, takes each sample's group from it, and writes the decisions file and the
surviving pool, hashes the pool and counts the decisions, a slice at a time. Memory stays
at a few slices however large the pool; at 10M rows, collecting the decisions, joining
them to the sample table for the groups and sorting them took 3 GB and most of the step.

The pass lines the decisions up row by row with the parent pool, which is stored sorted by
sample_id. Decisions made in the order of the scores (sorted by id) line up unless a
sample is missing, repeated or foreign; `Misaligned` tells the caller to sort them once
(a policy may reorder rows) and then to find out which sample is wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pipeline.label_noise import SUSPECT, NoiseEstimate, noise_counts
from pipeline.manifest import PoolHasher, WeightsHasher

# Rows per slice: large enough that the per-slice overhead is small, small enough that a
# few slices of ids fit in tens of megabytes.
PASS_ROWS = 1 << 20

# The decisions file's columns, in order; a soft policy's decisions end with `weight`.
# `likely_mislabeled` (SUSPECT) is the label-noise criterion (`pipeline.label_noise`).
DECISION_COLUMNS = (
    "sample_id",
    "group",
    "keep",
    "reason",
    "loss",
    "loss_prev",
    "delta",
    SUSPECT,
)
WEIGHT = "weight"


class Misaligned(Exception):
    """The decisions do not match the parent pool row by row."""


@dataclass(frozen=True)
class PassResult:
    """What the pass saw: counts for the manifest and the pool's hash and size."""

    scored: int
    pool_sha256: str
    pool_size: int
    kept: dict[tuple[str, str], int]  # (reason, group) -> count
    dropped: dict[tuple[str, str], int]
    weights_sha256: str | None = None  # a soft policy's weights (`WeightsHasher`)
    weighted: int = 0  # pool samples with a weight above 0: the next epoch's training set
    noise: NoiseEstimate = NoiseEstimate(0, 0, 0, 0, 0, 0)


def row_count(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def slices(path: Path, columns: list[str], rows: int | None = None) -> Iterator[pl.DataFrame]:
    """The file's rows in frames of exactly `rows` rows (PASS_ROWS by default; the last
    one smaller), in file order, so two files with the same row count line up slice by
    slice."""
    scan = pl.scan_parquet(path).select(columns)
    rows = rows or PASS_ROWS
    for start in range(0, row_count(path), rows):
        yield scan.slice(start, rows).collect()


def _arrow_schema(schema: pl.Schema) -> object:
    return pl.DataFrame(schema=schema).to_arrow().schema


def decision_pass(
    decisions: Path,
    parent_pool: Path,
    decisions_out: Path,
    pool_out: Path,
    weights_out: Path | None = None,
) -> PassResult:
    """Write the decisions with their groups to `decisions_out` and the survivors to
    `pool_out` (and, for decisions with a `weight` column, the survivors' weights to
    `weights_out`); raises Misaligned at the first slice that does not match the parent."""
    scored = row_count(decisions)
    if scored != row_count(parent_pool):
        raise Misaligned
    parent_schema = pl.scan_parquet(parent_pool).select("sample_id", "group").collect_schema()
    decided_schema = pl.scan_parquet(decisions).collect_schema()
    names = [*DECISION_COLUMNS, *([WEIGHT] if WEIGHT in decided_schema else [])]
    if WEIGHT in names and weights_out is None:
        raise ValueError("decisions with weights need a weights_out file")
    out_schema = pl.Schema({name: (parent_schema | decided_schema)[name] for name in names})
    hasher, weights_hasher = PoolHasher(), WeightsHasher()
    kept: Counter[tuple[str, str]] = Counter()
    dropped: Counter[tuple[str, str]] = Counter()
    weighted = 0
    noise = NoiseEstimate(0, 0, 0, 0, 0, 0)
    columns = [name for name in names if name != "group"]
    weights_schema = pl.Schema({"sample_id": pl.String, WEIGHT: pl.Float64})
    with ExitStack() as files:
        out = files.enter_context(
            pq.ParquetWriter(decisions_out, _arrow_schema(out_schema), compression="zstd")
        )
        pool = files.enter_context(
            pq.ParquetWriter(pool_out, _arrow_schema(parent_schema), compression="zstd")
        )
        weights = None
        if WEIGHT in names:
            weights = files.enter_context(
                pq.ParquetWriter(weights_out, _arrow_schema(weights_schema), compression="zstd")
            )
        for frame, parent in zip(
            slices(decisions, columns), slices(parent_pool, ["sample_id", "group"]), strict=True
        ):
            ids, parent_ids = frame.get_column("sample_id"), parent.get_column("sample_id")
            if not ids.eq_missing(parent_ids).all():  # a null id must not pass as aligned
                raise Misaligned
            frame = frame.with_columns(parent.get_column("group")).select(names)
            out.write_table(frame.to_arrow())
            survivors = frame.filter(pl.col("keep"))
            if survivors.height:
                pool.write_table(survivors.select("sample_id", "group").to_arrow())
                hasher.update(survivors.get_column("sample_id"))
            if weights is not None and survivors.height:
                kept_weights = survivors.select("sample_id", pl.col(WEIGHT).cast(pl.Float64))
                weights.write_table(kept_weights.to_arrow())
                weights_hasher.update(kept_weights.get_column(WEIGHT))
                weighted += kept_weights.filter(pl.col(WEIGHT) > 0).height
            for keep, reason, group, count in (
                frame.group_by("keep", "reason", "group").len().iter_rows()
            ):
                (kept if keep else dropped)[(reason, group)] += count
            noise += NoiseEstimate.from_counts(frame.select(noise_counts()).row(0, named=True))
    return PassResult(
        scored=scored,
        pool_sha256=hasher.hexdigest(),
        pool_size=sum(kept.values()),
        kept=dict(kept),
        dropped=dict(dropped),
        weights_sha256=weights_hasher.hexdigest() if WEIGHT in names else None,
        weighted=weighted,
        noise=noise,
    )
