"""Where an epoch's time goes: training and scoring (the work) against export,
evaluation and the rest (Prefect task orchestration, deltas, policy, manifest writing).

    .venv/bin/python bench/epoch_overhead.py [--config configs/tiny.toml] [--out FILE]
    .venv/bin/python bench/epoch_overhead.py --pool-size 1000000 [--epochs 3]
    .venv/bin/python bench/epoch_overhead.py --quick      # configs/tiny.toml

Runs the flow once in a temporary store with local Prefect and reports, per stage, the
median and total seconds over all epochs, and overhead as a ratio of the work measured in
the same run. With `--pool-size N` the run is an external-trainer run over N synthetic
samples whose trainer (`bench/null_trainer.py`) trains nothing and writes a two-node
scorer: train and score are then as cheap as they can be, and what remains of an epoch
(writing the trainer's pool, checking the scorer, deltas, policy, manifest, Prefect) is
the loop's own cost at that pool size. Not part of the test suite.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import (  # noqa: E402
    DataConfig,
    PolicyConfig,
    RunConfig,
    ScoringConfig,
    TrainerConfig,
)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(__file__).parent / "results" / "epoch_overhead.json",
)
@click.option("--pool-size", type=int, help="External-trainer run over N synthetic samples.")
@click.option(
    "--epochs", "pool_epochs", type=int, default=3, show_default=True, help="With --pool-size."
)
@click.option("--quick", is_flag=True, help="configs/tiny.toml: seconds, plus Prefect's start-up.")
def main(
    config_path: Path | None, out: Path, pool_size: int | None, pool_epochs: int, quick: bool
) -> None:
    loadavg = os.getloadavg()
    if quick and config_path is None:
        config_path = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
    sandbox = Path(tempfile.mkdtemp(prefix="stm-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(sandbox / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Under load from other processes the API can take longer than the 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from flows.stm_flow import StepReport, stm_flow
    from pipeline.config import load_config

    config = replace(load_config(config_path), store=str(sandbox / "store"), run_id="bench")
    if pool_size is not None:
        config = _null_trainer_config(config, sandbox, pool_size, pool_epochs)
    reports: list[StepReport] = []
    started = time.perf_counter()
    stm_flow(config, report=reports.append)
    total = time.perf_counter() - started

    epochs = [r.seconds for r in reports if "epoch" in r.seconds]
    # The built-in trainer exports and evaluates; an external one's scorer is checked.
    stages = [s for s in ("train", "score", "export", "evaluate", "check") if s in epochs[0]]
    rows = {s: [e[s] for e in epochs] for s in stages}
    rows["other (prefect, deltas, policy, manifest)"] = [
        e["epoch"] - sum(e[s] for s in stages) for e in epochs
    ]
    rows["epoch"] = [e["epoch"] for e in epochs]
    work = sum(rows["train"]) + sum(rows["score"])
    overhead = sum(
        sum(rows[s])
        for s in ("export", "check", "other (prefect, deltas, policy, manifest)")
        if s in rows
    )
    result = {
        "config": str(config_path or "embedded defaults"),
        "pool_size": pool_size,
        "loadavg_at_start": loadavg,
        "epochs": len(epochs),
        "wall_seconds": total,
        "outside_epochs_seconds": total - sum(rows["epoch"]),
        "stages": {k: {"median": statistics.median(v), "total": sum(v)} for k, v in rows.items()},
        "overhead_per_epoch_median": statistics.median(
            [e["epoch"] - e["train"] - e["score"] - e.get("evaluate", 0.0) for e in epochs]
        ),
        "overhead_over_work": overhead / work,
        "cpu_count": os.cpu_count(),
    }
    table = Table(
        title=f"{len(epochs)} epochs, {total:.1f} s wall "
        f"({result['outside_epochs_seconds']:.1f} s outside epochs: Prefect "
        "start-up, data preparation, resets)"
    )
    table.add_column("stage")
    table.add_column("median s/epoch", justify="right")
    table.add_column("total s", justify="right")
    for name, stats in result["stages"].items():
        table.add_row(name, f"{stats['median']:.3f}", f"{stats['total']:.2f}")
    console = Console()
    console.print(table)
    console.print(
        f"overhead per epoch (export + other), median: "
        f"{result['overhead_per_epoch_median']:.3f} s; "
        f"overhead / (train + score) = {result['overhead_over_work']:.2f}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def _null_trainer_config(
    config: RunConfig, sandbox: Path, pool_size: int, epochs: int
) -> RunConfig:
    """One round over `pool_size` synthetic samples, trained by `null_trainer.py`."""
    from bench.common import samples_chunk

    data = sandbox / "data.parquet"
    samples_chunk(0, pool_size, text_columns=True).rename(
        {"sample_id": "id", "group": "source"}
    ).write_parquet(data)
    trainer = Path(__file__).with_name("null_trainer.py")
    return replace(
        config,
        rounds=1,
        epochs=epochs,
        data=DataConfig(path=str(data), id_column="id", group_column="source"),
        trainer=TrainerConfig(
            command=f"{sys.executable} {trainer} --scorer {{scorer}} --epoch {{epoch}}"
        ),
        policy=PolicyConfig(name="stm", delta=0.05, floor=0.3),
        scoring=ScoringConfig(batch_size=65_536, threads=1),
    )


if __name__ == "__main__":
    main()
