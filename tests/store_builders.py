"""Builders of hand-made stores: runs, resets and pruning steps with chosen losses, as the
flow writes them but with no training involved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.config import PolicyConfig, RunConfig
from pipeline.label_noise import SUSPECT_LABEL
from pipeline.manifest import encode_record, with_id
from pipeline.pruning import (
    StepInputs,
    decide,
    prune_step,
    record_decisions,
    reset_pool,
    write_scores,
)
from pipeline.runs import RunInputs, create_run
from pipeline.store import RunLayout, sha256_file
from tests.builders import make_sample_table


def make_run(root: Path, run_id: str, n: int = 6) -> RunLayout:
    """A run directory as `stm run` creates it, on the `make_sample_table` samples."""
    inputs = RunInputs(make_sample_table(n=n), None, "fingerprint", "{}")
    return create_run(RunConfig(store=str(root), run_id=run_id), inputs)


def prune_with_losses(
    layout: RunLayout,
    parent: dict,
    round_index: int,
    epoch: int,
    losses: dict[str, float],
    policy: PolicyConfig,
) -> dict:
    """One pruning step as the flow runs it, with given losses and a stand-in scorer."""
    raw = layout.run_dir / "scores" / f".raw-{round_index}-{epoch}.parquet"
    raw.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {"sample_id": list(losses), "loss": list(losses.values()), "n_tokens": [2] * len(losses)}
    ).write_parquet(raw)
    scorer = layout.scorer(round_index, epoch)
    scorer.parent.mkdir(parents=True, exist_ok=True)
    scorer.write_bytes(f"scorer {round_index} {epoch}".encode())
    step = StepInputs(round_index, epoch, raw, scorer, sha256_file(scorer), 10, 2 * len(losses), {})
    return prune_step(layout, parent, step, policy)


def run_rounds(
    layout: RunLayout, policy: PolicyConfig, rounds: list[list[dict[str, float]]]
) -> list[dict]:
    """Resets and pruning steps: `rounds[r][e]` holds the losses at epoch e + 1; only the
    samples still in the pool are scored."""
    records: list[dict] = []
    parent = None
    for round_index, epochs in enumerate(rounds):
        parent = reset_pool(layout, round_index, parent, policy, "fingerprint")
        records.append(parent)
        for epoch, losses in enumerate(epochs, start=1):
            pool = set(pl.read_parquet(layout.resolve(parent["pool"]["path"]))["sample_id"])
            in_pool = {k: v for k, v in losses.items() if k in pool}
            parent = prune_with_losses(layout, parent, round_index, epoch, in_pool, policy)
            records.append(parent)
    return records


# Stores whose steps quarantine chosen samples as the noise guard does (`keep` false,
# reason `suspect-label`) and whose records carry a `noise` estimate: for the review,
# diff and report tests.
STM = PolicyConfig(name="stm", delta=0.25, floor=0.5, tighten=0.5)
IDS = [f"s{i:03d}" for i in range(6)]
BASE = dict.fromkeys(IDS, 1.0)


def make_labelled_run(root: Path, run_id: str) -> RunLayout:
    """A run on six samples with a `label` column, the dataset column a reviewer checks."""
    samples = pa.table(
        {
            "sample_id": IDS,
            "group": ["easy", "hard"] * 3,
            "label": [f"label-{i}" for i in range(6)],
        }
    )
    return create_run(
        RunConfig(store=str(root), run_id=run_id), RunInputs(samples, None, "fingerprint", "{}")
    )


def noise_entry(
    share: float | None,
    round_start_share: float | None,
    quarantined: int = 0,
    warning: str | None = None,
) -> dict[str, Any]:
    """What a test sets in a record's `noise` key, over what the pipeline wrote there:
    the shares (growth derived from them), the quarantined count and the warning."""
    growth = share / round_start_share if share is not None and round_start_share else None
    return {
        "share": share,
        "round_start_share": round_start_share,
        "growth": growth,
        "quarantined": quarantined,
        "warning": warning,
    }


def quarantine_step(
    layout: RunLayout,
    parent: dict,
    round_index: int,
    epoch: int,
    losses: dict[str, float],
    suspects: tuple[str, ...],
    noise: dict[str, Any] | None,
) -> dict:
    """One pruning step with given losses (of the pool's samples) in which the guard
    quarantines `suspects`. Its record's `noise` key is updated with `noise`, or, with
    None, removed, as in a record of an earlier version. The key is not part of the id."""
    raw = layout.run_dir / "scores" / f".raw-{round_index}-{epoch}.parquet"
    raw.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {"sample_id": list(losses), "loss": list(losses.values()), "n_tokens": [2] * len(losses)}
    ).write_parquet(raw)
    previous = pl.scan_parquet(layout.scores(round_index, epoch - 1)) if epoch > 1 else None
    scores = layout.scores(round_index, epoch)
    write_scores(raw, previous, round_index, epoch, scores)
    suspect = pl.col("sample_id").is_in(list(suspects))
    decisions = decide(pl.scan_parquet(scores), STM, round_index).with_columns(
        keep=pl.col("keep") & ~suspect,
        reason=pl.when(suspect).then(pl.lit(SUSPECT_LABEL)).otherwise(pl.col("reason")),
    )
    tokens = 2 * len(losses)
    step = StepInputs(round_index, epoch, raw, None, None, tokens, tokens, {})
    record = record_decisions(layout, parent, scores, decisions, step, STM)
    if noise == {}:
        return record
    if noise is None:
        record = {key: value for key, value in record.items() if key != "noise"}
    else:
        record = {**record, "noise": {**record.get("noise", {}), **noise}}
    record = with_id(record)
    layout.manifest(round_index, epoch).write_bytes(encode_record(record))
    return record


Step = tuple[dict[str, float], tuple[str, ...], dict[str, Any] | None]


def run_noisy_rounds(layout: RunLayout, rounds: list[list[Step]]) -> list[dict]:
    """Resets and steps: `rounds[r][e]` is (losses, suspects, noise) of epoch e + 1 (noise
    as `quarantine_step` takes it, `{}` to keep the pipeline's); only the samples still in
    the pool are scored."""
    records: list[dict] = []
    parent = None
    for round_index, epochs in enumerate(rounds):
        parent = reset_pool(layout, round_index, parent, STM, "fingerprint")
        records.append(parent)
        for epoch, (losses, suspects, noise) in enumerate(epochs, start=1):
            pool = set(pl.read_parquet(layout.resolve(parent["pool"]["path"]))["sample_id"])
            in_pool = {k: v for k, v in losses.items() if k in pool}
            parent = quarantine_step(layout, parent, round_index, epoch, in_pool, suspects, noise)
            records.append(parent)
    return records


# Round 0: s000 mastered at epoch 2, s003 and s005 quarantined at epoch 3 (their loss
# stayed at 1.0), s001 mastered at epoch 4. Round 1: s004 quarantined at epoch 2.
QUARANTINE_ROUNDS: list[list[Step]] = [
    [
        (BASE, (), {}),
        (BASE | {"s000": 0.25}, (), {}),
        (BASE, ("s003", "s005"), {}),
        (BASE | {"s001": 0.125}, (), {}),
    ],
    [(BASE, (), {}), (BASE, ("s004",), {})],
]


def build_quarantine_store(root: Path) -> Path:
    run_noisy_rounds(make_labelled_run(root, "guarded"), QUARANTINE_ROUNDS)
    return root
