"""`stm score`, `stm prune` and `stm check-scorer`: the curation half on its own, for
users with their own training loop."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.catalog import Catalog
from pipeline.cli.app import (
    JSON_OPTION,
    STORE_OPTION,
    cli,
    data_config,
    progress,
    report_problems,
    store_root,
    with_data_options,
)
from pipeline.cli.run import manifest_summary
from pipeline.config import PolicyConfig, RunConfig, ScoringConfig
from pipeline.ingest import load_samples
from pipeline.policies import POLICIES
from pipeline.pruning import pool_ids
from pipeline.scorer_check import check_scorer_table
from pipeline.standalone import prune_scores, score_dataset
from pipeline.store import RunLayout


@cli.command("score")
@click.option(
    "--scorer",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="ONNX scorer meeting the scorer contract.",
)
@with_data_options
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
@click.option("--batch-size", default=ScoringConfig().batch_size, show_default=True)
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
    ids = None
    if pool_ref:
        entry = Catalog.load(store_root(store)).find(pool_ref)
        ids = pool_ids(RunLayout(store_root(store), entry.record["run"]), entry.record)
    with progress(f"Reading {data}"):
        samples = load_samples(data_config(data, id_column, group_column), [])
    total = len(ids) if ids is not None else samples.num_rows
    with progress("Scoring", total, "samples") as advance:
        summary = score_dataset(
            scorer,
            samples,
            out,
            prev,
            ids,
            round_index,
            epoch,
            batch_size,
            threads,
            on_progress=advance,
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
    new_run = (run_id, data_config(data, id_column, group_column)) if run_id else None
    with progress(f"Pruning {scores}"):
        record = prune_scores(root, scores, config, parent_ref, new_run, scorer, tokens_trained)
    if as_json:
        click.echo(json.dumps(manifest_summary(record), indent=2))
    else:
        click.echo(
            f"Manifest {record['id'][:12]} ({record['run']} r{record['round']} "
            f"e{record['epoch']}): pool {record['pool']['size']:,}, dropped "
            f"{record['step']['dropped']:,}"
        )


@cli.command("check-scorer")
@click.argument("model", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@with_data_options
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
    with progress(f"Reading {data}"):
        table = load_samples(data_config(data, id_column, group_column), [])
    with progress(f"Trying {model} on {rows} samples"):
        problems = check_scorer_table(model, table, data, rows)
    report_problems(
        {"scorer": str(model), "data": data},
        problems,
        f"OK: {model} meets the scorer contract for {data}",
        as_json,
    )
