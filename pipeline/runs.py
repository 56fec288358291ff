"""Creating and listing runs in a store: the run directory, its resolved config and the
run record written once at the start (see manifests/README.md for the layout)."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import tomli_w

from pipeline.config import (
    POLICY_KEYS_ADDED_LATER,
    PolicyConfig,
    RunConfig,
    dumps_toml,
    to_dict,
)
from pipeline.errors import StoreError
from pipeline.store import RunLayout, list_runs, write_parquet_atomic, write_text_atomic

RUN_SCHEMA_VERSION = 1
_VERSIONED_PACKAGES = ("pyarrow", "polars", "onnxruntime", "torch", "prefect", "datasets")


@dataclass(frozen=True)
class RunInputs:
    """The prepared data of a run, ready to be written into its directory. An external
    trainer's run has no vocabulary: the built-in model's encoding is not done for it."""

    samples: pa.Table
    eval_samples: pa.Table | None
    fingerprint: str
    vocabulary_json: str | None


def default_run_id(config: RunConfig, now: datetime) -> str:
    """Sortable by time, and tells configs apart at a glance."""
    digest = hashlib.sha256(dumps_toml(config).encode()).hexdigest()[:8]
    return f"{now:%Y%m%d-%H%M%S}-{digest}"


def _git_commit() -> str | None:
    """The commit of this package's checkout, when it runs from one."""
    source = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def config_fingerprint(config: RunConfig) -> str:
    """sha256 of the resolved config without where it is stored, what the run is called
    and where it scores ([scale]), which change no result: a moved store, a renamed run or
    a run resumed on another cluster still matches."""
    values = to_dict(replace(config, store=".", run_id=None))
    values.pop("scale", None)
    defaults = to_dict(PolicyConfig())
    for key in POLICY_KEYS_ADDED_LATER:
        if values["policy"].get(key) == defaults[key]:
            del values["policy"][key]
    return hashlib.sha256(tomli_w.dumps(values).encode()).hexdigest()


def provenance(config: RunConfig) -> dict[str, Any]:
    """What it takes to reproduce a run: its exact config (the resolved TOML saved beside
    it, and its fingerprint), seed, package versions and the code's git commit when known."""
    return {
        "config_sha256": config_fingerprint(config),
        "seed": config.seed,
        "versions": _versions(),
        "git_commit": _git_commit(),
    }


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def create_run(config: RunConfig, inputs: RunInputs, now: datetime | None = None) -> RunLayout:
    """Write a new run's directory; an existing run is never overwritten."""
    now = now or datetime.now(UTC)
    run_id = config.run_id or default_run_id(config, now)
    config = replace(config, run_id=run_id)
    layout = RunLayout(Path(config.store), run_id)
    if layout.run_record.exists():
        raise StoreError(f"{layout.run_dir}: run {run_id!r} already exists; pick another --run-id")
    write_parquet_atomic(inputs.samples, layout.samples)
    if inputs.eval_samples is not None:
        write_parquet_atomic(inputs.eval_samples, layout.eval_samples)
    if inputs.vocabulary_json is not None:
        write_text_atomic(layout.vocabulary, inputs.vocabulary_json)
    write_text_atomic(layout.config, dumps_toml(config))
    record = {
        "schema_version": RUN_SCHEMA_VERSION,
        "run": run_id,
        "created": now.isoformat(timespec="seconds"),
        "seed": config.seed,
        "policy": config.policy.name,
        "trainer": config.trainer.command or "builtin",
        "rounds": config.rounds,
        "epochs": config.epochs,
        "dataset": {
            "source": config.data.path or "builtin:arithmetic",
            "fingerprint": inputs.fingerprint,
            "samples": inputs.samples.num_rows,
            "eval_samples": inputs.eval_samples.num_rows if inputs.eval_samples else 0,
        },
        "provenance": provenance(config),
    }
    write_text_atomic(layout.run_record, json.dumps(record, sort_keys=True, indent=2) + "\n")
    return layout


def mark_complete(layout: RunLayout, final: dict[str, Any]) -> None:
    """The completion marker: a run without it was interrupted (datatrove-style)."""
    marker = {
        "run": layout.run_id,
        "final_manifest": final["id"],
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_text_atomic(layout.completion_marker, json.dumps(marker, sort_keys=True, indent=2) + "\n")


def is_complete(layout: RunLayout) -> bool:
    return layout.completion_marker.is_file()


def read_run_record(layout: RunLayout) -> dict[str, Any]:
    try:
        return json.loads(layout.run_record.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StoreError(f"{layout.run_record}: unreadable run record: {err}") from err


def store_runs(root: Path) -> list[RunLayout]:
    return [RunLayout(root, run_id) for run_id in list_runs(root)]
