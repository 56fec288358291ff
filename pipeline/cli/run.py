"""`stm run` and `stm runs`: run STM through the Prefect flow with a live table, resume a
killed run, show what a run would do (`--dry-run`), list the runs of a store."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline import logs
from pipeline.cli.app import (
    JSON_OPTION,
    STORE_OPTION,
    cli,
    progress,
)
from pipeline.config import RunConfig, resolve_config
from pipeline.dask_cluster import check_scheduler
from pipeline.dry_run import describe_run, render_text
from pipeline.errors import (
    PrefectUnavailable,
    StoreError,
)
from pipeline.launch import RunPlan, plan_run
from pipeline.policies import POLICIES
from pipeline.pruning import run_manifests
from pipeline.resume import run_lock
from pipeline.runs import RunInputs, is_complete, read_run_record, store_runs
from pipeline.store import RunLayout

# Held-out accuracy over all groups: the key models.evaluate reports it under.
OVERALL = "_overall"


# The config key each `stm run` option sets, by the option's parameter name.
OPTION_KEYS = {
    "store": "store",
    "data": "data.path",
    "eval_data": "data.eval_path",
    "id_column": "data.id_column",
    "group_column": "data.group_column",
    "prompt_column": "data.prompt_column",
    "target_column": "data.target_column",
    "run_id": "run_id",
    "seed": "seed",
    "rounds": "rounds",
    "epochs": "epochs",
    "policy": "policy.name",
    "floor": "policy.floor",
    "delta": "policy.delta",
    "engine": "scale.engine",
    "dask_address": "scale.dask_address",
    "dask_workers": "scale.dask_workers",
    "shards": "scale.shards",
}


def _prefect_target(store: Path) -> dict[str, str]:
    """Where the flow runs: the server PREFECT_API_URL names, or in-process with its state
    under the store (not the user's home) unless PREFECT_HOME says otherwise."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return {"mode": "server", "api_url": url}
    return {"mode": "local", "home": os.environ.get("PREFECT_HOME", str(store / ".prefect"))}


def _prefect_defaults(store: Path) -> None:
    """Run Prefect in-process with its state under the store, not the user's home, unless
    the user points it at a server or a home of their own."""
    target = _prefect_target(store.resolve())
    if target["mode"] == "local":
        os.environ.setdefault("PREFECT_HOME", target["home"])
        # Prefect creates its home without parents: a new store would have none.
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The first start migrates a new database: on a busy 2-core machine that can take
    # longer than Prefect's default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # Dask's scheduler and workers (which inherit this) log every start and stop.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


class EpochTable:
    """The live table of a run, one row per step. Groups get a column each (pool size and
    held-out accuracy) when there are few enough to read; otherwise totals only."""

    MAX_GROUP_COLUMNS = 4

    def __init__(self) -> None:
        self.records: list[tuple[dict[str, Any], dict[str, float]]] = []

    def add(self, record: dict[str, Any], seconds: dict[str, float]) -> None:
        self.records.append((record, seconds))

    def _groups(self) -> list[str]:
        if not self.records:
            return []
        groups = sorted(self.records[0][0]["pool"]["by_group"])
        return groups if 1 < len(groups) <= self.MAX_GROUP_COLUMNS else []

    def _trainer_metric(self) -> str | None:
        """The first metric an external trainer reports, shown in place of the built-in
        held-out accuracy."""
        for record, _ in self.records:
            trainer = record["metrics"].get("trainer") or {}
            if trainer:
                accuracies = sorted(name for name in trainer if "acc" in name)
                return (accuracies or sorted(trainer))[0]
        return None

    def __rich__(self) -> Table:
        groups = self._groups()
        trainer_metric = self._trainer_metric()
        table = Table(
            title="pool per group, cumulative tokens, held-out accuracy (or trainer metric)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        quality = (
            [trainer_metric] if trainer_metric else [f"acc {g}" for g in groups or ["held-out"]]
        )
        headers = ["step", "pool", *groups, "drop", "trained", "scored", *quality, "sec"]
        for header in headers:
            table.add_column(header, justify="right", no_wrap=True)
        for record, seconds in self.records:
            by_group = record["pool"]["by_group"]
            accuracy = record["metrics"].get("accuracy", {})
            trainer = record["metrics"].get("trainer") or {}
            step = record["step"] or {}
            if trainer_metric:
                value = trainer.get(trainer_metric)
                cells = ["-" if value is None else f"{value:.3f}"]
            else:
                cells = [
                    f"{accuracy[g]:.3f}" if g in accuracy else "-" for g in groups or [OVERALL]
                ]
            table.add_row(
                f"r{record['round']} e{record['epoch']}",
                f"{record['pool']['size']:,}",
                *(f"{by_group.get(g, 0):,}" for g in groups),
                str(step.get("dropped", "")),
                f"{record['tokens']['trained']:,}",
                f"{record['tokens']['scored']:,}",
                *cells,
                f"{seconds['epoch']:.1f}" if "epoch" in seconds else "",
            )
        return table


def manifest_summary(record: dict[str, Any]) -> dict[str, Any]:
    step = record["step"] or {}
    return {
        "id": record["id"],
        "round": record["round"],
        "epoch": record["epoch"],
        "pool": record["pool"]["size"],
        "pool_by_group": record["pool"]["by_group"],
        "dropped": step.get("dropped", 0),
        "dropped_by_reason": {k: v for k, v in step.get("by_reason", {}).items()},
        "tokens_trained": record["tokens"]["trained"],
        "tokens_scored": record["tokens"]["scored"],
        "accuracy": record["metrics"].get("accuracy", {}),
    }


def _quiet_prefect_logs() -> None:
    """A failed task is reported once, by the CLI, as one line: Prefect's own traceback
    logging of the same error would bury it."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (see configs/); flags below override its keys.",
)
@STORE_OPTION
@click.option(
    "--data",
    type=str,
    help="Dataset: Parquet/JSONL/CSV file, directory or glob, "
    "or a `datasets` save_to_disk directory [default: built-in arithmetic].",
)
@click.option("--eval-data", type=str, help="Held-out set for accuracy (same formats).")
@click.option("--id-column", type=str, help="Column holding sample ids [default: content hash].")
@click.option("--group-column", type=str, help="Column holding each sample's group.")
@click.option("--prompt-column", type=str, help="Prompt text column [default: prompt].")
@click.option("--target-column", type=str, help="Target text column [default: target].")
@click.option(
    "--run-id",
    type=str,
    help="Name of the run [default: time and config hash]; "
    "an unfinished run of that name is resumed.",
)
@click.option("--resume", metavar="RUN", help="Continue the killed run RUN with its saved config.")
@click.option("--seed", type=int, help="Seed for data, initialisation and shuffling.")
@click.option("--rounds", type=click.IntRange(min=1), help="Rounds (pool resets).")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs per round.")
@click.option("--policy", type=click.Choice(sorted(POLICIES)), help="Pruning policy.")
@click.option("--floor", type=float, help="Mastery floor of round 0 (loss, nats).")
@click.option("--delta", type=float, help="Loss drop that counts as sharp.")
@click.option(
    "--engine",
    type=click.Choice(["local", "dask"]),
    help="Where scoring runs: in this process, or in shards on a Dask cluster.",
)
@click.option(
    "--dask-address",
    metavar="ADDRESS",
    help="Scheduler of an existing Dask cluster (tcp://host:8786) [default: a local cluster].",
)
@click.option(
    "--dask-workers",
    type=click.IntRange(min=1),
    help="Worker processes of the local Dask cluster [default: 2].",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    help="Pieces the pool is scored in with --engine dask [default: 2 per local worker].",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Resolve the config, prepare and check the data, and print what the run would "
    "do (config, dataset, run directory, plan, Prefect), writing nothing.",
)
@JSON_OPTION
def run(
    config_path: Path | None,
    resume: str | None,
    dry_run: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Run STM on a dataset: train, export, score, prune and write a manifest per epoch.

    With no options it runs the built-in arithmetic benchmark on embedded defaults with a
    local, serverless Prefect, writing under manifests/. Set PREFECT_API_URL to run
    against a Prefect server instead.

    A killed run continues with `--resume RUN` (its saved config), or by running the
    same command with the same --run-id again: finished epochs are not redone and the
    manifests come out identical to an uninterrupted run's.
    """
    if resume:
        if config_path or any(v is not None for k, v in flags.items() if k != "store"):
            raise click.UsageError("--resume takes the run's saved config: give only --store")
        root = flags["store"] or Path(RunConfig().store)
        saved = RunLayout(root, resume).config
        if not saved.is_file():
            raise StoreError(f"{root}: no run {resume!r} to resume")
        config_path, flags["run_id"] = saved, resume
    overrides = {key: flags[name] for name, key in OPTION_KEYS.items()}
    overrides["store"] = str(flags["store"]) if flags["store"] else None
    options = {key: f"--{name.replace('_', '-')}" for name, key in OPTION_KEYS.items()}
    config = resolve_config(config_path, overrides, options)
    check_scheduler(config)
    from flows.inputs import prepare_inputs

    with progress("Preparing data"):
        inputs = prepare_inputs(config)
    plan = plan_run(config, inputs.fingerprint, datetime.now(UTC))
    if dry_run:
        _dry_run(plan, inputs, named=config.run_id is not None, as_json=as_json)
        return
    console = Console(stderr=as_json)
    if plan.state == "complete":
        console.print(
            f"Run {plan.config.run_id} is complete; its manifests are in "
            f"{plan.layout.manifest_dir}."
        )
        return
    _prefect_defaults(Path(config.store))
    with run_lock(plan.layout):
        _run_flow(plan.config, inputs, console, as_json, resume=plan.state == "resume")


def _dry_run(plan: RunPlan, inputs: RunInputs, named: bool, as_json: bool) -> None:
    """What the run would do, having failed wherever the run would fail before its first
    step (config, data, a changed config or dataset of the run to resume, an unreachable
    server), without creating the run, starting Prefect or writing to the store."""
    if plan.state != "complete":
        _check_prefect_server()
    description = describe_run(plan, inputs, named, _prefect_target(plan.layout.root.resolve()))
    if as_json:
        click.echo(json.dumps(description, indent=2))
    else:
        click.echo(render_text(description), nl=False)


def _check_prefect_server() -> None:
    """With PREFECT_API_URL set, fail in one line if nobody answers there, rather than
    with Prefect's traceback after the data is prepared."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as err:
        raise PrefectUnavailable(
            f"PREFECT_API_URL={url}: Prefect server not reachable ({err})"
        ) from err


def _run_flow(
    config: RunConfig, inputs: RunInputs, console: Console, as_json: bool, resume: bool
) -> None:
    _check_prefect_server()
    from flows.stm_flow import StepReport, run_flow

    table = EpochTable()
    step_progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    where = "Prefect server" if os.environ.get("PREFECT_API_URL") else "local Prefect"
    bar = step_progress.add_task(f"starting ({where})", total=config.rounds * config.epochs)

    def report(step: StepReport) -> None:
        record = step.record
        if record["kind"] == "prune":
            step_progress.advance(bar)
        step_progress.update(bar, description=f"round {record['round']} epoch {record['epoch']}")
        table.add(record, step.seconds)

    _quiet_prefect_logs()
    logs.print_through(console)
    with Live(Group(table, step_progress), console=console, refresh_per_second=4):
        result = run_flow(config, inputs, report=report, resume=resume)
    final = result.manifests[-1]
    console.line()
    console.print(
        f"Manifests of run [bold]{result.layout.run_id}[/] are in "
        f"{result.layout.manifest_dir} (final pool {final['pool']['size']} of "
        f"{final['dataset']['samples']}, manifest {final['id'][:12]})."
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run": result.layout.run_id,
                    "store": str(result.layout.root),
                    "run_dir": str(result.layout.run_dir),
                    "manifests": [manifest_summary(r) for r in result.manifests],
                },
                indent=2,
            )
        )


@cli.command()
@STORE_OPTION
@JSON_OPTION
def runs(store: Path | None, as_json: bool) -> None:
    """List the runs in a store, with the state of their latest manifest."""
    root = store or Path(RunConfig().store)
    rows = []
    for layout in store_runs(root):
        record = read_run_record(layout)
        manifests = run_manifests(layout)
        last = manifests[-1] if manifests else None
        rows.append(
            {
                "run": layout.run_id,
                "created": record["created"],
                "status": "complete" if is_complete(layout) else "incomplete",
                "policy": record["policy"],
                "seed": record["seed"],
                "source": record["dataset"]["source"],
                "samples": record["dataset"]["samples"],
                "steps": len(manifests),
                "last_round": last["round"] if last else None,
                "last_epoch": last["epoch"] if last else None,
                "pool": last["pool"]["size"] if last else None,
                "tokens_trained": last["tokens"]["trained"] if last else 0,
                "tokens_scored": last["tokens"]["scored"] if last else 0,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"No runs in {root}.")
        return
    table = Table(title=f"Runs in {root}", title_justify="left")
    for name in (
        "run",
        "created",
        "status",
        "policy",
        "seed",
        "source",
        "last (r, e)",
        "pool",
        "tokens trained",
        "tokens scored",
    ):
        table.add_column(name)
    for row in rows:
        table.add_row(
            row["run"],
            row["created"],
            row["status"],
            row["policy"],
            str(row["seed"]),
            row["source"],
            f"({row['last_round']}, {row['last_epoch']})",
            f"{row['pool']} / {row['samples']}",
            f"{row['tokens_trained']:,}",
            f"{row['tokens_scored']:,}",
        )
    Console().print(table)
