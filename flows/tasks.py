"""Prefect tasks: a few lines each, calling the plain functions of `pipeline` and
`models`. Caching is off: inputs are Arrow tables and paths whose content changes under
the same name between epochs, and every step already writes its own durable output."""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from flows.inputs import prepare_inputs
from models.charset import Vocabulary
from models.evaluate import evaluate, seen_sample
from models.export import export_scorer
from models.trainer import TrainStats, train_epoch
from pipeline import sharding
from pipeline.config import RunConfig
from pipeline.errors import STORAGE_ERRNOS, PipelineError
from pipeline.external_trainer import ExternalTrainStats, train_external_epoch
from pipeline.pruning import StepInputs, pool_ids, prune_step, reset_pool, training_set
from pipeline.resume import (
    ResumePoint,
    check_resumable,
    restore_trainer,
    resume_point,
    snapshot_trainer,
)
from pipeline.runs import RunInputs, create_run, mark_complete
from pipeline.scorer_check import check_scorer, raise_if_invalid
from pipeline.scoring import ScoreSummary, score_pool
from pipeline.sharding import ShardResult, record_sharded_step, split_pool
from pipeline.store import RunLayout, read_samples_subset, sha256_file, temporary_sibling

TRAIN_COLUMNS = ["sample_id", "tokens", "loss_mask", "n_tokens"]

# A full or read-only disk, or a missing file, fails the same way on every try.
PERMANENT_ERRNOS = STORAGE_ERRNOS | {errno.ENOENT}


