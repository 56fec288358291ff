"""One pruning step at the I/O edge: loss deltas from the raw scores, a policy's decisions,
the surviving pool and its manifest, each written atomically. The logic itself lives in
`deltas`, `policies` and `manifest`; this module only reads, composes and writes."""

from __future__ import annotations

import logging
import os
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.config import PolicyConfig, load_config
from pipeline.decision_pass import (
    DECISION_COLUMNS,
    WEIGHT,
    Misaligned,
    PassResult,
    decision_pass,
    row_count,
    slices,
)
from pipeline.deltas import with_loss_deltas
from pipeline.errors import ConfigError, ManifestIntegrityError
from pipeline.label_noise import (
    NoiseParams,
    noise_record,
    previous_noise,
    suspect_column,
    with_noise_guard,
)
from pipeline.manifest import (
    SCHEMA_VERSION,
    PoolHasher,
    encode_record,
    group_counts,
    load_manifest,
    training_weights,
    with_id,
)
from pipeline.policies import (
    RANK_SCORE,
    STREAK,
    PolicyParams,
    get_policy,
    policy_parameters,
    repetition_target,
    stm_streak,
)
from pipeline.runs import read_run_record
from pipeline.sorted_sink import sink_sorted, sort_to
from pipeline.store import (
    RunLayout,
    atomic_path,
    sha256_file,
    temporary_sibling,
    write_immutable,
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


def training_set(layout: RunLayout, record: dict[str, Any]) -> tuple[pa.Array, pl.DataFrame | None]:
    """What the epoch after `record` trains on: the ids, and for a soft policy's manifest
    their weights (`training_weights`). Without weights, the whole pool at weight 1."""
    weights = training_weights(layout.root, record)
    if weights is None:
        return pool_ids(layout, record), None
    return weights.get_column("sample_id").to_arrow(), weights


def _store_pool(layout: RunLayout, written: Path, digest: str) -> Path:
    """Move a pool written to a temporary file onto its content address; a pool already
    stored there (same ids) is kept and the new file dropped."""
    path = layout.pool(digest)
    if path.exists():
        written.unlink()
    else:
        os.replace(written, path)
    return path


def _pool_entry(
    layout: RunLayout, path: Path, digest: str, size: int, by_group: dict[str, int]
) -> dict[str, Any]:
    return {"path": layout.relative(path), "sha256": digest, "size": size, "by_group": by_group}


def _write_sorted_pool(layout: RunLayout, source: Path) -> dict[str, Any]:
    """Sort the (sample_id, group) of a file to a pool file in bounded memory and hash it
    a slice at a time."""
    tmp = temporary_sibling(layout.pool("pending"))
    try:
        ids = pl.scan_parquet(source).select("sample_id", "group")
        sort_to(ids, tmp, row_count(source))
        hasher = PoolHasher()
        for frame in slices(tmp, ["sample_id"]):
            hasher.update(frame.get_column("sample_id"))
        by_group = group_counts(pl.scan_parquet(tmp))
        size = sum(by_group.values())
        path = _store_pool(layout, tmp, hasher.hexdigest())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return _pool_entry(layout, path, hasher.hexdigest(), size, by_group)


def _policy_entry(config: PolicyConfig, round_index: int) -> dict[str, Any]:
    return {"name": config.name, "params": policy_parameters(config.name, config, round_index)}


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
    pool = _write_sorted_pool(layout, layout.samples)
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
        "dataset": {"fingerprint": fingerprint, "samples": pool["size"]},
        "pool": pool,
        "step": None,
        "tokens": {**tokens, "trained_step": 0, "scored_step": 0},
        "metrics": {},
        "reproduce": _reproduce(layout),
    }
    floor = record["policy"]["params"].get("floor")
    log.info(
        "round %d: pool reset to all %s samples%s",
        round_index,
        f"{pool['size']:,}",
        "" if floor is None else f", mastery floor {floor:g}",
    )
    return _write_manifest(layout, record)


