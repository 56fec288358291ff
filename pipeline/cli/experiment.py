"""`stm experiment GRID.toml`: every policy x params x seed of a grid file as an ordinary
run, in parallel processes if asked, then results.parquet, summary.md and figures."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.cli.app import JSON_OPTION, cli
from pipeline.cli.run import _prefect_defaults, _quiet_prefect_logs
from pipeline.experiment import Cell, Event, load_experiment, run_cells


@cli.command()
@click.argument("grid", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Experiment directory: its runs (store/), results and figures "
    "[default: experiments/<grid file name>].",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs at once, each in its own process (1: one after another in this process).",
)
@JSON_OPTION
def experiment(grid: Path, out: Path | None, jobs: int, as_json: bool) -> None:
    """Run a grid of policies x parameters x seeds and compare them at equal compute.

    Every cell is a normal run in <out>/store with a run id made from the cell, so running
    the same grid again skips finished runs and resumes a killed one. At a given seed every
    policy starts from the same model, data and data order. Writes results.parquet,
    summary.md and PNG figures into <out> (docs/experiments.md).
    """
    out = out or Path("experiments") / grid.stem
    plan = load_experiment(grid, out)
    console = Console(stderr=True)
    _prefect_defaults(out / "store")
    _quiet_prefect_logs()
    epochs_per_run = {c.run_id: c.config.rounds * c.config.epochs for c in plan.cells}
    statuses: dict[str, str] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        runs_task = bar.add_task(f"runs ({jobs} at once)", total=len(plan.cells))
        epochs_task = bar.add_task("epochs", total=sum(epochs_per_run.values()))

        def on_event(event: Event) -> None:
            run_id, kind, round_index, epoch = event
            if kind == "prune":
                bar.advance(epochs_task)
                bar.update(epochs_task, description=f"{run_id} r{round_index} e{epoch}")

        def on_done(cell: Cell, status: str) -> None:
            statuses[cell.run_id] = status
            if status == "complete":  # skipped: its epochs were done before
                bar.advance(epochs_task, epochs_per_run[cell.run_id])
            bar.advance(runs_task)

        run_cells(plan.cells, out, jobs, on_event, on_done)
        bar.update(epochs_task, completed=sum(epochs_per_run.values()))
    from pipeline.experiment import write_outputs

    outputs = write_outputs(plan, out)
    skipped = sum(status == "complete" for status in statuses.values())
    console.print(
        f"{len(plan.cells)} runs ({skipped} already complete) in {out / 'store'}; "
        f"scoring costs {outputs.scoring_cost['ratio']:.3f} of training per token. "
        f"Summary: {outputs.files['summary']}"
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "experiment": str(out),
                    "grid": str(grid),
                    "baseline": plan.baseline,
                    "files": {name: str(path) for name, path in outputs.files.items()},
                    "scoring_cost": outputs.scoring_cost,
                    "runs": [
                        {
                            "run": cell.run_id,
                            "policy": cell.policy,
                            "params": cell.params,
                            "seed": cell.seed,
                            "status": statuses.get(cell.run_id),
                        }
                        for cell in plan.cells
                    ],
                    "summary": outputs.summary.to_dicts(),
                    **(
                        {"noisy_share_by_step": outputs.noise_by_step.to_dicts()}
                        if outputs.noise_by_step is not None
                        else {}
                    ),
                },
                indent=2,
            )
        )
