"""`stm manifests ...` and `stm export`: audit a store's manifests, list the samples the
noise guard quarantined for review, and hand a pool to any trainer as shards."""

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
from pipeline.diff import Diff, diff_manifests
from pipeline.diff import counts as diff_counts
from pipeline.errors import (
    ManifestNotFound,
)
from pipeline.label_noise import SUSPECT_LABEL
from pipeline.review import Review, ReviewFormat, check_review_target, read_review, write_review
from pipeline.shards import export_pool, summary_json
from pipeline.store import RunLayout
from pipeline.verify import manifest_paths, verify_store

# The title of the quarantined samples in a diff: apart from those the policy removed.
QUARANTINED = f"quarantined ({SUSPECT_LABEL})"


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
    """Audit the manifests of a store: list, show, lineage log, diff, verify, and review
    the samples the noise guard quarantined.

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
    type=click.Choice(["removed", "added", "quarantined"]),
    help="Print only the ids removed (in A, not B), added, or quarantined, one per line.",
)
@click.option("--limit", default=20, show_default=True, help="Samples listed per side.")
@JSON_OPTION
def manifests_diff(
    a: str, b: str, store: Path | None, ids: str | None, limit: int, as_json: bool
) -> None:
    """Which samples are in pool A and not B (removed) and in B and not A (added), and
    for each when and why it left: step, policy, reason, loss, delta and floor at that
    moment, and whether it came back at a round reset. Samples the noise guard
    quarantined (reason suspect-label) are listed apart, on either side, for review.
    Works between any two manifests, across rounds and runs."""
    with progress(f"Comparing the pools of {a} and {b}"):
        catalog = Catalog.load(store_root(store))
        result = diff_manifests(catalog, catalog.find(a), catalog.find(b))
    sides = {"removed": result.removed, "added": result.added}
    if ids:
        for sample_id in {**sides, "quarantined": result.quarantined}[ids]["sample_id"]:
            click.echo(sample_id)
        return
    if as_json:
        click.echo(json.dumps(_diff_json(result), indent=2))
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
    quarantined = result.quarantined
    if quarantined.height:
        console.print(
            f"{QUARANTINED}: {quarantined.height:,}  by group "
            f"{diff_counts(quarantined, 'group')}  by side {diff_counts(quarantined, 'side')}  "
            f"came back at a reset {int(quarantined['returned_round'].is_not_null().sum()):,}"
        )
        console.print(_diff_table(QUARANTINED, quarantined, limit))


def _diff_json(result: Diff) -> dict[str, Any]:
    """`removed` and `added` as they always were, and `quarantined` (present, with count
    0, when there are none) with its counts by side instead of by reason."""

    def side(frame: pl.DataFrame, by: str) -> dict[str, Any]:
        return {
            "count": frame.height,
            "by_group": diff_counts(frame, "group"),
            f"by_{by}": diff_counts(frame, by),
            "returned_at_reset": int(frame["returned_round"].is_not_null().sum()),
            "samples": frame.to_dicts(),
        }

    return {
        "a": result.a.id,
        "b": result.b.id,
        "removed": side(result.removed, "reason"),
        "added": side(result.added, "reason"),
        "quarantined": side(result.quarantined, "side"),
    }


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _diff_table(name: str, frame: pl.DataFrame, limit: int) -> Table:
    """Samples of one side of a diff, or the quarantined ones with their side instead of
    a reason and floor (always suspect-label, and no floor let them go); the sample id is
    never truncated."""
    table = Table(
        title=f"{name} (first {min(limit, frame.height)} of {frame.height:,})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    quarantined = "side" in frame.columns
    step = ("side", "quarantined at") if quarantined else ("left at", "reason")
    floor = () if quarantined else ("floor",)
    for column in ("sample_id", "group", *step, "loss", "loss_prev", "delta", *floor, "back at"):
        table.add_column(column, no_wrap=True, min_width=len(column))
    for row in frame.head(limit).iter_rows(named=True):
        left = "-" if row["round"] is None else f"r{row['round']} e{row['epoch']}"
        back = "-" if row["returned_round"] is None else f"r{row['returned_round']}"
        table.add_row(
            row["sample_id"],
            row["group"],
            *((row["side"], left) if quarantined else (left, row["reason"] or "never dropped")),
            _number(row["loss"]),
            _number(row["loss_prev"]),
            _number(row["delta"]),
            *(() if quarantined else (_number(row["floor"]),)),
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


def _review_path(_ctx: click.Context, _param: click.Parameter, path: Path | None) -> Path | None:
    if path is not None and path.suffix not in (".parquet", ".jsonl"):
        raise click.BadParameter(f"{path}: must end in .parquet or .jsonl")
    return path


def _review_format(path: Path) -> ReviewFormat:
    return "jsonl" if path.suffix == ".jsonl" else "parquet"


def _review_json(review: Review, path: Path | None) -> dict[str, Any]:
    return {
        "manifest": review.manifest,
        "run": review.run,
        "round": review.round_index,
        "epoch": review.epoch,
        "count": review.rows.height,
        "by_epoch": review.by_epoch,
        "by_group": review.by_group,
        "out": None if path is None else str(path),
        "format": None if path is None else _review_format(path),
    }


def _review_written(review: Review, path: Path) -> str:
    where = (
        f"round {review.round_index} up to epoch {review.epoch} (manifest {review.manifest[:12]})"
    )
    count = review.rows.height
    if not count:
        return f"No sample was quarantined ({SUSPECT_LABEL}) in {where}: wrote an empty {path}"
    samples = "1 sample" if count == 1 else f"{count:,} samples"
    return f"Wrote {samples} quarantined ({SUSPECT_LABEL}) in {where} to {path}, for review"


@manifests.command("review")
@click.argument("ref")
@STORE_OPTION
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_review_path,
    help="Write the list, with the dataset's columns, to this new .parquet or .jsonl file.",
)
@click.option("--limit", default=20, show_default=True, help="Samples listed on the terminal.")
@JSON_OPTION
def manifests_review(
    ref: str, store: Path | None, out: Path | None, limit: int, as_json: bool
) -> None:
    """The samples the noise guard quarantined (reason suspect-label) in REF's round up to
    REF: the step that set each aside, its loss then and its running diagnostics (passes,
    mean and lowest loss in the round). With --out, every row with the dataset's own
    columns, so that a reviewer sees the label; --json prints the counts (and, without
    --out, the samples)."""
    catalog = Catalog.load(store_root(store))
    review = read_review(catalog, catalog.find(ref))
    if out is not None:
        write_review(catalog.root, review, out, _review_format(out))
    if as_json:
        payload = _review_json(review, out)
        if out is None:
            payload["samples"] = review.rows.to_dicts()
        click.echo(json.dumps(payload, indent=2))
        return
    if out is not None:
        click.echo(_review_written(review, out))
        return
    console = Console()
    console.print(
        f"{QUARANTINED} in round {review.round_index} up to epoch {review.epoch} of run "
        f"{review.run} ({review.manifest[:12]}): {review.rows.height:,}  by epoch "
        f"{review.by_epoch}  by group {review.by_group}"
    )
    if review.rows.height:
        console.print(_review_table(review.rows, limit))


def _review_table(rows: pl.DataFrame, limit: int) -> Table:
    table = Table(
        title=f"first {min(limit, rows.height)} of {rows.height:,}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    columns = ("sample_id", "group", "at", "loss", "mean_loss", "min_loss", "passes")
    for column in columns:
        table.add_column(column, no_wrap=True, min_width=len(column))
    for row in rows.head(limit).iter_rows(named=True):
        table.add_row(
            row["sample_id"],
            row["group"],
            f"r{row['round']} e{row['epoch']}",
            _number(row["loss"]),
            _number(row["mean_loss"]),
            _number(row["min_loss"]),
            "-" if row["passes"] is None else str(row["passes"]),
        )
    return table


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
@click.option(
    "--review",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_review_path,
    help="Also write the samples quarantined as suspect-label in the manifest's round, "
    "with the dataset's columns, to this new .parquet or .jsonl file (outside --out).",
)
@JSON_OPTION
def export(
    ref: str,
    out: Path,
    store: Path | None,
    fmt: str,
    shards: int | None,
    rows_per_shard: int | None,
    review: Path | None,
    as_json: bool,
) -> None:
    """Write a manifest's pool as shards any trainer can read: every original column,
    joined from the run's dataset by sample_id and streamed, plus _manifest.json and
    _SHA256SUMS. Loads with `datasets.load_dataset("parquet", data_files="OUT/*.parquet")` or
    `pyarrow.parquet.read_table(OUT)`. With --review, the samples the noise guard
    quarantined are written apart, for a person to check, never into the shards."""
    if shards and rows_per_shard:
        raise click.UsageError("give --shards or --rows-per-shard, not both")
    root = store_root(store)
    catalog = Catalog.load(root)
    entry = catalog.find(ref)
    quarantine = None
    if review is not None:
        check_review_target(review, out)
        quarantine = read_review(catalog, entry)
    layout = RunLayout(root, entry.record["run"])
    size = entry.record["pool"]["size"]
    with progress(f"Exporting manifest {entry.id[:12]}", size, "samples") as advance:
        summary = export_pool(layout, entry.record, out, fmt, shards, rows_per_shard, advance)
    if quarantine is not None:
        write_review(root, quarantine, review, _review_format(review), out)
    if as_json:
        payload = json.loads(summary_json(summary))
        if quarantine is not None:
            payload["review"] = _review_json(quarantine, review)
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(
        f"Wrote {summary.rows:,} samples of manifest {entry.id[:12]} in "
        f"{len(summary.shards)} shard(s) to {summary.out}"
    )
    if quarantine is not None:
        click.echo(_review_written(quarantine, review))