def write_scores(
    raw: Path, previous: pl.LazyFrame | None, round_index: int, epoch: int, out: Path
) -> None:
    """Write a scores file atomically: raw losses joined to the previous pass, sorted by
    sample_id so identical scores give identical bytes."""
    inputs = {"current": pl.scan_parquet(raw)}
    if previous is not None:
        inputs["previous"] = previous

    def build(current: pl.LazyFrame, previous: pl.LazyFrame | None = None) -> pl.LazyFrame:
        return with_loss_deltas(current, previous, round_index, epoch)

    with atomic_path(out) as tmp:
        # Buckets sized by the larger input: the previous pass may hold many more rows.
        rows = max(frame.select(pl.len()).collect().item() for frame in inputs.values())
        sink_sorted(inputs, build, tmp, rows)


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
    scores: pl.LazyFrame,
    policy: PolicyConfig,
    round_index: int,
    params: PolicyParams | None = None,
) -> pl.LazyFrame:
    """Every scored sample with its loss columns, `keep` and `reason` (after the noise
    guard, when on) and the noise criterion `likely_mislabeled`, in the order of the
    policy's output (the scores' order for every order-keeping policy). The groups come
    from the parent pool in `record_decisions`: no join over all samples. `params`: the
    step's parameters from `policy_inputs`, else the round's (enough for a policy that
    needs nothing beyond the scores)."""
    params = params or PolicyParams.for_round(policy, round_index)
    decided = get_policy(policy.name)(scores, params)
    noise = NoiseParams.from_policy(policy)
    decided = with_noise_guard(decided, noise).with_columns(suspect_column(noise))
    columns = [name for name in DECISION_COLUMNS if name != "group"]
    if WEIGHT in decided.collect_schema():  # a soft policy's
        columns.append(WEIGHT)
    return decided.select(columns)


def decide_step(
    layout: RunLayout, scores: pl.LazyFrame, policy: PolicyConfig, round_index: int, epoch: int
) -> pl.LazyFrame:
    """`decide` with what the policy needs from the run resolved first (`policy_inputs`)."""
    scores, params = policy_inputs(layout, scores, policy, round_index, epoch)
    return decide(scores, policy, round_index, params)


def policy_inputs(
    layout: RunLayout, scores: pl.LazyFrame, policy: PolicyConfig, round_index: int, epoch: int
) -> tuple[pl.LazyFrame, PolicyParams]:
    """The scores and parameters a policy decides a step on, with what it needs from the
    store: STM's streak over the earlier passes of the round (patience), the sample
    table's rank column, or the pool size to keep (random, selective-repetition). The
    policy itself stays a pure function of them."""
    params = PolicyParams.for_round(policy, round_index)
    if policy.name == "stm" and policy.patience > 1:
        scores = _with_streak(layout, scores, params, round_index, epoch)
    elif policy.name == "random":
        target = _reference_pool_size(layout, policy, round_index, epoch)
        params = replace(params, pool_target=target)
    elif policy.name == "selective-repetition":
        if policy.rank_column is not None:
            scores = _with_rank_score(layout, scores, policy.rank_column)
        dataset_size = _round_reset(layout, round_index)["pool"]["size"]
        target = repetition_target(policy.schedule, epoch, dataset_size)
        params = replace(params, pool_target=target)
    elif policy.name == "infobatch":
        # The decision after epoch e weights epoch e + 1: the last `anneal_epochs` of the
        # run's epochs train on the whole pool.
        epochs = load_config(layout.config).epochs
        params = replace(params, last_soft_epoch=epochs - policy.anneal_epochs - 1)
    return scores, params


def _with_streak(
    layout: RunLayout, scores: pl.LazyFrame, params: PolicyParams, round_index: int, epoch: int
) -> pl.LazyFrame:
    """The scores with `streak`: how many of the previous `patience - 1` passes of the
    round in a row met STM's condition (their scores files, read with this round's
    floor); 0 without an earlier pass."""
    first = max(1, epoch - params.patience + 1)
    history = [pl.scan_parquet(layout.scores(round_index, e)) for e in range(first, epoch)]
    if not history:
        return scores.with_columns(pl.lit(0, dtype=pl.Int32).alias(STREAK))
    streak = stm_streak(history, params)
    return scores.join(streak, on="sample_id", how="left", maintain_order="left").with_columns(
        pl.col(STREAK).fill_null(0)
    )


def _with_rank_score(layout: RunLayout, scores: pl.LazyFrame, column: str) -> pl.LazyFrame:
    samples = pl.scan_parquet(layout.samples)
    if column not in samples.collect_schema():
        raise ConfigError(
            f"config key policy.rank_column: {layout.samples} has no column {column!r}",
            key="policy.rank_column",
        )
    ranks = samples.select("sample_id", pl.col(column).alias(RANK_SCORE))
    return scores.join(ranks, on="sample_id", how="left", maintain_order="left")


