"""The `stm` command group and what its commands share: store and JSON options, dataset
options, log levels, progress on stderr, and one clear line (no traceback) for any
pipeline or storage error."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from pipeline import logs
from pipeline.config import DataConfig, RunConfig
from pipeline.errors import (
    STORAGE_ERRNOS,
    PipelineError,
    StoreError,
)

STORE_OPTION = click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store root holding runs and pools [default: manifests].",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


class StmGroup(click.Group):
    """Turns every pipeline error into click's one-line `Error: ...` and exit code 1: a
    user mistake never shows a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipelineError as err:
            raise click.ClickException(str(err)) from err
        except OSError as err:
            if err.errno not in STORAGE_ERRNOS:
                raise
            # Writes are atomic, so a full or read-only disk leaves no half-written file.
            raise click.ClickException(f"{err.filename}: {err.strerror}") from err


@click.group(cls=StmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stm-curate")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help=f"More log lines on stderr: -v, -vv. {logs.LEVEL_VARIABLE}=DEBUG|INFO|WARNING|ERROR "
    "sets the level instead [default: INFO; WARNING for `stm run`, whose log lines go to "
    "the Prefect run's logs].",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Curate a training set by its training dynamics (Subtractive Training Method).

    After each training epoch every sample of the pool is scored by an ONNX export of the
    model; samples whose loss dropped sharply AND reached the mastery floor leave the pool.
    Each (round, epoch) pool is an immutable, content-addressed manifest in the store.
    """
    logs.route_to_prefect(os.environ)
    # `stm run` has a live table for a display; its INFO lines belong in the run's logs.
    default = logging.WARNING if ctx.invoked_subcommand == "run" else logging.INFO
    configured = os.environ.get(logs.LEVEL_VARIABLE)
    logs.log_to_console(logs.console_level(verbose, configured, default))


def store_root(store: Path | None) -> Path:
    root = store or Path(RunConfig().store)
    if not root.is_dir():
        raise StoreError(f"{root}: store not found")
    return root


def data_config(data: str, id_column: str | None, group_column: str | None) -> DataConfig:
    return DataConfig(path=data, id_column=id_column, group_column=group_column)


DATA_OPTIONS = [
    click.option("--data", required=True, help="Dataset (same formats as `stm run --data`)."),
    click.option("--id-column", help="Column holding sample ids [default: content hash]."),
    click.option("--group-column", help="Column holding each sample's group."),
]


def with_data_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(DATA_OPTIONS):
        command = option(command)
    return command


def report_problems(
    payload: dict[str, Any], problems: list[str], ok_message: str, as_json: bool
) -> None:
    """Checks report every problem, one `FAIL` line each (or JSON), and exit 1 if any."""
    if as_json:
        click.echo(json.dumps({**payload, "problems": problems}, indent=2))
    else:
        for problem in problems:
            click.echo(f"FAIL {problem}", err=True)
        if not problems:
            click.echo(ok_message)
    if problems:
        raise SystemExit(1)


@contextmanager
def progress(
    description: str, total: int | None = None, unit: str = ""
) -> Iterator[Callable[[int], None]]:
    """Feedback for a long step, on stderr so stdout stays parseable with --json: a bar
    with counts when the total is known, a spinner otherwise. Yields the function that
    advances it. Transient: it leaves the screen when the step ends. Off when stderr is
    not an interactive terminal (a pipe, a CI log), as rich judges it (TTY_INTERACTIVE)."""
    console = Console(stderr=True)
    columns: list[ProgressColumn | str] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn(), TextColumn(unit)]
    columns.append(TimeElapsedColumn())
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_interactive
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.advance(task, done)


def main() -> None:
    cli()
