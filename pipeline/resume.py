"""Resuming a killed run: the trainer's state is snapshotted after each training stage, so
a run restarts from the state that produced its last manifest and ends with the same
manifests (same ids) as an uninterrupted run; a lock keeps two processes off one run."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.errors import StoreError
from pipeline.pruning import run_manifests
from pipeline.runs import config_fingerprint, read_run_record
from pipeline.store import RunLayout, step_name

SNAPSHOTS_KEPT = 2

log = logging.getLogger("stm.resume")


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: the last manifest written (None: nothing yet) and every
    manifest so far."""

    last: dict[str, Any] | None
    manifests: list[dict[str, Any]]


@contextmanager
def run_lock(layout: RunLayout) -> Iterator[None]:
    """Hold an exclusive lock on the run for the life of the process that writes it. The
    operating system drops it when the process dies, even by SIGKILL."""
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    with open(layout.lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise StoreError(
                f"{layout.run_dir}: run {layout.run_id!r} is being written by another process"
            ) from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_being_written(layout: RunLayout) -> bool:
    """Whether another process holds the run's lock now; only reads (a dry run must not
    create the lock file)."""
    if not layout.lock.exists():
        return False
    with open(layout.lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def check_resumable(layout: RunLayout, config: RunConfig, fingerprint: str) -> None:
    """Resuming is only honest with the same config and the same data."""
    record = read_run_record(layout)
    if record["provenance"]["config_sha256"] != config_fingerprint(config):
        raise StoreError(
            f"{layout.config}: the config differs from the one run {layout.run_id!r} started "
            "with; resume it with its own config (--resume) or start a new run"
        )
    if record["dataset"]["fingerprint"] != fingerprint:
        raise StoreError(
            f"{layout.run_record}: the dataset fingerprint differs from the one run "
            f"{layout.run_id!r} started with; start a new run"
        )


def resume_point(layout: RunLayout) -> ResumePoint:
    manifests = run_manifests(layout)
    last = manifests[-1] if manifests else None
    if last is None:
        log.info("run %s: no manifest written yet, resuming from the start", layout.run_id)
    else:
        log.info(
            "run %s: resuming after step %s (%d manifest(s) kept)",
            layout.run_id,
            step_name(last["round"], last["epoch"]),
            len(manifests),
        )
    return ResumePoint(last, manifests)


def snapshot_trainer(layout: RunLayout, round_index: int, epoch: int) -> None:
    """Copy the trainer's directory as it is after training (round, epoch), published with
    one rename; older snapshots beyond the last few are removed."""
    target = layout.trainer_snapshot(round_index, epoch)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        shutil.copytree(layout.trainer_dir, staging, dirs_exist_ok=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    snapshots = sorted(p for p in target.parent.iterdir() if not p.name.startswith("."))
    for old in snapshots[:-SNAPSHOTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)


def restore_trainer(layout: RunLayout, last: dict[str, Any] | None) -> None:
    """Put back the trainer state that produced `last`: the snapshot of its training step,
    or for a reset the latest snapshot before it; a fresh (empty) directory if none."""
    wanted = None
    if last is not None:
        step = (last["round"], last["epoch"])
        root = layout.trainer_snapshot(0, 0).parent
        candidates = sorted(p for p in root.glob("r*-e*") if p.is_dir()) if root.is_dir() else []
        at_or_before = [p for p in candidates if p.name <= step_name(*step)]
        if last["kind"] == "prune":
            wanted = layout.trainer_snapshot(*step)
            if not wanted.is_dir():
                raise StoreError(f"{wanted}: trainer snapshot of the last manifest is missing")
        elif at_or_before:
            wanted = at_or_before[-1]
    shutil.rmtree(layout.trainer_dir, ignore_errors=True)
    if wanted is None:
        layout.trainer_dir.mkdir(parents=True, exist_ok=True)
        log.info("run %s: trainer starts afresh", layout.run_id)
    else:
        shutil.copytree(wanted, layout.trainer_dir)
        log.info("run %s: trainer state restored from snapshot %s", layout.run_id, wanted.name)
