"""The curation half on its own, for users with their own training loop: score a dataset
with their ONNX scorer into a loss-delta file, and prune from such a file into a store,
writing manifests exactly as the flow does."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.catalog import Catalog
from pipeline.config import DataConfig, PolicyConfig, RunConfig
from pipeline.deltas import SCORE_SCHEMA, with_running_diagnostics
from pipeline.errors import DatasetError, ManifestIntegrityError
from pipeline.ingest import dataset_fingerprint, load_samples
from pipeline.pruning import StepInputs, record_pruning, reset_pool, write_scores
from pipeline.runs import RunInputs, create_run
from pipeline.scoring import ScoreSummary, score_pool
from pipeline.store import RunLayout, atomic_path, sha256_file, write_bytes_atomic


def score_dataset(
    scorer: Path,
    samples: pa.Table,
    out: Path,
    previous: Path | None,
    pool_ids: pa.Array | None,
    round_index: int,
    epoch: int,
    batch_size: int,
    threads: int,
    on_progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score an ingested table (or the samples of it in `pool_ids`) and write the score
    columns, with `loss_prev` from the `previous` scores file when given; `on_progress`
    is told how many samples each batch scored."""
    ids = pool_ids if pool_ids is not None else samples.column("sample_id")
    with tempfile.TemporaryDirectory(prefix="stm-score-") as workdir:
        table_path, raw = Path(workdir) / "samples.parquet", Path(workdir) / "raw.parquet"
        pq.write_table(samples, table_path)
        summary = score_pool(scorer, table_path, ids, raw, batch_size, threads, on_progress)
        prior = read_scores(previous).lazy() if previous else None
        write_scores(raw, prior, round_index, epoch, out)
    return summary


def read_scores(path: Path) -> pl.DataFrame:
    """A scores file, checked for the columns pruning needs."""
    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise DatasetError(f"{path}: not a readable Parquet scores file: {err}") from err
    for name in ("sample_id", "loss"):
        if name not in frame.columns:
            raise DatasetError(f"{path}: column '{name}' missing from the scores file")
    return frame


def _conform(frame: pl.DataFrame, round_index: int, epoch: int, path: Path) -> pl.DataFrame:
    """The score columns with the step's round and epoch; delta columns are taken as
    given when present, else computed as null (a baseline pass)."""
    missing = [c for c in ("loss_prev", "delta", "rel_delta") if c not in frame.columns]
    if missing and len(missing) < 3:
        raise DatasetError(f"{path}: column '{missing[0]}' missing beside the other deltas")
    if missing:
        frame = frame.with_columns(
            loss_prev=pl.lit(None, pl.Float32),
            delta=pl.lit(None, pl.Float32),
            rel_delta=pl.lit(None, pl.Float32),
        )
    if "n_tokens" not in frame.columns:
        frame = frame.with_columns(n_tokens=pl.lit(1, pl.Int64))
    frame = with_running_diagnostics(frame.lazy(), str(path)).collect()
    return frame.with_columns(
        round=pl.lit(round_index, pl.Int32), epoch=pl.lit(epoch, pl.Int32)
    ).select([pl.col(name).cast(dtype) for name, dtype in SCORE_SCHEMA.items()])


def _new_run(
    root: Path, run_id: str, data: DataConfig, policy: PolicyConfig
) -> tuple[RunLayout, dict[str, Any]]:
    samples = load_samples(data, [])
    config = RunConfig(store=str(root), run_id=run_id, data=data, policy=policy)
    inputs = RunInputs(samples, None, dataset_fingerprint(samples), None)
    layout = create_run(config, inputs)
    return layout, reset_pool(layout, 0, None, policy, inputs.fingerprint)


def prune_scores(
    root: Path,
    scores: Path,
    policy: PolicyConfig,
    parent_ref: str | None,
    new_run: tuple[str, DataConfig] | None,
    scorer: Path | None,
    tokens_trained: int,
) -> dict[str, Any]:
    """Write the manifest that follows `parent_ref` (or a new run's reset) from `scores`."""
    if parent_ref is not None:
        entry = Catalog.load(root).find(parent_ref)
        layout, parent = RunLayout(root, entry.record["run"]), entry.record
    elif new_run is not None:
        layout, parent = _new_run(root, new_run[0], new_run[1], policy)
    else:
        raise DatasetError("prune needs --parent ID, or --run NAME with --data DATA")
    round_index, epoch = parent["round"], parent["epoch"] + 1
    if layout.manifest(round_index, epoch).exists():
        raise ManifestIntegrityError(
            f"{layout.manifest(round_index, epoch)}: manifest {parent['id'][:12]} already has "
            "a next step; prune only after a run's latest manifest"
        )
    frame = _conform(read_scores(scores), round_index, epoch, scores)
    scores_path = layout.scores(round_index, epoch)
    with atomic_path(scores_path) as tmp:
        frame.sort("sample_id").write_parquet(tmp)
    kept_scorer, scorer_sha256 = None, None
    if scorer is not None:
        kept_scorer = layout.scorer(round_index, epoch)
        write_bytes_atomic(kept_scorer, scorer.read_bytes())
        scorer_sha256 = sha256_file(kept_scorer)
    step = StepInputs(
        round_index,
        epoch,
        scores_path,
        kept_scorer,
        scorer_sha256,
        tokens_trained,
        int(frame["n_tokens"].sum()),
        {},
    )
    return record_pruning(layout, parent, scores_path, step, policy)
