"""The `stm` command group and what its commands share: store and JSON options, dataset
options, and one clear line (no traceback) for any pipeline or storage error."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline.config import DataConfig, RunConfig
from pipeline.errors import (
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


# A full, read-only or forbidden store: the user's to fix, so one line, not a traceback.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


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
def cli() -> None:
    """Curate a training set by its training dynamics (Subtractive Training Method).

    After each training epoch every sample of the pool is scored by an ONNX export of the
    model; samples whose loss dropped sharply AND reached the mastery floor leave the pool.
    Each (round, epoch) pool is an immutable, content-addressed manifest in the store.
    """


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


def main() -> None:
    cli()
