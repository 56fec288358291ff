"""`stm manifests ...` and `stm export`: audit a store's manifests and hand a pool to any
trainer as shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import polars as pl
from rich import box
from rich.console import Console
from rich.table import Table

from pipeline.catalog import Catalog, Entry
from pipeline.cli.app import (
    JSON_OPTION,
    STORE_OPTION,
    cli,
    progress,
    report_problems,
    store_root,
)
from pipeline.diff import counts as diff_counts
from pipeline.diff import diff_manifests
from pipeline.errors import (
    ManifestNotFound,
)
from pipeline.shards import export_pool, summary_json
from pipeline.store import RunLayout
from pipeline.verify import manifest_paths, verify_store


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
    catalog = Catalog.load(store_root(store), [run_id] if run_id else None)
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
    entry = Catalog.load(store_root(store)).find(ref)
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
    catalog = Catalog.load(store_root(store))
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
    with progress(f"Comparing the pools of {a} and {b}"):
        catalog = Catalog.load(store_root(store))
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
    root = store_root(store)
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
    with progress(
        f"Verifying {len(paths)} manifest(s): hashes, then lineage", 2 * len(paths), "checks"
    ) as advance:
        checked, problems = verify_store(root, paths, on_progress=advance)
    report_problems(
        {"checked": checked}, problems, f"OK: {checked} manifest(s) in {root} verified", as_json
    )


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
    root = store_root(store)
    entry = Catalog.load(root).find(ref)
    layout = RunLayout(root, entry.record["run"])
    size = entry.record["pool"]["size"]
    with progress(f"Exporting manifest {entry.id[:12]}", size, "samples") as advance:
        summary = export_pool(layout, entry.record, out, fmt, shards, rows_per_shard, advance)
    if as_json:
        click.echo(summary_json(summary))
    else:
        click.echo(
            f"Wrote {summary.rows:,} samples of manifest {entry.id[:12]} in "
            f"{len(summary.shards)} shard(s) to {summary.out}"
        )