def _round_reset(layout: RunLayout, round_index: int) -> dict[str, Any]:
    return load_manifest(layout.manifest(round_index, 0))


def _reference_pool_size(
    layout: RunLayout, policy: PolicyConfig, round_index: int, epoch: int
) -> int:
    """The pool size of the reference run at (round, epoch), which must have curated the
    same dataset: its sizes are only comparable on the same samples."""
    if policy.reference_run is None:
        raise ConfigError(
            'config key policy.reference_run: must be set with policy.name = "random"',
            key="policy.reference_run",
        )
    path = RunLayout(layout.root, policy.reference_run).manifest(round_index, epoch)
    if not path.exists():
        raise ConfigError(
            f"config key policy.reference_run: run {policy.reference_run!r} has no manifest "
            f"for round {round_index} epoch {epoch} ({path} not found)",
            key="policy.reference_run",
        )
    record = load_manifest(path)
    ours = _round_reset(layout, round_index)["dataset"]["fingerprint"]
    if record["dataset"]["fingerprint"] != ours:
        raise ConfigError(
            f"config key policy.reference_run: run {policy.reference_run!r} curated another "
            f"dataset (fingerprint {record['dataset']['fingerprint'][:12]}, this run's "
            f"{ours[:12]})",
            key="policy.reference_run",
        )
    return record["pool"]["size"]


def prune_step(
    layout: RunLayout,
    parent: dict[str, Any],
    step: StepInputs,
    policy: PolicyConfig,
) -> dict[str, Any]:
    """Score deltas, decide, write the surviving pool and the manifest of (round, epoch)."""
    return record_pruning(layout, parent, _scored_with_deltas(layout, step), step, policy)


def record_pruning(
    layout: RunLayout,
    parent: dict[str, Any],
    scores_path: Path,
    step: StepInputs,
    policy: PolicyConfig,
) -> dict[str, Any]:
    """Decide on a scores file already in the run, write decisions, pool and manifest."""
    scores = pl.scan_parquet(scores_path)
    decisions = decide_step(layout, scores, policy, step.round_index, step.epoch)
    return record_decisions(layout, parent, scores_path, decisions, step, policy)


def record_decisions(
    layout: RunLayout,
    parent: dict[str, Any],
    scores_path: Path,
    decisions: pl.LazyFrame,
    step: StepInputs,
    policy: PolicyConfig,
) -> dict[str, Any]:
    """Write decisions (with their groups, sorted by sample_id), the surviving pool and the
    manifest in one streaming pass: the single-process step decides in `record_pruning`,
    a sharded step merges the shards' decisions (`pipeline.sharding`). Nothing is written
    under its final name before every check passed."""
    decisions_path = layout.decisions(step.round_index, step.epoch)
    parent_pool = layout.resolve(parent["pool"]["path"])
    weights_path = layout.weights(step.round_index, step.epoch)
    staged = temporary_sibling(decisions_path)
    pool_tmp = None
    try:
        pool_tmp = temporary_sibling(layout.pool("pending"))
        weighted = WEIGHT in decisions.collect_schema()
        decisions.sink_parquet(staged)
        with (
            atomic_path(decisions_path) as tmp,
            atomic_path(weights_path) if weighted else nullcontext() as weights_tmp,
        ):
            seen = _checked_pass(
                staged, parent, parent_pool, (tmp, pool_tmp, weights_tmp), scores_path
            )
        pool_path = _store_pool(layout, pool_tmp, seen.pool_sha256)
    except BaseException:
        if pool_tmp is not None:
            pool_tmp.unlink(missing_ok=True)
        raise
    finally:
        staged.unlink(missing_ok=True)
    by_reason = _tally(seen.kept, seen.dropped)[0]
    pool = _pool_entry(layout, pool_path, seen.pool_sha256, seen.pool_size, _tally(seen.kept)[1])
    if seen.weights_sha256 is not None:
        pool["weights"] = {
            "path": layout.relative(weights_path),
            "sha256": seen.weights_sha256,
            "trained": seen.weighted,
        }
    _log_step(step, seen)
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
        "pool": pool,
        "step": {
            "scored": seen.scored,
            "dropped": seen.scored - seen.pool_size,
            "by_reason": by_reason,
            "dropped_by_group": _tally(seen.dropped)[1],
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
        "noise": noise_record(
            NoiseParams.from_policy(policy),
            seen.noise,
            step.round_index,
            step.epoch,
            previous_noise(parent, step.round_index),
        ),
        "reproduce": _reproduce(layout),
    }
    if record["noise"]["warning"]:
        log.warning("%s", record["noise"]["warning"])
    return _write_manifest(layout, record)


