"""Store verification for audits: recompute every content hash from the files and check
the lineage (parents exist, pools only shrink within a round, counts add up). Every
problem is reported, one line each, naming the manifest and what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import ManifestIntegrityError
from pipeline.label_noise import (
    SUSPECT,
    noise_estimate,
    noise_record,
    params_of_record,
    previous_noise,
)
from pipeline.manifest import group_counts, load_manifest, verify_manifest
from pipeline.store import RunLayout, list_runs, step_name


def manifest_paths(root: Path, runs: list[str] | None = None) -> list[Path]:
    paths: list[Path] = []
    for run_id in runs if runs is not None else list_runs(root):
        paths += sorted(RunLayout(root, run_id).manifest_dir.glob("*.json"))
    return paths


def _pool_ids(root: Path, record: dict[str, Any]) -> pl.LazyFrame:
    return pl.scan_parquet(root / record["pool"]["path"]).select("sample_id")


def lineage_problems(
    root: Path, path: Path, record: dict[str, Any], records: dict[str, dict[str, Any]]
) -> list[str]:
    """What is wrong with a (hash-verified) record relative to its parent."""
    problems = []
    if path.stem != step_name(record["round"], record["epoch"]):
        problems.append(
            f"{path}: file name does not match round {record['round']} epoch {record['epoch']}"
        )
    pool, step, tokens = record["pool"], record["step"], record["tokens"]
    if sum(pool["by_group"].values()) != pool["size"]:
        problems.append(f"{path}: pool counts per group do not add up to {pool['size']}")
    problems += _recount_pool(root, path, record)
    parent = records.get(record["parent"]) if record["parent"] else None
    if record["parent"] and parent is None:
        return problems + [
            f"{path}: parent manifest {record['parent']} is missing from the store or "
            "failed its own check"
        ]
    if parent is not None:
        own = RunLayout(root, record["run"]).manifest(parent["round"], parent["epoch"])
        if not own.is_file():
            problems.append(f"{path}: its parent's manifest {own} is missing from its run")
    if record["kind"] == "reset":
        if pool["size"] != record["dataset"]["samples"] or record["epoch"] != 0:
            problems.append(
                f"{path}: a reset must hold all {record['dataset']['samples']} samples at epoch 0"
            )
        return problems
    if parent is None:
        return problems + [f"{path}: a prune step has no parent"]
    problems += _recount_decisions(root, path, record, parent)
    # Identical lineages in two runs share ids, so the parent may be read from either run.
    if (parent["round"], parent["epoch"] + 1) != (record["round"], record["epoch"]):
        problems.append(
            f"{path}: parent {parent['id'][:12]} is not the previous epoch of the same round"
        )
    if step["scored"] != parent["pool"]["size"]:
        problems.append(
            f"{path}: scored {step['scored']} samples, the parent pool has {parent['pool']['size']}"
        )
    if parent["pool"]["size"] - step["dropped"] != pool["size"]:
        problems.append(
            f"{path}: parent pool {parent['pool']['size']} - dropped "
            f"{step['dropped']} != pool {pool['size']}"
        )
    if sum(step["by_reason"].values()) != step["scored"]:
        problems.append(f"{path}: decisions per reason do not add up to {step['scored']}")
    for key in ("trained", "scored"):
        if parent["tokens"][key] + tokens[f"{key}_step"] != tokens[key]:
            problems.append(f"{path}: cumulative tokens {key} do not follow from the parent")
    grown = _pool_ids(root, record).join(_pool_ids(root, parent), on="sample_id", how="anti")
    extra = grown.head(1).collect()
    if extra.height:
        problems.append(
            f"{path}: pool grew within a round: sample "
            f"'{extra['sample_id'][0]}' is not in the parent pool"
        )
    return problems


def _recount_pool(root: Path, path: Path, record: dict[str, Any]) -> list[str]:
    """The pool's counts per group, recomputed from the pool file."""
    pool = pl.read_parquet(root / record["pool"]["path"], columns=["sample_id", "group"])
    recounted = group_counts(pool)
    if recounted != record["pool"]["by_group"]:
        return [
            f"{path}: pool.by_group {record['pool']['by_group']} but the pool file "
            f"holds {recounted}"
        ]
    return []