def transient_io(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry only what may pass on a second try: an I/O hiccup (a network file system, the
    Prefect API). A pipeline error (bad data, bad scorer, changed config) is final."""
    try:
        state.result()
    except PipelineError:
        return False
    except OSError as err:
        return err.errno not in PERMANENT_ERRNOS
    except Exception:
        return False
    return False


# No task has tags: Prefect checks tag concurrency limits on the API for every tagged task
# run, which stalled each one by about 2 s here (46 s -> 124 s for configs/tiny.toml).
# Only the steps that read or write files (or talk to the API) retry; a failed training
# or scoring pass would fail again the same way. Every step's writes are atomic and
# idempotent, so a retried step leaves the store as one clean try would.
IO = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": transient_io}


@dataclass(frozen=True)
class RunContext:
    """What every epoch's tasks need to find the run's files and settings."""

    config: RunConfig
    layout: RunLayout
    fingerprint: str
    vocabulary: Vocabulary | None  # the built-in model's; None with an external trainer
    has_eval: bool


def shuffle_seed(seed: int, round_index: int, epoch: int) -> int:
    """A distinct, reproducible shuffle per (seed, round, epoch)."""
    return int(np.random.SeedSequence([seed, round_index, epoch]).generate_state(1)[0])


@task(name="prepare", cache_policy=NO_CACHE, **IO)
def prepare_run(config: RunConfig, inputs: RunInputs | None) -> RunContext:
    inputs = inputs or prepare_inputs(config)
    layout = create_run(config, inputs)
    vocabulary = None
    if inputs.vocabulary_json is not None:
        vocabulary = Vocabulary.from_json(inputs.vocabulary_json)
    return RunContext(
        config, layout, inputs.fingerprint, vocabulary, inputs.eval_samples is not None
    )


@task(name="open-run", cache_policy=NO_CACHE, **IO)
def open_run(config: RunConfig, inputs: RunInputs | None) -> RunContext:
    """An existing run to continue, refused if its config or data changed since."""
    inputs = inputs or prepare_inputs(config)
    layout = RunLayout(Path(config.store), config.run_id or "")
    check_resumable(layout, config, inputs.fingerprint)
    vocabulary = None
    if layout.vocabulary.exists():
        vocabulary = Vocabulary.from_json(layout.vocabulary.read_text())
    return RunContext(config, layout, inputs.fingerprint, vocabulary, layout.eval_samples.exists())


@task(name="restore-trainer", cache_policy=NO_CACHE, **IO)
def restore(ctx: RunContext) -> ResumePoint:
    point = resume_point(ctx.layout)
    restore_trainer(ctx.layout, point.last)
    return point


@task(
    name="snapshot-trainer",
    task_run_name="snapshot r{round_index} e{epoch}",
    cache_policy=NO_CACHE,
    **IO,
)
def snapshot(ctx: RunContext, round_index: int, epoch: int) -> None:
    snapshot_trainer(ctx.layout, round_index, epoch)


@task(name="finish", task_run_name="finish", cache_policy=NO_CACHE, **IO)
def finish(ctx: RunContext, final: dict[str, Any]) -> None:
    mark_complete(ctx.layout, final)


@task(
    name="reset-pool",
    task_run_name="reset r{round_index}",
    cache_policy=NO_CACHE,
    **IO,
)
def reset(ctx: RunContext, round_index: int, parent: dict[str, Any] | None) -> dict[str, Any]:
    return reset_pool(ctx.layout, round_index, parent, ctx.config.policy, ctx.fingerprint)


@task(
    name="train",
    task_run_name="train r{round_index} e{epoch}",
    cache_policy=NO_CACHE,
)
def train(ctx: RunContext, parent: dict[str, Any], round_index: int, epoch: int) -> TrainStats:
    ids, weights = training_set(ctx.layout, parent)
    pool = read_samples_subset(ctx.layout.samples, ids, TRAIN_COLUMNS)
    if weights is not None:  # in the pool's row order, which fixes the shuffle
        pool = (
            pl.from_arrow(pool)
            .join(weights, on="sample_id", how="left", maintain_order="left")
            .to_arrow()
        )
    config = ctx.config
    return train_epoch(
        pool,
        ctx.layout.trainer_dir,
        ctx.vocabulary.size,
        config.model,
        config.train,
        seed=config.seed,
        shuffle_seed=shuffle_seed(config.seed, round_index, epoch),
    )


@task(
    name="train-external",
    task_run_name="train (external) r{round_index} e{epoch}",
    cache_policy=NO_CACHE,
)
def train_external(
    ctx: RunContext, parent: dict[str, Any], round_index: int, epoch: int
) -> ExternalTrainStats:
    config = ctx.config
    return train_external_epoch(
        config.trainer, ctx.layout, parent, round_index, epoch, seed=config.seed
    )


@task(
    name="check-scorer",
    task_run_name="check scorer r{round_index} e{epoch}",
    cache_policy=NO_CACHE,
)
def checked_scorer(ctx: RunContext, round_index: int, epoch: int) -> tuple[Path, str, float]:
    """A scorer written by someone else, checked against the contract before it scores
    anything: its path, sha256 and the seconds the check took."""
    started = time.perf_counter()
    path = ctx.layout.scorer(round_index, epoch)
    problems = check_scorer(path, ctx.layout.samples)
    if problems:
        path.unlink(missing_ok=True)  # nothing of a refused epoch stays in the store
    raise_if_invalid(problems)
    return path, sha256_file(path), time.perf_counter() - started


@task(
    name="export-scorer",
    task_run_name="export scorer r{round_index} e{epoch}",
    cache_policy=NO_CACHE,
)
def export(ctx: RunContext, round_index: int, epoch: int) -> tuple[Path, str, float]:
    started = time.perf_counter()
    path = ctx.layout.scorer(round_index, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = export_scorer(ctx.layout.trainer_dir, path)
    return path, digest, time.perf_counter() - started


@task(name="evaluate", task_run_name="evaluate", cache_policy=NO_CACHE)
def held_out_accuracy(ctx: RunContext) -> tuple[dict[str, float], dict[str, float], float]:
    """Accuracy per group on the held-out set, and on a fixed sample of the training set
    (`seen_sample`: the same samples every epoch and for every policy of a seed)."""
    if not ctx.has_eval:
        return {}, {}, 0.0
    started = time.perf_counter()
    data = ctx.config.data

    def accuracy(table: pa.Table) -> dict[str, float]:
        return evaluate(
            ctx.layout.trainer_dir, table, ctx.vocabulary, data.prompt_column, data.target_column
        )

    held_out = accuracy(pq.read_table(ctx.layout.eval_samples))
    seen = accuracy(seen_sample(ctx.layout.samples, data.prompt_column, data.target_column))
    return held_out, seen, time.perf_counter() - started


@task(
    name="score",
    task_run_name="score r{round_index} e{epoch}",
    cache_policy=NO_CACHE,
)
def score(
    ctx: RunContext, scorer: Path, parent: dict[str, Any], round_index: int, epoch: int
) -> tuple[Path, ScoreSummary]:
    final = ctx.layout.scores(round_index, epoch)
    raw = temporary_sibling(final)
    summary = score_pool(
        scorer,
        ctx.layout.samples,
        pool_ids(ctx.layout, parent),
        raw,
        ctx.config.scoring.batch_size,
        ctx.config.scoring.threads,
    )
    return raw, summary


@task(
    name="prune",
    task_run_name="prune r{step.round_index} e{step.epoch}",
    cache_policy=NO_CACHE,
    **IO,
)
def prune(ctx: RunContext, parent: dict[str, Any], step: StepInputs) -> dict[str, Any]:
    return prune_step(ctx.layout, parent, step, ctx.config.policy)


@task(name="shard-pool", task_run_name="shard pool r{round_index} e{epoch}", cache_policy=NO_CACHE)
def shard_pool(
    ctx: RunContext, parent: dict[str, Any], round_index: int, epoch: int
) -> list[pa.Array]:
    config = ctx.config
    return split_pool(
        ctx.layout.samples,
        pool_ids(ctx.layout, parent),
        config.scale.shard_count(),
        config.scoring.batch_size,
    )


@task(
    name="score-shard",
    task_run_name="score r{round_index} e{epoch} shard {shard}",
    cache_policy=NO_CACHE,
)
def score_shard(
    ctx: RunContext, scorer: Path, ids: pa.Array, shard: int, round_index: int, epoch: int
) -> ShardResult:
    """Runs where the task runner puts it (a Dask worker): it opens its own scorer session
    and reads and writes only through the store."""
    config = ctx.config
    return sharding.score_shard(
        ctx.layout,
        scorer,
        ids,
        shard,
        round_index,
        epoch,
        config.policy,
        config.scoring.batch_size,
        config.scoring.threads,
    )


@task(
    name="merge-shards",
    task_run_name="merge shards r{step.round_index} e{step.epoch}",
    cache_policy=NO_CACHE,
    **IO,
)
def merge_shards(
    ctx: RunContext, parent: dict[str, Any], results: list[ShardResult], step: StepInputs
) -> dict[str, Any]:
    return record_sharded_step(ctx.layout, parent, results, step, ctx.config.policy)
