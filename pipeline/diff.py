"""Manifest diffs for audits: which samples are in one pool and not the other, and for
each, when and why it left (the step, policy, floor and its loss values at that moment)
and whether it came back after a round reset.

A sample in A but not in B is explained by B's lineage: the last step of B's chain that
dropped it. The same rule read the other way explains B's extra samples, so `diff(A, B)`
and `diff(B, A)` are mirror images. A sample that was dropped earlier in its own side's
lineage and is still in that pool came back at the reset of the next round.

A sample whose difference is explained by the noise guard's quarantine (reason
`suspect-label`) is set apart from both sides, in `quarantined`: it is to be reviewed, not
read as a sample the policy was done with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.catalog import Catalog, Entry
from pipeline.label_noise import SUSPECT_LABEL

EVENT_COLUMNS = [
    "sample_id",
    "round",
    "epoch",
    "manifest",
    "policy",
    "reason",
    "floor",
    "delta_threshold",
    "loss",
    "loss_prev",
    "delta",
]
EVENT_SCHEMA = pl.Schema(
    {
        "sample_id": pl.String,
        "round": pl.Int64,
        "epoch": pl.Int64,
        "manifest": pl.String,
        "policy": pl.String,
        "reason": pl.String,
        "floor": pl.Float64,
        "delta_threshold": pl.Float64,
        "loss": pl.Float32,
        "loss_prev": pl.Float32,
        "delta": pl.Float32,
    }
)


# Which side of a diff a quarantined sample is on: in A only, or in B only.
REMOVED, ADDED = "removed", "added"


@dataclass(frozen=True)
class Diff:
    """`removed`: in A, not in B; `added`: in B, not in A. Both have the sample's group,
    the step that took it out of the other side's lineage (`round`, `epoch`, `manifest`,
    `policy`, `reason`, `floor`, `delta_threshold`, `loss`, `loss_prev`, `delta`; null
    when that lineage never dropped it, e.g. a different dataset) and `returned_round`,
    the round whose reset brought it back into its own side (null if it never left).
    `quarantined`: the samples of either side whose step has reason `suspect-label`,
    with the same columns and `side` (`removed` or `added`) after `group`; they are in
    neither `removed` nor `added`, so every differing sample is listed exactly once."""

    a: Entry
    b: Entry
    removed: pl.DataFrame
    added: pl.DataFrame
    quarantined: pl.DataFrame


def drop_events(root: Path, chain: list[Entry]) -> pl.LazyFrame:
    """Every drop recorded along a lineage, one row per (sample, step)."""
    frames = []
    for entry in chain:
        record = entry.record
        if record["kind"] != "prune":
            continue
        params = record["policy"]["params"]
        frames.append(
            pl.scan_parquet(root / record["step"]["decisions"]["path"])
            .filter(~pl.col("keep"))
            .select(
                "sample_id",
                pl.lit(record["round"], pl.Int64).alias("round"),
                pl.lit(record["epoch"], pl.Int64).alias("epoch"),
                pl.lit(record["id"]).alias("manifest"),
                pl.lit(record["policy"]["name"]).alias("policy"),
                "reason",
                pl.lit(params.get("floor"), pl.Float64).alias("floor"),
                pl.lit(params.get("delta"), pl.Float64).alias("delta_threshold"),
                pl.col("loss").cast(pl.Float32),
                pl.col("loss_prev").cast(pl.Float32),
                pl.col("delta").cast(pl.Float32),
            )
        )
    if not frames:
        return pl.LazyFrame(schema=EVENT_SCHEMA)
    return pl.concat(frames, how="vertical")


def last_departures(events: pl.LazyFrame) -> pl.LazyFrame:
    """The latest drop of each sample: the one that explains its absence now."""
    return events.sort("round", "epoch").group_by("sample_id").last()


def explain(
    missing: pl.LazyFrame, other_side: pl.LazyFrame, own_side: pl.LazyFrame
) -> pl.LazyFrame:
    """Attach to each missing sample the departure from the other side's lineage and the
    round it returned in on its own side (a drop in its own lineage, then a reset)."""
    returned = own_side.select("sample_id", (pl.col("round") + 1).alias("returned_round"))
    return (
        missing.join(other_side, on="sample_id", how="left")
        .join(returned, on="sample_id", how="left")
        .sort("sample_id")
    )


def set_apart_quarantined(
    removed: pl.LazyFrame, added: pl.LazyFrame
) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame]:
    """`removed` and `added` without the samples a `suspect-label` step explains, and
    those samples in one frame with their `side`, sorted by sample_id."""
    suspect = (pl.col("reason") == SUSPECT_LABEL).fill_null(False)
    quarantined = pl.concat(
        [
            frame.filter(suspect).with_columns(side=pl.lit(side))
            for side, frame in ((REMOVED, removed), (ADDED, added))
        ]
    )
    first = ("sample_id", "group", "side")
    quarantined = quarantined.select(*first, pl.exclude(first)).sort("sample_id")
    return removed.filter(~suspect), added.filter(~suspect), quarantined


def pool_frame(root: Path, entry: Entry) -> pl.LazyFrame:
    return pl.scan_parquet(root / entry.record["pool"]["path"]).select("sample_id", "group")


def diff_manifests(catalog: Catalog, a: Entry, b: Entry) -> Diff:
    root = catalog.root
    pool_a, pool_b = pool_frame(root, a), pool_frame(root, b)
    departures_a = last_departures(drop_events(root, catalog.chain(a)))
    departures_b = last_departures(drop_events(root, catalog.chain(b)))
    removed = explain(pool_a.join(pool_b, on="sample_id", how="anti"), departures_b, departures_a)
    added = explain(pool_b.join(pool_a, on="sample_id", how="anti"), departures_a, departures_b)
    frames = pl.collect_all(set_apart_quarantined(removed, added))
    return Diff(a, b, *frames)


def counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    """Counts per value of `column`; a sample the lineage never dropped counts as
    "not dropped in lineage" (for example, a pool from another dataset)."""
    values = frame.get_column(column).cast(pl.String).fill_null("not dropped in lineage")
    tally = values.value_counts(sort=False).sort(column)
    return dict(zip(tally[column].to_list(), tally["count"].to_list(), strict=True))
