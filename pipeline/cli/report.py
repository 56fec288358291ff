"""`stm report RUN`: a self-contained HTML report of a run, with its figures as PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from pipeline.cli.app import JSON_OPTION, STORE_OPTION, cli, store_root
from pipeline.report import gather, open_run
from pipeline.report_html import report_json, write_report
from pipeline.report_plots import sections
from pipeline.trajectories import TrajectoryParams

DEFAULT_PARAMS = TrajectoryParams()


@cli.command("report")
@click.argument("run_id", metavar="RUN")
@STORE_OPTION
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for report.html and the PNGs [default: <store>/runs/RUN/report].",
)
@click.option(
    "--band",
    type=click.FloatRange(min=0),
    default=DEFAULT_PARAMS.band,
    show_default=True,
    help="Largest per-epoch |delta| (nats) that counts as settled.",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=DEFAULT_PARAMS.window,
    show_default=True,
    help="Consecutive in-band epochs, through a sample's last, that make it settled.",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many of the most unsettled samples to list.",
)
@JSON_OPTION
def report(
    run_id: str,
    store: Path | None,
    out: Path | None,
    band: float,
    window: int,
    top: int,
    as_json: bool,
) -> None:
    """Write a self-contained HTML report of RUN (report.html, figures embedded, no
    external files or URLs) and each figure as a PNG beside it.

    It shows the pool size per group after every epoch across rounds; the samples dropped
    per reason and what the policy decided for the rest; loss and delta distributions per
    epoch with the floor, threshold and settling band; held-out accuracy (or an external
    trainer's metrics) against cumulative tokens trained, and trained plus scored; and
    per-sample trajectories: which samples settled (|delta| within --band for the last
    --window or more of their epochs), which kept wandering, counts per group and the
    --top most unsettled samples with their mean loss and loss per epoch; and the share of
    the pool that looks mislabeled after each epoch, the samples the noise guard
    quarantined and any label-noise warning (also printed on stderr). A run still in
    progress, or with no scored epoch yet, shows what exists.
    """
    root = store_root(store)
    layout = open_run(root, run_id)
    params = TrajectoryParams(band=band, window=window)
    target = out or layout.run_dir / "report"
    if as_json:
        data = gather(layout, params, top)
        click.echo(json.dumps(report_json(data, write_report(data, target)), indent=2))
        return
    console = Console(stderr=True)
    with console.status(f"Reading run {run_id}"):
        data = gather(layout, params, top)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    )
    with progress:
        titles = [section.title for section in sections(data)]
        task = progress.add_task("Drawing", total=len(titles))

        def drawing(title: str) -> None:
            progress.update(task, description=title, completed=titles.index(title))

        files = write_report(data, target, drawing)
        progress.update(task, description="Written", completed=len(titles))
    figures = len(files.figures)
    click.echo(
        f"Report of run {run_id}: {files.html} ({figures} figure{'' if figures == 1 else 's'} "
        "beside it)"
    )
    for warning in data.noise["warning"].drop_nulls():
        click.echo(f"label-noise warning: {warning}", err=True)
