"""The review list of the noise guard's quarantine: every sample a round's steps set aside
as `suspect-label` up to a manifest, with its loss at that step, its running diagnostics
and the dataset's own columns, so that a person can check its label. A quarantined sample
leaves the pool like a dropped one; this list is how it is never silently deleted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow.parquet as pq

from pipeline.catalog import Catalog, Entry
from pipeline.errors import StoreError
from pipeline.label_noise import SUSPECT_LABEL
from pipeline.shards import dataset_columns
from pipeline.store import RunLayout, atomic_path

ReviewFormat = Literal["parquet", "jsonl"]

# The running diagnostics of `pipeline.deltas` a reviewer reads beside the loss: how many
# passes the sample was scored in, its mean and its lowest loss over them.
DIAGNOSTICS = ("passes", "mean_loss", "min_loss")

# The review's own columns; the dataset's follow them.
REVIEW_SCHEMA = pl.Schema(
    {
        "sample_id": pl.String,
        "group": pl.String,
        "round": pl.Int64,
        "epoch": pl.Int64,
        "manifest": pl.String,
        "loss": pl.Float32,
        "loss_prev": pl.Float32,
        "delta": pl.Float32,
        "passes": pl.Int32,
        "mean_loss": pl.Float32,
        "min_loss": pl.Float32,
    }
)

# Added to a dataset column that has the name of a review column.
DATASET_SUFFIX = "_dataset"


@dataclass(frozen=True)
class Review:
    """The quarantined samples of `round_index` up to the manifest `manifest` (at
    `epoch`), one row each with the review columns only (`REVIEW_SCHEMA`)."""

    manifest: str
    run: str
    round_index: int
    epoch: int
    rows: pl.DataFrame

    @property
    def by_epoch(self) -> dict[int, int]:
        """Samples quarantined at each epoch of the round, in epoch order."""
        counts = self.rows.group_by("epoch").len().sort("epoch")
        return dict(counts.iter_rows())

    @property
    def by_group(self) -> dict[str, int]:
        counts = self.rows.group_by("group").len().sort("group")
        return dict(counts.iter_rows())


def quarantined_at_step(
    decisions: pl.LazyFrame,
    scores: pl.LazyFrame | None,
    round_index: int,
    epoch: int,
    manifest: str,
) -> pl.LazyFrame:
    """The samples one step quarantined (`keep` false, reason `suspect-label`) with the
    step, its loss columns and, when the step's scores have them, the running diagnostics
    (null for a run made before they were recorded)."""
    rows = decisions.filter(~pl.col("keep") & (pl.col("reason") == SUSPECT_LABEL)).select(
        "sample_id",
        "group",
        pl.lit(round_index).alias("round"),
        pl.lit(epoch).alias("epoch"),
        pl.lit(manifest).alias("manifest"),
        "loss",
        "loss_prev",
        "delta",
    )
    recorded = [] if scores is None else [n for n in DIAGNOSTICS if n in scores.collect_schema()]
    if scores is not None and recorded:
        diagnostics = scores.select("sample_id", *recorded)
        rows = rows.join(diagnostics, on="sample_id", how="left", maintain_order="left")
    missing = [pl.lit(None).alias(name) for name in DIAGNOSTICS if name not in recorded]
    return rows.with_columns(missing).select(list(REVIEW_SCHEMA)).cast(dict(REVIEW_SCHEMA))


def review_rows(steps: list[pl.LazyFrame]) -> pl.LazyFrame:
    """The quarantines of one round's steps, stacked, in the order they happened. A pool
    only shrinks within a round, so each sample is quarantined at most once in it."""
    if not steps:
        return pl.LazyFrame(schema=REVIEW_SCHEMA)
    return pl.concat(steps).sort("round", "epoch", "sample_id")


def with_sample_columns(
    review: pl.LazyFrame, samples: pl.LazyFrame, columns: list[str]
) -> pl.LazyFrame:
    """The review rows with the dataset's `columns` (those of the sample table a trainer
    sees) joined by sample_id, after the review's own; a dataset column named like one
    of them gets `DATASET_SUFFIX`."""
    extra = [name for name in columns if name not in ("sample_id", "group")]
    return review.join(
        samples.select("sample_id", *extra),
        on="sample_id",
        how="left",
        suffix=DATASET_SUFFIX,
        maintain_order="left",
    )


def round_steps(catalog: Catalog, entry: Entry) -> list[Entry]:
    """The pruning steps of `entry`'s round in its lineage, up to `entry` itself."""
    round_index = entry.record["round"]
    return [
        step
        for step in catalog.chain(entry)
        if step.record["kind"] == "prune" and step.record["round"] == round_index
    ]


def read_review(catalog: Catalog, entry: Entry) -> Review:
    """The review of `entry`: the samples quarantined in its round up to it, read from
    the decisions (and scores) files its lineage names."""
    steps = []
    for step in round_steps(catalog, entry):
        record = step.record
        scores = catalog.root / record["step"]["scores"]["path"]
        steps.append(
            quarantined_at_step(
                pl.scan_parquet(catalog.root / record["step"]["decisions"]["path"]),
                pl.scan_parquet(scores) if scores.is_file() else None,
                record["round"],
                record["epoch"],
                record["id"],
            )
        )
    record = entry.record
    rows = review_rows(steps).collect()
    return Review(record["id"], record["run"], record["round"], record["epoch"], rows)


def check_review_target(path: Path, shards: Path | None = None) -> None:
    """Refuse to overwrite a file, or to write into the shards directory of an export,
    whose every Parquet or JSON-lines file a trainer would read as training data."""
    if path.exists():
        raise StoreError(f"{path}: already exists; write the review to a new file")
    if shards is not None and path.resolve().is_relative_to(shards.resolve()):
        raise StoreError(
            f"{path}: inside the export directory {shards}, where a trainer would read it "
            "as a shard; write the review elsewhere"
        )
    # Checked before anything is written: the directory to create the file in must be
    # one, or be creatable under the nearest existing directory.
    existing = next(parent for parent in path.absolute().parents if parent.exists())
    if not existing.is_dir():
        raise StoreError(f"{path}: {existing} is a file, not a directory")


def write_review(
    root: Path, review: Review, path: Path, fmt: ReviewFormat, shards: Path | None = None
) -> None:
    """Write `review` with the dataset's columns of its run (streamed from the sample
    table) to `path` atomically; with no row, an empty file (in Parquet, with the schema).
    `shards`: the export directory it must stay out of."""
    check_review_target(path, shards)
    samples = RunLayout(root, review.run).samples
    frame = with_sample_columns(
        review.rows.lazy(), pl.scan_parquet(samples), dataset_columns(pq.read_schema(samples))
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"{path}: cannot create its directory: {err.strerror}") from err
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            frame.sink_parquet(tmp)
        else:
            frame.sink_ndjson(tmp)
