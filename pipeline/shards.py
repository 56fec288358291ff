"""Pruned shards for any trainer: a manifest's pool with the dataset's original columns,
streamed from the run's sample table into Parquet or JSON-lines shards, beside a copy of
the manifest record (`_manifest.json`) and checksums (`_SHA256SUMS`, `sha256sum -c`
format), published with one atomic rename. The underscore keeps them out of readers that
take the whole directory (pyarrow, Spark); `datasets` takes `data_files="OUT/*.parquet"`."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ManifestIntegrityError, StoreError
from pipeline.manifest import encode_record, pool_hash_of_frame, training_weights
from pipeline.store import RunLayout, iter_samples_subset, sha256_file

# Columns the built-in model adds to the sample table; they are not the user's data.
ENCODED_COLUMNS = ("tokens", "loss_mask", "n_tokens")
SCAN_BATCH_ROWS = 65_536

ShardFormat = Literal["parquet", "jsonl"]

log = logging.getLogger("stm.export")


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    rows: int
    shards: list[str]


def dataset_columns(schema: pa.Schema) -> list[str]:
    return [name for name in schema.names if name not in ENCODED_COLUMNS]


def rows_per_shard_for(pool_size: int, shards: int | None, rows_per_shard: int | None) -> int:
    """Shard size from either a shard count or a row count (default: one shard)."""
    if rows_per_shard is not None:
        return max(1, rows_per_shard)
    return max(1, math.ceil(pool_size / (shards or 1)))


def _rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Regroup a stream of record batches into tables of exactly `rows` rows (the last
    may be shorter), holding at most one shard in memory."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            batch, count = batch.slice(take), count + take
            if count == rows:
                yield pa.Table.from_batches(pending)
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending)


def _with_weights(
    batches: Iterator[pa.RecordBatch], weights: pl.DataFrame
) -> Iterator[pa.RecordBatch]:
    """Each batch with its samples' `weight`, in the batch's row order: looked up by
    binary search in the weights (sorted by id), so each batch costs its own size, not the
    pool's."""
    ids, values = weights.get_column("sample_id"), weights.get_column("weight")
    for batch in batches:
        batch_ids = pl.Series(batch.column("sample_id"))
        at = ids.search_sorted(batch_ids, side="left")
        found = ids.gather(at.clip(0, max(ids.len() - 1, 0)))
        if not found.equals(batch_ids, check_names=False):
            raise ManifestIntegrityError("a sample of the pool has no training weight")
        yield batch.append_column("weight", values.gather(at).to_arrow())


def _write_shard(table: pa.Table, path: Path, fmt: ShardFormat) -> None:
    if fmt == "parquet":
        pq.write_table(table, path, compression="zstd")
    else:
        pl.from_arrow(table).write_ndjson(path)


def export_pool(
    layout: RunLayout,
    record: dict[str, Any],
    out: Path,
    fmt: ShardFormat,
    shards: int | None = None,
    rows_per_shard: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ExportSummary:
    """Write the pool of `record` as shards under `out`, which must not exist yet;
    `on_progress` is told the rows of each shard written. A soft policy's manifest
    (`pool.weights`) exports what the next epoch trains on: the samples weighted above 0,
    with their `weight` column for the trainer's loss."""
    if out.exists():
        raise StoreError(f"{out}: already exists; export into a new directory")
    columns = dataset_columns(pq.read_schema(layout.samples))
    pool_file = layout.resolve(record["pool"]["path"])
    ids = pl.read_parquet(pool_file, columns=["sample_id"])
    if pool_hash_of_frame(ids) != record["pool"]["sha256"]:
        raise ManifestIntegrityError(
            f"{pool_file}: ids do not match the pool hash of manifest {record['id'][:12]}"
        )
    weights = training_weights(layout.root, record)
    if weights is not None:
        ids = weights.select("sample_id")
    size = rows_per_shard_for(ids.height, shards, rows_per_shard)
    scanner = iter_samples_subset(
        layout.samples, ids["sample_id"].to_arrow(), columns, SCAN_BATCH_ROWS
    )
    batches = scanner.to_batches()
    if weights is not None:
        batches = _with_weights(batches, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        names, rows = [], 0
        for index, table in enumerate(_rebatch(batches, size)):
            name = f"part-{index:05d}.{fmt}"
            _write_shard(table, staging / name, fmt)
            names.append(name)
            rows += table.num_rows
            log.debug("%s: wrote %s (%s rows)", out, name, f"{table.num_rows:,}")
            if on_progress is not None:
                on_progress(table.num_rows)
        if rows != ids.height:
            raise StoreError(f"{layout.samples}: {rows} of the {ids.height} pool samples found")
        (staging / "_manifest.json").write_bytes(encode_record(record))
        listed = [*names, "_manifest.json"]
        sums = "".join(f"{sha256_file(staging / n)}  {n}\n" for n in listed)
        (staging / "_SHA256SUMS").write_text(sums)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; shards are to share
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportSummary(out, rows, names)


def read_checksums(out: Path) -> dict[str, str]:
    lines = (out / "_SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


def summary_json(summary: ExportSummary) -> str:
    return json.dumps(
        {"out": str(summary.out), "rows": summary.rows, "shards": summary.shards}, indent=2
    )
