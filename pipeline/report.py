"""What a run report shows, gathered from the run's store into Polars frames: pool, drops,
compute, quality and the label-noise estimate per step from the manifests; loss and delta
distributions and the per-sample trajectories from the score files (read lazily).
Rendering is `pipeline.report_html`'s; this module only reads and computes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.config import RunConfig, load_config
from pipeline.errors import ConfigError, StoreError
from pipeline.pruning import run_manifests
from pipeline.runs import is_complete, read_run_record
from pipeline.store import RunLayout
from pipeline.trajectories import (
    TrajectoryParams,
    most_unsettled,
    trajectories,
    trajectory_counts,
)

# Held-out accuracy over all groups: the key models.evaluate reports it under.
OVERALL = "_overall"
# Quantiles drawn as box plots: whiskers at 5% and 95%, so a few outliers in millions of
# samples neither vanish nor stretch the axis.
QUANTILES = {"p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}


@dataclass(frozen=True)
class ReportData:
    """Everything a report draws, as small frames: one row per step (or per step and
    group, reason or metric), except `trajectories` (one row per round and sample)."""

    layout: RunLayout
    run: dict[str, Any]
    config: RunConfig | None
    complete: bool
    manifests: list[dict[str, Any]]
    steps: pl.DataFrame
    pool: pl.DataFrame
    drops: pl.DataFrame
    decisions: pl.DataFrame
    quality: pl.DataFrame
    quality_source: str | None
    loss_stats: pl.DataFrame
    delta_stats: pl.DataFrame
    trajectories: pl.DataFrame
    counts: pl.DataFrame
    unsettled: pl.DataFrame
    unsettled_history: pl.DataFrame
    noise: pl.DataFrame
    params: TrajectoryParams

    @property
    def groups(self) -> list[str]:
        """Groups of the dataset, largest first in the first pool (ties by name)."""
        if self.pool.is_empty():
            return []
        first = self.pool.filter(pl.col("step") == 0).sort(
            ["size", "group"], descending=[True, False]
        )
        return first["group"].to_list()

    @property
    def standard_tokens(self) -> int | None:
        """Target tokens Standard (every sample, every epoch, no scoring) would train for
        the epochs this run trained: each round's first epoch trains the whole dataset."""
        full = self.steps.filter((pl.col("kind") == "prune") & (pl.col("epoch") == 1))
        if full.is_empty():
            return None
        per_epoch = int(full["trained_step"][0])
        return per_epoch * self.steps.filter(pl.col("kind") == "prune").height


def step_label(round_index: int, epoch: int) -> str:
    return f"r{round_index} e{epoch}"


def steps_frame(manifests: list[dict[str, Any]]) -> pl.DataFrame:
    """One row per manifest, in lineage order: `step` is its position on a report's x
    axis, shared by every per-step frame."""
    schema = {
        "step": pl.Int64,
        "round": pl.Int64,
        "epoch": pl.Int64,
        "kind": pl.String,
        "pool": pl.Int64,
        "scored": pl.Int64,
        "dropped": pl.Int64,
        "trained": pl.Int64,
        "scored_tokens": pl.Int64,
        "trained_step": pl.Int64,
        "floor": pl.Float64,
        "delta_threshold": pl.Float64,
        "delta_mode": pl.String,
    }
    rows = [
        {
            "step": position,
            "round": record["round"],
            "epoch": record["epoch"],
            "kind": record["kind"],
            "pool": record["pool"]["size"],
            "scored": (record["step"] or {}).get("scored", 0),
            "dropped": (record["step"] or {}).get("dropped", 0),
            "trained": record["tokens"]["trained"],
            "scored_tokens": record["tokens"]["scored"],
            "trained_step": record["tokens"].get("trained_step", 0),
            "floor": record["policy"]["params"].get("floor"),
            "delta_threshold": record["policy"]["params"].get("delta"),
            "delta_mode": record["policy"]["params"].get("delta_mode"),
        }
        for position, record in enumerate(manifests)
    ]
    return pl.DataFrame(rows, schema=schema)