def _checked_pass(
    staged: Path,
    parent: dict[str, Any],
    parent_pool: Path,
    outputs: tuple[Path, Path, Path | None],
    scores_path: Path,
) -> PassResult:
    """The decision pass over the staged decisions into `outputs` (decisions, pool,
    weights); if they do not line up with the parent pool, sorted once (a policy may
    reorder rows) and passed again, and if they still do not, the error that names the
    wrong sample."""
    try:
        return decision_pass(staged, parent_pool, *outputs)
    except Misaligned:
        pass
    resorted = temporary_sibling(staged)
    try:  # in bounded memory, like the scores (a merge of shards comes here unsorted)
        sort_to(pl.scan_parquet(staged), resorted, row_count(staged))
        os.replace(resorted, staged)
    finally:
        resorted.unlink(missing_ok=True)
    try:
        return decision_pass(staged, parent_pool, *outputs)
    except Misaligned:
        raise _mismatch(scores_path, parent, parent_pool, staged) from None


def _mismatch(
    scores_path: Path, parent: dict[str, Any], parent_pool: Path, staged: Path
) -> ManifestIntegrityError:
    """Why decisions do not cover the parent's pool exactly, once each (pruning only ever
    removes). Only ever called on the way to an error, so it may hold the ids in memory."""
    ids = pl.scan_parquet(staged).select("sample_id")
    repeated = ids.group_by("sample_id").len().filter(pl.col("len") > 1)
    repeated = repeated.sort("sample_id").head(1).collect()
    if repeated.height:
        return ManifestIntegrityError(
            f"{scores_path}: sample '{repeated['sample_id'][0]}' is scored more than once"
        )
    parent_ids = pl.scan_parquet(parent_pool).select("sample_id")
    stranger = ids.join(parent_ids, on="sample_id", how="anti").sort("sample_id").head(1)
    stranger = stranger.collect()
    if stranger.height:
        return ManifestIntegrityError(
            f"{scores_path}: sample '{stranger['sample_id'][0]}' is not in the pool of "
            f"manifest {parent['id'][:12]}"
        )
    scored = ids.select(pl.len()).collect().item()
    if scored != parent["pool"]["size"]:
        return ManifestIntegrityError(
            f"{scores_path}: {scored} samples scored but the pool of manifest "
            f"{parent['id'][:12]} has {parent['pool']['size']}"
        )
    return ManifestIntegrityError(
        f"{parent_pool}: the pool of manifest {parent['id'][:12]} is not sorted by "
        "sample_id, as every pool is written"
    )


def _sorted_counts(counts: Counter[Any]) -> dict[Any, int]:
    """Counts keyed in the order `group_counts` gives (sorted, a null key first)."""
    return {key: counts[key] for key in sorted(counts, key=lambda k: (k is not None, k or ""))}


def _tally(
    *tables: dict[tuple[str, str], int],
) -> tuple[dict[str, int], dict[str, int]]:
    """Counts by reason and by group over (reason, group) tables, each sorted."""
    by_reason: Counter[str] = Counter()
    by_group: Counter[str] = Counter()
    for table in tables:
        for (reason, group), count in table.items():
            by_reason[reason] += count
            by_group[group] += count
    return _sorted_counts(by_reason), _sorted_counts(by_group)


def _log_step(step: StepInputs, seen: PassResult) -> None:
    """One line per pruning step: how many left and why, and why the others stayed."""

    def reasons(table: dict[tuple[str, str], int]) -> str:
        counts = _tally(table)[0]
        return ", ".join(f"{reason} {count:,}" for reason, count in counts.items()) or "none"

    log.info(
        "round %d epoch %d: dropped %s of %s (%s); kept %s (%s)",
        step.round_index,
        step.epoch,
        f"{seen.scored - seen.pool_size:,}",
        f"{seen.scored:,}",
        reasons(seen.dropped),
        f"{seen.pool_size:,}",
        reasons(seen.kept),
    )


def run_manifests(layout: RunLayout) -> list[dict[str, Any]]:
    """The manifests of a run in (round, epoch) order, each checked against its id."""
    records = [load_manifest(p) for p in layout.manifest_dir.glob("*.json")]
    return sorted(records, key=lambda record: (record["round"], record["epoch"]))
