"""Write a lazy frame sorted by sample_id in bounded memory.

Scores files are sorted by id so that identical scores give identical bytes and the
pruning pass can line them up with the parent pool. Polars sorts in memory: about 1.8 GB
for 10M score rows, so 100M would need most of this machine. Above SORT_IN_MEMORY_ROWS
the rows are range-partitioned instead, by split points sampled from the ids, into
buckets of about that many rows; each bucket is sorted in memory and appended in bucket
order, which is the sorted order. The inputs of a join on sample_id are cut at the same
points and joined bucket by bucket, so the join's memory is bounded too. The result has
the rows of an in-memory sort in the same order (written by pyarrow's writer, so not the
same bytes), for any size of pool.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

# Below this many rows a plain in-memory sort is fastest; above, buckets of about this
# size keep the peak near what this many rows need: under 1 GB at any size, against
# 1.9 GB for an in-memory sort of 10M score rows, for about a quarter more time.
SORT_IN_MEMORY_ROWS = 2_000_000
# Ids sampled per bucket to place the split points.
SAMPLES_PER_BUCKET = 256

KEY = "sample_id"


def split_points(ids: pl.LazyFrame, rows: int, buckets: int) -> list[str]:
    """`buckets - 1` ids that cut the sorted ids into parts of about equal size, taken
    from an even sample of them (every k-th row, deterministic)."""
    step = max(1, rows // (buckets * SAMPLES_PER_BUCKET))
    sample = ids.select(KEY).gather_every(step).collect().get_column(KEY).sort()
    cuts = [sample[(i * sample.len()) // buckets] for i in range(1, buckets)]
    return sorted(set(cuts))


def bucket_of(points: list[str]) -> pl.Expr:
    """The bucket of each id: how many split points are at or below it."""
    if not points:
        return pl.lit(0, pl.UInt32)
    return pl.sum_horizontal([(pl.col(KEY) >= point).cast(pl.UInt32) for point in points])


def sink_sorted(
    inputs: dict[str, pl.LazyFrame],
    build: Callable[..., pl.LazyFrame],
    out: Path,
    rows: int,
) -> None:
    """Write `build(**inputs)` sorted by sample_id to `out`. `build` must treat each id on
    its own (a select, or a join on sample_id): above SORT_IN_MEMORY_ROWS it is applied to
    each bucket of the inputs, all cut at the same split points (so a join finds its
    matches in the same bucket), and that is what bounds a join's memory too. The split
    points come from the first input's ids; `rows` is the largest input's row count."""
    if rows <= SORT_IN_MEMORY_ROWS:
        build(**inputs).sort(KEY).sink_parquet(out)
        return
    buckets = -(-rows // SORT_IN_MEMORY_ROWS)
    points = split_points(next(iter(inputs.values())), rows, buckets)
    parts = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".parts"))
    try:
        for name, frame in inputs.items():
            frame.sink_parquet(
                pl.PartitionBy(parts / name, key={"bucket": bucket_of(points)}, include_key=False),
                mkdir=True,
            )
        schema = build(**inputs).collect_schema()
        arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        with pq.ParquetWriter(out, arrow_schema, compression="zstd") as writer:
            for bucket in range(len(points) + 1):
                pieces = {
                    name: _bucket_scan(parts / name / f"bucket={bucket}", frame.collect_schema())
                    for name, frame in inputs.items()
                }
                part = build(**pieces).sort(KEY).collect()
                if part.height:
                    writer.write_table(part.select(schema.names()).to_arrow())
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def sort_to(frame: pl.LazyFrame, out: Path, rows: int) -> None:
    """Write `frame` (of `rows` rows) sorted by sample_id to `out`, in bounded memory."""
    sink_sorted({"frame": frame}, lambda frame: frame, out, rows)


def _bucket_scan(directory: Path, schema: pl.Schema) -> pl.LazyFrame:
    """The rows of one bucket of one input; an empty frame when it has none."""
    files = sorted(directory.glob("*.parquet"))
    return pl.scan_parquet(files) if files else pl.LazyFrame(schema=schema)
