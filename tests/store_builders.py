"""Builders of hand-made stores: runs, resets and pruning steps with chosen losses, as the
flow writes them but with no training involved."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.config import PolicyConfig, RunConfig
from pipeline.pruning import StepInputs, prune_step, reset_pool
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