def _long_counts(
    manifests: list[dict[str, Any]], counts_of: Any, key: str, value: str
) -> pl.DataFrame:
    """A per-step dict of counts (`counts_of(record)`) as long rows: step, round, epoch,
    key, value."""
    rows = [
        {
            "step": position,
            "round": record["round"],
            "epoch": record["epoch"],
            key: name,
            value: count,
        }
        for position, record in enumerate(manifests)
        for name, count in (counts_of(record) or {}).items()
    ]
    schema = {
        "step": pl.Int64,
        "round": pl.Int64,
        "epoch": pl.Int64,
        key: pl.String,
        value: pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def pool_frame(manifests: list[dict[str, Any]]) -> pl.DataFrame:
    """Pool size per group per step; a group absent from a pool counts 0, so every
    group's line is drawn to the end."""
    counts = _long_counts(manifests, lambda r: r["pool"]["by_group"], "group", "size")
    if counts.is_empty():
        return counts
    grid = (
        counts.select("step", "round", "epoch")
        .unique()
        .join(counts.select("group").unique(), how="cross")
    )
    return (
        grid.join(counts, on=["step", "round", "epoch", "group"], how="left")
        .with_columns(pl.col("size").fill_null(0))
        .sort("step", "group")
    )


def decisions_frame(manifests: list[dict[str, Any]]) -> pl.DataFrame:
    """Every scored sample's decision reason per step, kept or not (manifest counts)."""
    return _long_counts(
        manifests, lambda r: (r["step"] or {}).get("by_reason"), "reason", "count"
    ).sort("step", "reason")


def drops_by_reason(decisions: pl.LazyFrame) -> pl.LazyFrame:
    """Samples dropped (`keep` false) per reason in one step's decisions."""
    return (
        decisions.filter(~pl.col("keep"))
        .group_by("reason")
        .agg(dropped=pl.len().cast(pl.Int64))
        .sort("reason")
    )


def quality_frame(manifests: list[dict[str, Any]]) -> tuple[pl.DataFrame, str | None]:
    """Held-out accuracy per group per step against cumulative tokens, or, for a run
    whose external trainer reports its own metrics, those metrics; and which it is
    (`accuracy`, `trainer` or None when the run has neither)."""
    source = None
    if any(r["metrics"].get("accuracy") for r in manifests):
        source = "accuracy"
    elif any(r["metrics"].get("trainer") for r in manifests):
        source = "trainer"
    rows = [
        {
            "step": position,
            "round": record["round"],
            "epoch": record["epoch"],
            "series": name,
            "value": float(value),
            "trained": record["tokens"]["trained"],
            "scored_tokens": record["tokens"]["scored"],
        }
        for position, record in enumerate(manifests)
        for name, value in ((record["metrics"].get(source) or {}) if source else {}).items()
        if value is not None
    ]
    schema = {
        "step": pl.Int64,
        "round": pl.Int64,
        "epoch": pl.Int64,
        "series": pl.String,
        "value": pl.Float64,
        "trained": pl.Int64,
        "scored_tokens": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema), source


# The keys of a record's `noise` estimate (`pipeline.pruning`) the report reads.
NOISE_KEYS = (
    "share",
    "round_start_share",
    "growth",
    "growth_threshold",
    "scored_suspects",
    "pool_suspects",
    "quarantined",
    "guard",
    "high_loss",
    "warmup",
    "warning",
)
NOISE_SCHEMA = pl.Schema(
    {
        "step": pl.Int64,
        "round": pl.Int64,
        "epoch": pl.Int64,
        "pool": pl.Int64,
        "share": pl.Float64,
        "round_start_share": pl.Float64,
        "growth": pl.Float64,
        "growth_threshold": pl.Float64,
        "scored_suspects": pl.Int64,
        "pool_suspects": pl.Int64,
        "quarantined": pl.Int64,
        "guard": pl.Boolean,
        "high_loss": pl.Float64,
        "warmup": pl.Int64,
        "warning": pl.String,
    }
)


def noise_frame(manifests: list[dict[str, Any]]) -> pl.DataFrame:
    """The label-noise estimate of every step whose record has one (`noise`): the
    likely-mislabeled share of the surviving pool (null within the warm-up), the share
    at the round's first judged step, their ratio, the samples quarantined and the
    warning. Resets and records written before the estimate existed have none."""
    rows = [
        {
            "step": position,
            "round": record["round"],
            "epoch": record["epoch"],
            "pool": record["pool"]["size"],
            **{name: record["noise"].get(name) for name in NOISE_KEYS},
        }
        for position, record in enumerate(manifests)
        if record.get("noise")
    ]
    return pl.DataFrame(rows, schema=NOISE_SCHEMA)


def distribution_stats(history: pl.LazyFrame, column: str) -> pl.LazyFrame:
    """Quantiles of `column` per (round, epoch, group) and over all groups (a null group,
    which no group name can collide with), nulls left out (a round's baseline pass has no
    delta). The box plots are drawn from these, never from the raw rows, so a report of
    millions of samples costs a few kilobytes of plot data."""
    values = pl.col(column).drop_nulls()
    aggregations = [
        values.len().cast(pl.Int64).alias("n"),
        *(values.quantile(q, "linear").alias(name) for name, q in QUANTILES.items()),
    ]
    per_group = history.group_by("round", "epoch", "group").agg(aggregations)
    overall = history.group_by("round", "epoch").agg(aggregations)
    overall = overall.with_columns(group=pl.lit(None, pl.String)).select(
        per_group.collect_schema().names()
    )
    return (
        pl.concat([per_group, overall])
        .filter(pl.col("n") > 0)
        .cast({"round": pl.Int64, "epoch": pl.Int64})
        .sort("round", "epoch", "group", nulls_last=True)
    )


HISTORY_SCHEMA = pl.Schema(
    {
        "sample_id": pl.String,
        "round": pl.Int32,
        "epoch": pl.Int32,
        "loss": pl.Float32,
        "loss_prev": pl.Float32,
        "delta": pl.Float32,
        "group": pl.String,
        "keep": pl.Boolean,
    }
)


def score_history(layout: RunLayout, manifests: list[dict[str, Any]]) -> pl.LazyFrame:
    """Every recorded score row of the run, stacked, with each sample's group (empty
    before the first scored step). Only the score files the manifests name count: a file
    from an interrupted step is not part of the run's history."""
    steps = [record for record in manifests if record["kind"] == "prune"]
    if not steps:
        return pl.LazyFrame(schema=HISTORY_SCHEMA)
    groups = pl.scan_parquet(layout.samples).select("sample_id", "group")
    # Whether the policy kept each sample: a sample dropped at a round's last epoch has a
    # full-length history, and only its decision tells it left the pool.
    kept = pl.concat(
        pl.scan_parquet(layout.resolve(record["step"]["decisions"]["path"])).select(
            "sample_id",
            "keep",
            round=pl.lit(record["round"], pl.Int32),
            epoch=pl.lit(record["epoch"], pl.Int32),
        )
        for record in steps
    )
    return (
        pl.scan_parquet(
            [layout.resolve(record["step"]["scores"]["path"]) for record in steps],
            # a run resumed across versions has scores files with and without diagnostics
            extra_columns="ignore",
        )
        .select("sample_id", "round", "epoch", "loss", "loss_prev", "delta")
        .cast({"round": pl.Int32, "epoch": pl.Int32})
        .join(kept, on=["sample_id", "round", "epoch"], how="left", validate="1:1")
        .join(groups, on="sample_id", how="left", validate="m:1")
        .select(list(HISTORY_SCHEMA))
        .cast(dict(HISTORY_SCHEMA))
    )


def _run_config(layout: RunLayout) -> RunConfig | None:
    """The run's resolved config, when it has a readable one: the header's summary falls
    back to the manifests' policy parameters otherwise."""
    if not layout.config.is_file():
        return None
    try:
        return load_config(layout.config)
    except ConfigError:
        return None


def open_run(root: Path, run_id: str) -> RunLayout:
    """The layout of an existing run, or the store's one-line error naming what is missing."""
    if not root.is_dir():
        raise StoreError(f"{root}: store not found")
    layout = RunLayout(root, run_id)
    if not layout.run_record.is_file():
        raise StoreError(f"{root}: no run {run_id!r}")
    return layout


def _drops_frame(layout: RunLayout, manifests: list[dict[str, Any]]) -> pl.DataFrame:
    frames = [
        drops_by_reason(pl.scan_parquet(layout.resolve(record["step"]["decisions"]["path"])))
        .with_columns(
            step=pl.lit(position, pl.Int64),
            round=pl.lit(record["round"], pl.Int64),
            epoch=pl.lit(record["epoch"], pl.Int64),
        )
        .select("step", "round", "epoch", "reason", "dropped")
        for position, record in enumerate(manifests)
        if record["kind"] == "prune"
    ]
    if not frames:
        schema = {"step": pl.Int64, "round": pl.Int64, "epoch": pl.Int64}
        return pl.DataFrame(schema={**schema, "reason": pl.String, "dropped": pl.Int64})
    return pl.concat(pl.collect_all(frames))


def _with_steps(stats: pl.DataFrame, steps: pl.DataFrame) -> pl.DataFrame:
    return stats.join(steps.select("step", "round", "epoch"), on=["round", "epoch"]).sort(
        "step", "group"
    )


def gather(layout: RunLayout, params: TrajectoryParams, top: int) -> ReportData:
    """Read a run's manifests and score files into the frames of its report. A run with
    no scored step yet gives empty score frames: the report shows what exists."""
    manifests = run_manifests(layout)
    steps = steps_frame(manifests)
    quality, quality_source = quality_frame(manifests)
    history = score_history(layout, manifests)
    groups = pl.scan_parquet(layout.samples).select("sample_id", "group")
    trajectory_frame = trajectories(history, params)
    unsettled = most_unsettled(trajectory_frame, top).join(
        groups, on="sample_id", how="left", validate="m:1"
    )
    unsettled_history = (
        history.join(unsettled.select("round", "sample_id"), on=["round", "sample_id"])
        .select("round", "sample_id", "epoch", "loss", "delta")
        .sort("round", "sample_id", "epoch")
    )
    trajectory_rows, counts, unsettled_rows, unsettled_history_rows, loss, delta = pl.collect_all(
        [
            trajectory_frame,
            trajectory_counts(trajectory_frame, groups),
            unsettled,
            unsettled_history,
            distribution_stats(history, "loss"),
            distribution_stats(history, "delta"),
        ],
        engine="streaming",
    )
    return ReportData(
        layout=layout,
        run=read_run_record(layout),
        config=_run_config(layout),
        complete=is_complete(layout),
        manifests=manifests,
        steps=steps,
        pool=pool_frame(manifests),
        drops=_drops_frame(layout, manifests),
        decisions=decisions_frame(manifests),
        quality=quality,
        quality_source=quality_source,
        loss_stats=_with_steps(loss, steps),
        delta_stats=_with_steps(delta, steps),
        trajectories=trajectory_rows,
        counts=counts,
        unsettled=unsettled_rows,
        unsettled_history=unsettled_history_rows,
        noise=noise_frame(manifests),
        params=params,
    )


def summary(data: ReportData) -> dict[str, Any]:
    """The report's headline numbers, for `--json` and scripts."""
    final = data.manifests[-1] if data.manifests else None
    return {
        "run": data.layout.run_id,
        "complete": data.complete,
        "steps": len(data.manifests),
        "final_manifest": final["id"] if final else None,
        "final_pool": (
            {"size": final["pool"]["size"], "by_group": final["pool"]["by_group"]}
            if final
            else None
        ),
        "tokens": (
            {"trained": final["tokens"]["trained"], "scored": final["tokens"]["scored"]}
            if final
            else None
        ),
        "standard_tokens": data.standard_tokens,
        "trajectories": {
            "band": data.params.band,
            "window": data.params.window,
            "counts": data.counts.to_dicts(),
        },
        "most_unsettled": data.unsettled.select(
            "round", "sample_id", "group", "wander", "n_epochs", "last_loss", "mean_loss"
        ).to_dicts(),
        "noise": {
            "steps": data.noise.select(
                "round",
                "epoch",
                "share",
                "round_start_share",
                "growth",
                "pool_suspects",
                "quarantined",
                "warning",
            ).to_dicts(),
            "warnings": data.noise["warning"].drop_nulls().to_list(),
        },
    }