def _recount_decisions(
    root: Path, path: Path, record: dict[str, Any], parent: dict[str, Any]
) -> list[str]:
    """The step's counts recomputed from its decisions file, which must cover exactly the
    parent's pool and keep exactly the new pool, with the losses of the scores file."""
    step = record["step"]
    decisions = pl.read_parquet(root / step["decisions"]["path"])
    scores = pl.read_parquet(root / step["scores"]["path"], columns=["sample_id", "loss"])
    dropped = decisions.filter(~pl.col("keep"))
    problems = []
    recounted = {
        "by_reason": group_counts(decisions, "reason"),
        "dropped": dropped.height,
        "dropped_by_group": group_counts(dropped),
    }
    for key, value in recounted.items():
        if step[key] != value:
            problems.append(f"{path}: step.{key} {step[key]} but the decisions hold {value}")
    parent_ids = pl.read_parquet(root / parent["pool"]["path"], columns=["sample_id"])
    pool_ids = pl.read_parquet(root / record["pool"]["path"], columns=["sample_id"])
    if not decisions["sample_id"].sort().equals(parent_ids["sample_id"].sort()):
        problems.append(f"{path}: the decisions do not cover exactly the parent's pool")
    kept = decisions.filter(pl.col("keep"))["sample_id"].sort()
    if not kept.equals(pool_ids["sample_id"].sort()):
        problems.append(f"{path}: the samples kept by the decisions are not the pool")
    problems += _recount_noise(path, record, parent, decisions)
    joined = decisions.join(scores, on="sample_id", how="left", suffix="_scored")
    if joined.filter(pl.col("loss") != pl.col("loss_scored")).height:
        problems.append(f"{path}: decisions and scores disagree on losses")
    return problems


def _recount_noise(
    path: Path, record: dict[str, Any], parent: dict[str, Any], decisions: pl.DataFrame
) -> list[str]:
    """The step's label-noise entry, recomputed from the decisions' criterion column and
    the parent's entry (a record written before the estimate existed has neither)."""
    noise = record.get("noise")
    if noise is None or SUSPECT not in decisions.columns:
        return []
    expected = noise_record(
        params_of_record(noise),
        noise_estimate(decisions),
        record["round"],
        record["epoch"],
        previous_noise(parent, record["round"]),
    )
    return [
        f"{path}: noise.{key} {noise.get(key)!r} but the decisions give {value!r}"
        for key, value in expected.items()
        if noise.get(key) != value
    ]


def verify_store(
    root: Path, paths: list[Path], on_progress: Callable[[int], None] | None = None
) -> tuple[int, list[str]]:
    """(manifests checked, problems). Hashes first; lineage only for intact records.
    `on_progress` is told of each check done: one per manifest for its hashes, one more
    for its lineage (counted for a broken record too, which has none to check)."""
    advance = on_progress or (lambda _: None)
    problems: list[str] = []
    intact: list[tuple[Path, dict[str, Any]]] = []
    for path in paths:
        try:
            intact.append((path, verify_manifest(root, path)))
        except ManifestIntegrityError as err:
            problems.append(str(err))
            advance(1)  # no lineage to check
        advance(1)
    records = {record["id"]: record for _, record in _all_records(root, intact)}
    for path, record in intact:
        problems += lineage_problems(root, path, record, records)
        advance(1)
    return len(paths), problems


def _all_records(
    root: Path, intact: list[tuple[Path, dict[str, Any]]]
) -> list[tuple[Path, dict[str, Any]]]:
    """Parents may live outside the verified selection (another run, same store): look
    them up among every loadable manifest of the store."""
    known = {path for path, _ in intact}
    extra = []
    for path in manifest_paths(root):
        if path not in known:
            try:
                extra.append((path, load_manifest(path)))
            except ManifestIntegrityError:
                continue
    return intact + extra
