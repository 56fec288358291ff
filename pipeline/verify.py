"""Store verification for audits: recompute every content hash from the files and check
the lineage (parents exist, pools only shrink within a round, counts add up). Every
problem is reported, one line each, naming the manifest and what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import ManifestIntegrityError
from pipeline.manifest import load_manifest, verify_manifest
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
    parent = records.get(record["parent"]) if record["parent"] else None
    if record["parent"] and parent is None:
        problems.append(f"{path}: parent manifest {record['parent']} is missing from the store")
    if record["kind"] == "reset":
        if pool["size"] != record["dataset"]["samples"] or record["epoch"] != 0:
            problems.append(
                f"{path}: a reset must hold all {record['dataset']['samples']} samples at epoch 0"
            )
        return problems
    if parent is None:
        return problems + [f"{path}: a prune step has no parent"]
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


def verify_store(root: Path, paths: list[Path]) -> tuple[int, list[str]]:
    """(manifests checked, problems). Hashes first; lineage only for intact records."""
    problems: list[str] = []
    intact: list[tuple[Path, dict[str, Any]]] = []
    for path in paths:
        try:
            intact.append((path, verify_manifest(root, path)))
        except ManifestIntegrityError as err:
            problems.append(str(err))
    records = {record["id"]: record for _, record in _all_records(root, intact)}
    for path, record in intact:
        problems += lineage_problems(root, path, record, records)
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
