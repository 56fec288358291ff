"""Where an epoch's time goes: training and scoring (the work) against export,
evaluation and the rest (Prefect task orchestration, deltas, policy, manifest writing).

    .venv/bin/python bench/epoch_overhead.py [--config configs/tiny.toml] [--out FILE]

Runs the flow once in a temporary store with local Prefect and reports, per stage, the
median and total seconds over all epochs, and overhead as a ratio of the work measured in
the same run. Not part of the test suite.
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


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(__file__).parent / "results" / "epoch_overhead.json",
)
def main(config_path: Path | None, out: Path) -> None:
    sandbox = Path(tempfile.mkdtemp(prefix="stm-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(sandbox / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows.stm_flow import StepReport, stm_flow
    from pipeline.config import load_config

    config = replace(load_config(config_path), store=str(sandbox / "store"), run_id="bench")
    reports: list[StepReport] = []
    started = time.perf_counter()
    stm_flow(config, report=reports.append)
    total = time.perf_counter() - started

    epochs = [r.seconds for r in reports if "epoch" in r.seconds]
    stages = ["train", "score", "export", "evaluate"]
    rows = {s: [e[s] for e in epochs] for s in stages}
    rows["other (prefect, deltas, policy, manifest)"] = [
        e["epoch"] - sum(e[s] for s in stages) for e in epochs
    ]
    rows["epoch"] = [e["epoch"] for e in epochs]
    work = sum(rows["train"]) + sum(rows["score"])
    overhead = sum(rows["export"]) + sum(rows["other (prefect, deltas, policy, manifest)"])
    result = {
        "config": str(config_path or "embedded defaults"),
        "epochs": len(epochs),
        "wall_seconds": total,
        "outside_epochs_seconds": total - sum(rows["epoch"]),
        "stages": {k: {"median": statistics.median(v), "total": sum(v)} for k, v in rows.items()},
        "overhead_per_epoch_median": statistics.median(
            [e["epoch"] - e["train"] - e["score"] - e["evaluate"] for e in epochs]
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


if __name__ == "__main__":
    main()
