"""One pruning step at the I/O edge: loss deltas from the raw scores, a policy's decisions,
the surviving pool and its manifest, each written atomically. The logic itself lives in
`deltas`, `policies` and `manifest`; this module only reads, composes and writes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.config import PolicyConfig
from pipeline.deltas import with_loss_deltas
from pipeline.errors import ManifestIntegrityError
from pipeline.manifest import (
    SCHEMA_VERSION,
    encode_record,
    group_counts,
    load_manifest,
    pool_hash_of_frame,
    with_id,
)
from pipeline.policies import PolicyParams, get_policy, policy_parameters
from pipeline.runs import read_run_record
from pipeline.store import (
    RunLayout,
    atomic_path,
    sha256_file,
    write_immutable,
    write_parquet_atomic,
)

log = logging.getLogger("stm.pruning")


@dataclass(frozen=True)
class StepInputs:
    """What the training and scoring stages of one epoch hand to its pruning step."""

    round_index: int
    epoch: int
    raw_scores: Path
    scorer: Path | None
    scorer_sha256: str | None
    tokens_trained: int
    tokens_scored: int
    metrics: dict[str, Any]


def pool_ids(layout: RunLayout, record: dict[str, Any]) -> pa.Array:
    """The surviving ids of a manifest, as an Arrow array for pushed-down filters."""
    path = layout.resolve(record["pool"]["path"])
    return pl.read_parquet(path, columns=["sample_id"]).get_column("sample_id").to_arrow()


def _write_pool(layout: RunLayout, survivors: pl.DataFrame) -> dict[str, Any]:
    survivors = survivors.select("sample_id", "group").sort("sample_id")
    digest = pool_hash_of_frame(survivors)
    path = layout.pool(digest)
    if not path.exists():
        write_parquet_atomic(survivors.to_arrow(), path)
    return {
        "path": layout.relative(path),
        "sha256": digest,
        "size": survivors.height,
        "by_group": group_counts(survivors),
    }


def _policy_entry(config: PolicyConfig, round_index: int) -> dict[str, Any]:
    params = PolicyParams.for_round(config, round_index)
    return {"name": config.name, "params": policy_parameters(config.name, params)}


def _reproduce(layout: RunLayout) -> dict[str, Any]:
    """How to reproduce this record: the run's provenance and where its config is. Not
    part of the id: the same lineage computed elsewhere keeps its id."""
    run = read_run_record(layout) if layout.run_record.exists() else {}
    return {**run.get("provenance", {}), "config": layout.relative(layout.config)}


def _write_manifest(layout: RunLayout, record: dict[str, Any]) -> dict[str, Any]:
    record = with_id(record)
    write_immutable(layout.manifest(record["round"], record["epoch"]), encode_record(record))
    return record


def reset_pool(
    layout: RunLayout,
    round_index: int,
    parent: dict[str, Any] | None,
    policy: PolicyConfig,
    fingerprint: str,
) -> dict[str, Any]:
    """Epoch 0 of a round: the pool is the whole dataset again (Recursive STM)."""
    samples = pl.read_parquet(layout.samples, columns=["sample_id", "group"])
    tokens = parent["tokens"] if parent else {"trained": 0, "scored": 0}
    record = {
        "schema_version": SCHEMA_VERSION,
        "run": layout.run_id,
        "round": round_index,
        "epoch": 0,
        "kind": "reset",
        "parent": parent["id"] if parent else None,
        "policy": _policy_entry(policy, round_index),
        "scorer": None,
        "dataset": {"fingerprint": fingerprint, "samples": samples.height},
        "pool": _write_pool(layout, samples),
        "step": None,
        "tokens": {**tokens, "trained_step": 0, "scored_step": 0},
        "metrics": {},
        "reproduce": _reproduce(layout),
    }
    floor = record["policy"]["params"].get("floor")
    log.info(
        "round %d: pool reset to all %s samples%s",
        round_index,
        f"{samples.height:,}",
        "" if floor is None else f", mastery floor {floor:g}",
    )
    return _write_manifest(layout, record)


def write_scores(
    raw: Path, previous: pl.LazyFrame | None, round_index: int, epoch: int, out: Path
) -> None:
    """Write a scores file atomically: raw losses joined to the previous pass, sorted by
    sample_id so identical scores give identical bytes."""
    scores = with_loss_deltas(pl.scan_parquet(raw), previous, round_index, epoch)
    with atomic_path(out) as tmp:
        scores.sort("sample_id").sink_parquet(tmp)


def _scored_with_deltas(layout: RunLayout, step: StepInputs) -> Path:
    """Write the scores file of this step, joined to the previous pass of its round."""
    previous = None
    if step.epoch > 1:
        previous = pl.scan_parquet(layout.scores(step.round_index, step.epoch - 1))
    path = layout.scores(step.round_index, step.epoch)
    if path.exists() and not step.raw_scores.exists():
        return path  # a retried step whose scores were written before it failed
    write_scores(step.raw_scores, previous, step.round_index, step.epoch, path)
    step.raw_scores.unlink(missing_ok=True)
    return path


def decide(
    scores: pl.LazyFrame, groups: pl.LazyFrame, policy: PolicyConfig, round_index: int
) -> pl.LazyFrame:
    """Every scored sample with its group, its loss columns, `keep` and `reason`.

    The joins do not validate 1:1 (that doubles their cost at 10M rows): a repeated id
    comes out repeated, and `record_pruning` refuses it on the sorted result."""
    params = PolicyParams.for_round(policy, round_index)
    decisions = get_policy(policy.name)(scores, params)
    return (
        decisions.join(
            scores.select("sample_id", "loss", "loss_prev", "delta"), on="sample_id", how="left"
        )
        .join(groups, on="sample_id", how="left")
        .select("sample_id", "group", "keep", "reason", "loss", "loss_prev", "delta")
    )


def prune_step(
    layout: RunLayout,
    parent: dict[str, Any],
    step: StepInputs,
    policy: PolicyConfig,
) -> dict[str, Any]:
    """Score deltas, decide, write the surviving pool and the manifest of (round, epoch)."""
    return record_pruning(layout, parent, _scored_with_deltas(layout, step), step, policy)


def _check_scored_pool(
    scores_path: Path, parent: dict[str, Any], pool: pl.LazyFrame, decided: pl.DataFrame
) -> None:
    """The scores must cover exactly the parent's pool, once each: pruning only ever
    removes. `decided` is sorted by sample_id, so a repeated id is next to itself."""
    repeated = decided.lazy().filter(pl.col("sample_id") == pl.col("sample_id").shift(1))
    repeated = repeated.head(1).collect()
    if repeated.height:
        raise ManifestIntegrityError(
            f"{scores_path}: sample '{repeated['sample_id'][0]}' is scored more than once"
        )
    stranger = decided.lazy().join(pool, on="sample_id", how="anti").head(1).collect()
    if stranger.height:
        raise ManifestIntegrityError(
            f"{scores_path}: sample '{stranger['sample_id'][0]}' is not in the pool of "
            f"manifest {parent['id'][:12]}"
        )
    if decided.height != parent["pool"]["size"]:
        raise ManifestIntegrityError(
            f"{scores_path}: {decided.height} samples scored but the pool of manifest "
            f"{parent['id']} has {parent['pool']['size']}"
        )


def record_pruning(
    layout: RunLayout,
    parent: dict[str, Any],
    scores_path: Path,
    step: StepInputs,
    policy: PolicyConfig,
) -> dict[str, Any]:
    """Decide on a scores file already in the run, write decisions, pool and manifest."""
    groups = pl.scan_parquet(layout.samples).select("sample_id", "group")
    decisions = decide(pl.scan_parquet(scores_path), groups, policy, step.round_index)
    decided = decisions.collect(engine="streaming").sort("sample_id")
    return record_decisions(layout, parent, scores_path, decided, step, policy)


def record_decisions(
    layout: RunLayout,
    parent: dict[str, Any],
    scores_path: Path,
    decided: pl.DataFrame,
    step: StepInputs,
    policy: PolicyConfig,
) -> dict[str, Any]:
    """Write decisions already made (sorted by sample_id), the surviving pool and the
    manifest: the single-process step decides in `record_pruning`, a sharded step merges
    the shards' decisions (`pipeline.sharding`)."""
    parent_pool = pl.scan_parquet(layout.resolve(parent["pool"]["path"])).select("sample_id")
    _check_scored_pool(scores_path, parent, parent_pool, decided)
    decisions_path = layout.decisions(step.round_index, step.epoch)
    write_parquet_atomic(decided.to_arrow(), decisions_path)
    dropped = decided.filter(~pl.col("keep"))
    _log_step(step, decided, dropped)
    tokens = parent["tokens"]
    record = {
        "schema_version": SCHEMA_VERSION,
        "run": layout.run_id,
        "round": step.round_index,
        "epoch": step.epoch,
        "kind": "prune",
        "parent": parent["id"],
        "policy": _policy_entry(policy, step.round_index),
        "scorer": (
            {"path": layout.relative(step.scorer), "sha256": step.scorer_sha256}
            if step.scorer
            else None
        ),
        "dataset": parent["dataset"],
        "pool": _write_pool(layout, decided.filter(pl.col("keep"))),
        "step": {
            "scored": decided.height,
            "dropped": dropped.height,
            "by_reason": group_counts(decided, "reason"),
            "dropped_by_group": group_counts(dropped),
            "scores": {"path": layout.relative(scores_path), "sha256": sha256_file(scores_path)},
            "decisions": {
                "path": layout.relative(decisions_path),
                "sha256": sha256_file(decisions_path),
            },
        },
        "tokens": {
            "trained": tokens["trained"] + step.tokens_trained,
            "scored": tokens["scored"] + step.tokens_scored,
            "trained_step": step.tokens_trained,
            "scored_step": step.tokens_scored,
        },
        "metrics": step.metrics,
        "reproduce": _reproduce(layout),
    }
    return _write_manifest(layout, record)


def _log_step(step: StepInputs, decided: pl.DataFrame, dropped: pl.DataFrame) -> None:
    """One line per pruning step: how many left and why, and why the others stayed."""
    kept = decided.filter(pl.col("keep"))

    def reasons(frame: pl.DataFrame) -> str:
        counts = group_counts(frame, "reason")
        return ", ".join(f"{reason} {count:,}" for reason, count in counts.items()) or "none"

    log.info(
        "round %d epoch %d: dropped %s of %s (%s); kept %s (%s)",
        step.round_index,
        step.epoch,
        f"{dropped.height:,}",
        f"{decided.height:,}",
        reasons(dropped),
        f"{kept.height:,}",
        reasons(kept),
    )


def run_manifests(layout: RunLayout) -> list[dict[str, Any]]:
    """The manifests of a run in (round, epoch) order, each checked against its id."""
    records = [load_manifest(p) for p in layout.manifest_dir.glob("*.json")]
    return sorted(records, key=lambda record: (record["round"], record["epoch"]))
