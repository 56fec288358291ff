"""The `stm` command line: every user-facing step, with `--help`, `--json` where scripts
consume the output, and one clear line (no traceback) for any pipeline error."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import polars as pl
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.catalog import Catalog, Entry
from pipeline.config import DataConfig, PolicyConfig, RunConfig, load_config, with_overrides
from pipeline.diff import counts as diff_counts
from pipeline.diff import diff_manifests
from pipeline.errors import (
    ConfigError,
    ManifestNotFound,
    PipelineError,
    PrefectUnavailable,
    StoreError,
)
from pipeline.ingest import load_samples
from pipeline.policies import POLICIES, get_policy
from pipeline.pruning import run_manifests
from pipeline.resume import check_resumable, run_lock
from pipeline.runs import RunInputs, default_run_id, is_complete, read_run_record, store_runs
from pipeline.scorer_check import check_scorer_table
from pipeline.shards import export_pool, summary_json
from pipeline.standalone import prune_scores, score_dataset
from pipeline.store import RunLayout
from pipeline.verify import manifest_paths, verify_store

# Held-out accuracy over all groups: the key models.evaluate reports it under.
OVERALL = "_overall"

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


def _prefect_defaults(store: Path) -> None:
    """Run Prefect in-process with its state under the store, not the user's home, unless
    the user points it at a server or a home of their own."""
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str((store / ".prefect").resolve()))
        # Prefect creates its home without parents: a new store would have none.
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The first start migrates a new database: on a busy 2-core machine that can take
    # longer than Prefect's default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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


def _summary(record: dict[str, Any]) -> dict[str, Any]:
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
@JSON_OPTION
def run(
    config_path: Path | None,
    store: Path | None,
    resume: str | None,
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
        if config_path or any(value is not None for value in flags.values()):
            raise click.UsageError("--resume takes the run's saved config: give only --store")
        root = store or Path(RunConfig().store)
        saved = RunLayout(root, resume).config
        if not saved.is_file():
            raise StoreError(f"{root}: no run {resume!r} to resume")
        config_path, flags["run_id"] = saved, resume
    overrides = {
        "store": str(store) if store else None,
        "data.path": flags["data"],
        "data.eval_path": flags["eval_data"],
        "data.id_column": flags["id_column"],
        "data.group_column": flags["group_column"],
        "data.prompt_column": flags["prompt_column"],
        "data.target_column": flags["target_column"],
        "run_id": flags["run_id"],
        "seed": flags["seed"],
        "rounds": flags["rounds"],
        "epochs": flags["epochs"],
        "policy.name": flags["policy"],
        "policy.floor": flags["floor"],
        "policy.delta": flags["delta"],
    }
    try:
        config = with_overrides(load_config(config_path), overrides).validate()
    except ConfigError as err:
        located = config_path and not str(err).startswith(str(config_path))
        raise ConfigError(f"{config_path}: {err}" if located else str(err)) from err
    get_policy(config.policy.name)
    from flows.inputs import prepare_inputs

    console = Console(stderr=as_json)
    with console.status("Preparing data"):
        inputs = prepare_inputs(config)
    config = replace(config, run_id=config.run_id or default_run_id(config, datetime.now(UTC)))
    layout = RunLayout(Path(config.store), config.run_id)
    existing = layout.run_record.exists()
    if existing and is_complete(layout):
        console.print(
            f"Run {config.run_id} is complete; its manifests are in {layout.manifest_dir}."
        )
        return
    if existing:
        check_resumable(layout, config, inputs.fingerprint)
    _prefect_defaults(Path(config.store))
    with run_lock(layout):
        _run_flow(config, inputs, console, as_json, resume=existing)


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
    from flows.stm_flow import StepReport, stm_flow

    table = EpochTable()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    where = "Prefect server" if os.environ.get("PREFECT_API_URL") else "local Prefect"
    bar = progress.add_task(f"starting ({where})", total=config.rounds * config.epochs)

    def report(step: StepReport) -> None:
        record = step.record
        if record["kind"] == "prune":
            progress.advance(bar)
        progress.update(bar, description=f"round {record['round']} epoch {record['epoch']}")
        table.add(record, step.seconds)

    _quiet_prefect_logs()
    with Live(Group(table, progress), console=console, refresh_per_second=4):
        result = stm_flow(config, inputs, report=report, resume=resume)
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
                    "manifests": [_summary(r) for r in result.manifests],
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


def _store_root(store: Path | None) -> Path:
    root = store or Path(RunConfig().store)
    if not root.is_dir():
        raise StoreError(f"{root}: store not found")
    return root


def _step_reasons(record: dict[str, Any]) -> str:
    by_reason = (record["step"] or {}).get("by_reason", {})
    return ", ".join(f"{reason} {count}" for reason, count in by_reason.items())


def _entry_row(entry: Entry) -> dict[str, Any]:
    record = entry.record
    step = record["step"] or {}
    return {
        "id": record["id"],
        "run": record["run"],
        "round": record["round"],
        "epoch": record["epoch"],
        "kind": record["kind"],
        "policy": record["policy"]["name"],
        "floor": record["policy"]["params"].get("floor"),
        "pool": record["pool"]["size"],
        "pool_by_group": record["pool"]["by_group"],
        "dropped": step.get("dropped", 0),
        "by_reason": step.get("by_reason", {}),
        "tokens_trained": record["tokens"]["trained"],
        "tokens_scored": record["tokens"]["scored"],
        "path": str(entry.path),
    }


def _entries_table(title: str, entries: list[Entry]) -> Table:
    runs = sorted({e.record["run"] for e in entries})
    if len(runs) == 1:
        title = f"{title}, run {runs[0]}"
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    columns = [
        "id",
        *(["run"] if len(runs) > 1 else []),
        "step",
        "kind",
        "floor",
        "pool",
        "dropped",
        "trained",
        "scored",
        "decisions by reason",
    ]
    for name in columns:
        left = name in ("id", "run", "kind", "decisions by reason")
        table.add_column(
            name, justify="left" if left else "right", no_wrap=name != "decisions by reason"
        )
    for entry in entries:
        row = _entry_row(entry)
        floor = row["floor"]
        table.add_row(
            row["id"][:10],
            *([row["run"]] if len(runs) > 1 else []),
            f"r{row['round']} e{row['epoch']}",
            row["kind"],
            "-" if floor is None else f"{floor:g}",
            f"{row['pool']:,}",
            str(row["dropped"]),
            f"{row['tokens_trained']:,}",
            f"{row['tokens_scored']:,}",
            _step_reasons(entry.record),
        )
    return table


@cli.group()
def manifests() -> None:
    """Audit the manifests of a store: list, show, lineage log, diff and verify.

    A manifest is named by its id, a unique prefix of it, RUN (its latest step) or
    RUN:ROUND:EPOCH.
    """


@manifests.command("list")
@STORE_OPTION
@click.option("--run", "run_id", help="Only this run.")
@click.option("--round", "round_index", type=int, help="Only this round.")
@click.option("--epoch", type=int, help="Only this epoch (0 is a round's reset).")
@JSON_OPTION
def manifests_list(
    store: Path | None,
    run_id: str | None,
    round_index: int | None,
    epoch: int | None,
    as_json: bool,
) -> None:
    """List manifests, oldest step first within each run."""
    catalog = Catalog.load(_store_root(store), [run_id] if run_id else None)
    entries = [
        e
        for e in catalog.entries
        if (round_index is None or e.step[0] == round_index)
        and (epoch is None or e.step[1] == epoch)
    ]
    if as_json:
        click.echo(json.dumps([_entry_row(e) for e in entries], indent=2))
        return
    Console().print(_entries_table(f"{len(entries)} manifests in {catalog.root}", entries))


@manifests.command("show")
@click.argument("ref")
@STORE_OPTION
@JSON_OPTION
def manifests_show(ref: str, store: Path | None, as_json: bool) -> None:
    """Show one manifest record in full."""
    entry = Catalog.load(_store_root(store)).find(ref)
    if as_json:
        click.echo(json.dumps(entry.record, indent=2, sort_keys=True))
        return
    record = entry.record
    console = Console()
    console.print(f"[bold]{record['id']}[/]  {entry.path}")
    console.print(
        f"run {record['run']}, round {record['round']}, epoch {record['epoch']} "
        f"({record['kind']}), parent {record['parent'] or '-'}"
    )
    console.print(f"policy {record['policy']['name']} {record['policy']['params']}")
    console.print(
        f"pool {record['pool']['size']:,} {record['pool']['by_group']} -> {record['pool']['path']}"
    )
    if record["step"]:
        step = record["step"]
        console.print(
            f"scored {step['scored']:,}, dropped {step['dropped']:,} "
            f"({_step_reasons(record)}); decisions -> {step['decisions']['path']}"
        )
    console.print(
        f"tokens trained {record['tokens']['trained']:,}, scored {record['tokens']['scored']:,}"
    )
    if record["scorer"]:
        console.print(f"scorer {record['scorer']['sha256'][:16]} -> {record['scorer']['path']}")
    console.print(
        f"dataset {record['dataset']['fingerprint'][:16]} "
        f"({record['dataset']['samples']:,} samples)"
    )
    if record.get("metrics", {}).get("accuracy"):
        console.print(f"held-out accuracy {record['metrics']['accuracy']}")
    if record.get("reproduce"):
        console.print(f"reproduce: {record['reproduce']}")


@manifests.command("log")
@click.argument("ref")
@STORE_OPTION
@JSON_OPTION
def manifests_log(ref: str, store: Path | None, as_json: bool) -> None:
    """The lineage of a run (or of any manifest): one line per step, from the first
    reset to REF, with pool size, dropped, reasons and tokens."""
    catalog = Catalog.load(_store_root(store))
    chain = catalog.chain(catalog.find(ref))
    if as_json:
        click.echo(json.dumps([_entry_row(e) for e in chain], indent=2))
        return
    Console().print(_entries_table(f"lineage of {chain[-1].id[:12]}", chain))


@manifests.command("diff")
@click.argument("a")
@click.argument("b")
@STORE_OPTION
@click.option(
    "--ids",
    type=click.Choice(["removed", "added"]),
    help="Print only the ids removed (in A, not B) or added, one per line.",
)
@click.option("--limit", default=20, show_default=True, help="Samples listed per side.")
@JSON_OPTION
def manifests_diff(
    a: str, b: str, store: Path | None, ids: str | None, limit: int, as_json: bool
) -> None:
    """Which samples are in pool A and not B (removed) and in B and not A (added), and
    for each when and why it left: step, policy, reason, loss, delta and floor at that
    moment, and whether it came back at a round reset. Works between any two manifests,
    across rounds and runs."""
    catalog = Catalog.load(_store_root(store))
    result = diff_manifests(catalog, catalog.find(a), catalog.find(b))
    if ids:
        frame = result.removed if ids == "removed" else result.added
        for sample_id in frame["sample_id"]:
            click.echo(sample_id)
        return
    sides = {"removed": result.removed, "added": result.added}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "a": result.a.id,
                    "b": result.b.id,
                    **{
                        name: {
                            "count": frame.height,
                            "by_group": diff_counts(frame, "group"),
                            "by_reason": diff_counts(frame, "reason"),
                            "returned_at_reset": int(frame["returned_round"].is_not_null().sum()),
                            "samples": frame.to_dicts(),
                        }
                        for name, frame in sides.items()
                    },
                },
                indent=2,
            )
        )
        return
    console = Console()
    console.print(
        f"A {result.a.id[:12]} ({result.a.record['run']} r{result.a.step[0]} "
        f"e{result.a.step[1]}, pool {result.a.record['pool']['size']:,})  "
        f"B {result.b.id[:12]} ({result.b.record['run']} r{result.b.step[0]} "
        f"e{result.b.step[1]}, pool {result.b.record['pool']['size']:,})"
    )
    for name, frame in sides.items():
        returned = int(frame["returned_round"].is_not_null().sum())
        console.print(
            f"{name}: {frame.height:,}  by group {diff_counts(frame, 'group')}  "
            f"by reason {diff_counts(frame, 'reason')}  came back at a reset "
            f"{returned:,}"
        )
        if frame.height:
            console.print(_diff_table(name, frame, limit))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _diff_table(name: str, frame: pl.DataFrame, limit: int) -> Table:
    """Samples of one side of a diff; the sample id is never truncated."""
    table = Table(
        title=f"{name} (first {min(limit, frame.height)} of {frame.height:,})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    columns = (
        "sample_id",
        "group",
        "left at",
        "reason",
        "loss",
        "loss_prev",
        "delta",
        "floor",
        "back at",
    )
    for column in columns:
        table.add_column(column, no_wrap=True, min_width=len(column))
    for row in frame.head(limit).iter_rows(named=True):
        left = "-" if row["round"] is None else f"r{row['round']} e{row['epoch']}"
        back = "-" if row["returned_round"] is None else f"r{row['returned_round']}"
        table.add_row(
            row["sample_id"],
            row["group"],
            left,
            row["reason"] or "never dropped",
            _number(row["loss"]),
            _number(row["loss_prev"]),
            _number(row["delta"]),
            _number(row["floor"]),
            back,
        )
    return table


@manifests.command("verify")
@click.argument("ref", required=False)
@STORE_OPTION
@click.option("--run", "run_id", help="Verify every manifest of this run.")
@click.option("--all", "verify_all", is_flag=True, help="Verify every manifest of the store.")
@JSON_OPTION
def manifests_verify(
    ref: str | None, store: Path | None, run_id: str | None, verify_all: bool, as_json: bool
) -> None:
    """Recompute every content hash from the files (manifest id, pool, scorer, scores,
    decisions) and check the lineage: parents exist, pools only shrink within a round,
    counts add up. Exits 1 naming each problem."""
    root = _store_root(store)
    if sum(bool(x) for x in (ref, run_id, verify_all)) != 1:
        raise click.UsageError("give exactly one of REF, --run RUN or --all")
    if verify_all:
        paths = manifest_paths(root)
    elif run_id:
        paths = manifest_paths(root, [run_id])
        if not paths:
            raise ManifestNotFound(f"{root}: no manifests for run {run_id!r}")
    else:
        paths = [_find_path(root, ref)]
    checked, problems = verify_store(root, paths)
    if as_json:
        click.echo(json.dumps({"checked": checked, "problems": problems}, indent=2))
    else:
        for problem in problems:
            click.echo(f"FAIL {problem}", err=True)
        if not problems:
            click.echo(f"OK: {checked} manifest(s) in {root} verified")
    if problems:
        raise SystemExit(1)


def _find_path(root: Path, ref: str) -> Path:
    """A manifest's path by the same references as elsewhere, without trusting the
    records (verify must reach a tampered one)."""
    for path in manifest_paths(root):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if str(record.get("id", "")).startswith(ref):
            return path
    return Catalog.load(root).find(ref).path


@cli.command("export")
@click.argument("ref")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="New directory for the shards.",
)
@STORE_OPTION
@click.option(
    "--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True
)
@click.option("--shards", type=click.IntRange(min=1), help="Number of shards.")
@click.option("--rows-per-shard", type=click.IntRange(min=1), help="Rows per shard.")
@JSON_OPTION
def export(
    ref: str,
    out: Path,
    store: Path | None,
    fmt: str,
    shards: int | None,
    rows_per_shard: int | None,
    as_json: bool,
) -> None:
    """Write a manifest's pool as shards any trainer can read: every original column,
    joined from the run's dataset by sample_id and streamed, plus _manifest.json and
    _SHA256SUMS. Loads with `datasets.load_dataset("parquet", data_files="OUT/*.parquet")` or
    `pyarrow.parquet.read_table(OUT)`."""
    if shards and rows_per_shard:
        raise click.UsageError("give --shards or --rows-per-shard, not both")
    root = _store_root(store)
    entry = Catalog.load(root).find(ref)
    layout = RunLayout(root, entry.record["run"])
    with Console(stderr=True).status(f"Exporting {entry.record['pool']['size']:,} samples"):
        summary = export_pool(layout, entry.record, out, fmt, shards, rows_per_shard)
    if as_json:
        click.echo(summary_json(summary))
    else:
        click.echo(
            f"Wrote {summary.rows:,} samples of manifest {entry.id[:12]} in "
            f"{len(summary.shards)} shard(s) to {summary.out}"
        )


def _data_config(data: str, id_column: str | None, group_column: str | None) -> DataConfig:
    return DataConfig(path=data, id_column=id_column, group_column=group_column)


DATA_OPTIONS = [
    click.option("--data", required=True, help="Dataset (same formats as `stm run --data`)."),
    click.option("--id-column", help="Column holding sample ids [default: content hash]."),
    click.option("--group-column", help="Column holding each sample's group."),
]


def _with_data_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(DATA_OPTIONS):
        command = option(command)
    return command


@cli.command("score")
@click.option(
    "--scorer",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="ONNX scorer meeting the scorer contract.",
)
@_with_data_options
@click.option("--pool", "pool_ref", help="Score only the pool of this manifest (needs --store).")
@click.option(
    "--prev",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Scores of the previous pass, for loss_prev and the deltas.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Parquet file to write the scores to.",
)
@click.option("--round", "round_index", default=0, show_default=True)
@click.option("--epoch", default=1, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--threads", default=2, show_default=True)
@STORE_OPTION
@JSON_OPTION
def score(
    scorer: Path,
    data: str,
    id_column: str | None,
    group_column: str | None,
    pool_ref: str | None,
    prev: Path | None,
    out: Path,
    round_index: int,
    epoch: int,
    batch_size: int,
    threads: int,
    store: Path | None,
    as_json: bool,
) -> None:
    """Score a dataset with your own ONNX scorer: one row per sample with loss,
    loss_prev, delta, rel_delta and n_tokens, streamed through onnxruntime."""
    pool_ids = None
    if pool_ref:
        entry = Catalog.load(_store_root(store)).find(pool_ref)
        pool_ids = pl.read_parquet(
            _store_root(store) / entry.record["pool"]["path"], columns=["sample_id"]
        )["sample_id"].to_arrow()
    with Console(stderr=True).status("Scoring"):
        summary = score_dataset(
            scorer,
            _data_config(data, id_column, group_column),
            out,
            prev,
            pool_ids,
            round_index,
            epoch,
            batch_size,
            threads,
        )
    result = {
        "out": str(out),
        "samples": summary.samples,
        "tokens_scored": summary.tokens_scored,
        "seconds": round(summary.seconds, 3),
    }
    click.echo(
        json.dumps(result, indent=2)
        if as_json
        else f"Scored {summary.samples:,} samples into {out} in {summary.seconds:.2f} s"
    )


@cli.command("prune")
@click.option(
    "--scores",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="Scores file (from `stm score`, or your own with at least sample_id and loss).",
)
@click.option("--policy", type=click.Choice(sorted(POLICIES)), default="stm", show_default=True)
@click.option(
    "--floor",
    type=float,
    default=PolicyConfig().floor,
    show_default=True,
    help="Mastery floor of this step (loss).",
)
@click.option(
    "--delta",
    type=float,
    default=PolicyConfig().delta,
    show_default=True,
    help="Loss drop that counts as sharp.",
)
@click.option(
    "--delta-mode",
    type=click.Choice(["absolute", "relative"]),
    default="absolute",
    show_default=True,
)
@click.option("--parent", "parent_ref", help="Manifest this step follows (its pool was scored).")
@click.option("--run", "run_id", help="Start a new run with this name (needs --data).")
@click.option("--data", help="Dataset of the new run.")
@click.option("--id-column", help="Column holding sample ids of the new run's dataset.")
@click.option("--group-column", help="Column holding groups of the new run's dataset.")
@click.option(
    "--scorer",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The scorer that produced the scores, kept and hashed in the record.",
)
@click.option(
    "--tokens-trained",
    default=0,
    show_default=True,
    help="Tokens your trainer trained on since the parent, for the accounting.",
)
@STORE_OPTION
@JSON_OPTION
def prune(
    scores: Path,
    policy: str,
    floor: float,
    delta: float,
    delta_mode: str,
    parent_ref: str | None,
    run_id: str | None,
    data: str | None,
    id_column: str | None,
    group_column: str | None,
    scorer: Path | None,
    tokens_trained: int,
    store: Path | None,
    as_json: bool,
) -> None:
    """Prune from a scores file and write the next manifest into the store, as the flow
    does: after --parent, or as epoch 1 of a new --run on --data (whose reset manifest
    is written first)."""
    if bool(parent_ref) == bool(run_id):
        raise click.UsageError("give --parent ID, or --run NAME with --data")
    if run_id and not data:
        raise click.UsageError("--run needs --data")
    root = store or Path(RunConfig().store)
    config = PolicyConfig(name=policy, delta=delta, delta_mode=delta_mode, floor=floor, tighten=1.0)
    new_run = (run_id, _data_config(data, id_column, group_column)) if run_id else None
    record = prune_scores(root, scores, config, parent_ref, new_run, scorer, tokens_trained)
    if as_json:
        click.echo(json.dumps(_summary(record), indent=2))
    else:
        click.echo(
            f"Manifest {record['id'][:12]} ({record['run']} r{record['round']} "
            f"e{record['epoch']}): pool {record['pool']['size']:,}, dropped "
            f"{record['step']['dropped']:,}"
        )


@cli.command("check-scorer")
@click.argument("model", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_with_data_options
@click.option("--rows", default=8, show_default=True, help="Samples of the trial runs.")
@JSON_OPTION
def check_scorer_command(
    model: Path,
    data: str,
    id_column: str | None,
    group_column: str | None,
    rows: int,
    as_json: bool,
) -> None:
    """Validate an ONNX scorer against a dataset: every input named after a column with a
    compatible type and rank, a dynamic batch size, an output `loss` float32 [batch], and
    finite, batch-independent losses on trial batches. Prints every problem, exits 1."""
    table = load_samples(_data_config(data, id_column, group_column), [])
    problems = check_scorer_table(model, table, data, rows)
    if as_json:
        click.echo(json.dumps({"scorer": str(model), "data": data, "problems": problems}, indent=2))
    else:
        for problem in problems:
            click.echo(f"FAIL {problem}", err=True)
        if not problems:
            click.echo(f"OK: {model} meets the scorer contract for {data}")
    if problems:
        raise SystemExit(1)


def main() -> None:
    cli()
