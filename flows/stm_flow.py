"""The STM curation flow: per epoch train -> export ONNX -> evaluate -> score -> prune ->
manifest, round after round, each round resetting the pool with a tighter mastery floor.
With an external trainer, its command trains and exports, and its scorer is checked
before scoring. It only composes tasks; every step is a plain function tested without
Prefect."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import Flow, flow

from flows import artifacts, tasks
from pipeline.config import RunConfig
from pipeline.pruning import StepInputs
from pipeline.resume import ResumePoint
from pipeline.runs import RunInputs
from pipeline.scoring import ScoreSummary
from pipeline.sharding import merged_summary
from pipeline.store import RunLayout


@dataclass(frozen=True)
class StepReport:
    """A finished step, for progress displays: its manifest and where the time went."""

    record: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    layout: RunLayout
    manifests: list[dict[str, Any]]


Reporter = Callable[[StepReport], None]


@dataclass(frozen=True)
class TrainedScorer:
    """What a training stage hands to scoring: the scorer, its hash, the tokens trained
    and the stage's metrics and seconds for the manifest."""

    scorer: Path
    scorer_sha256: str
    tokens_trained: int
    metrics: dict[str, Any]
    seconds: dict[str, float]


def builtin_training(
    ctx: tasks.RunContext, parent: dict[str, Any], round_index: int, epoch: int
) -> TrainedScorer:
    trained = tasks.train(ctx, parent, round_index, epoch)
    scorer, scorer_sha256, export_seconds = tasks.export(ctx, round_index, epoch)
    accuracy, seen, evaluate_seconds = tasks.held_out_accuracy(ctx)
    return TrainedScorer(
        scorer,
        scorer_sha256,
        trained.tokens_trained,
        {"accuracy": accuracy, "accuracy_seen": seen, "train_loss": trained.mean_loss},
        {"train": trained.seconds, "export": export_seconds, "evaluate": evaluate_seconds},
    )


def external_training(
    ctx: tasks.RunContext, parent: dict[str, Any], round_index: int, epoch: int
) -> TrainedScorer:
    trained = tasks.train_external(ctx, parent, round_index, epoch)
    scorer, scorer_sha256, check_seconds = tasks.checked_scorer(ctx, round_index, epoch)
    return TrainedScorer(
        scorer,
        scorer_sha256,
        trained.tokens_trained,
        {"train_loss": trained.mean_loss, "trainer": trained.metrics},
        {"train": trained.seconds, "check": check_seconds},
    )


def run_epoch(
    ctx: tasks.RunContext, parent: dict[str, Any], round_index: int, epoch: int
) -> StepReport:
    started = time.perf_counter()
    training = external_training if ctx.config.trainer.command else builtin_training
    trained = training(ctx, parent, round_index, epoch)
    tasks.snapshot(ctx, round_index, epoch)
    if ctx.config.scale.engine == "dask":
        record, seconds = score_and_prune_in_shards(ctx, trained, parent, round_index, epoch)
    else:
        record, seconds = score_and_prune(ctx, trained, parent, round_index, epoch)
    return StepReport(record, {**seconds, "epoch": time.perf_counter() - started})


def _step_inputs(
    trained: TrainedScorer,
    round_index: int,
    epoch: int,
    scores: Path,
    scored: ScoreSummary,
    seconds: dict[str, float],
) -> StepInputs:
    return StepInputs(
        round_index=round_index,
        epoch=epoch,
        raw_scores=scores,
        scorer=trained.scorer,
        scorer_sha256=trained.scorer_sha256,
        tokens_trained=trained.tokens_trained,
        tokens_scored=scored.tokens_scored,
        metrics={**trained.metrics, "seconds": seconds},
    )


def score_and_prune(
    ctx: tasks.RunContext,
    trained: TrainedScorer,
    parent: dict[str, Any],
    round_index: int,
    epoch: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Score the whole pool in this process, then prune: the local engine."""
    raw_scores, scored = tasks.score(ctx, trained.scorer, parent, round_index, epoch)
    seconds = {**trained.seconds, "score": scored.seconds}
    step = _step_inputs(trained, round_index, epoch, raw_scores, scored, seconds)
    return tasks.prune(ctx, parent, step), seconds


def score_and_prune_in_shards(
    ctx: tasks.RunContext,
    trained: TrainedScorer,
    parent: dict[str, Any],
    round_index: int,
    epoch: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The Dask engine: each shard of the pool is scored and decided by a task submitted
    to the flow's task runner (a Dask cluster, see `flow_for`), then the shards are merged
    here into the same scores, decisions, pool and manifest as `score_and_prune` writes.
    `score` is the wall time of the shards, submission and waiting included."""
    started = time.perf_counter()
    pieces = tasks.shard_pool(ctx, parent, round_index, epoch)
    futures = [
        tasks.score_shard.submit(ctx, trained.scorer, ids, shard, round_index, epoch)
        for shard, ids in enumerate(pieces)
    ]
    results = [future.result() for future in futures]
    scored = merged_summary([r.summary for r in results])
    seconds = {**trained.seconds, "score": time.perf_counter() - started}
    step = _step_inputs(
        trained, round_index, epoch, ctx.layout.scores(round_index, epoch), scored, seconds
    )
    return tasks.merge_shards(ctx, parent, results, step), seconds


def flow_for(config: RunConfig) -> Flow:
    """The flow with the task runner `config.scale` asks for: with the Dask engine, a
    cluster at `dask_address`, or a local one started with the run and closed after it.
    Only the shard tasks are submitted to it; every other task runs in this process."""
    scale = config.scale
    if scale.engine != "dask":
        return stm_flow
    # Imported here: Dask's import costs a second that local runs need not pay.
    from prefect_dask import DaskTaskRunner

    if scale.dask_address:
        runner = DaskTaskRunner(address=scale.dask_address)
    else:
        runner = DaskTaskRunner(
            cluster_kwargs={
                "n_workers": scale.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    return stm_flow.with_options(task_runner=runner)


# What a caller in this process hands the flow outside its parameters (`run_flow`):
# Prefect serialises a flow run's parameters into the context of every task it submits
# to Dask, and neither the whole sample table nor a progress callback that holds the
# terminal's locks (which cannot be pickled at all) should travel with each shard.
_HANDED: ContextVar[tuple[RunInputs | None, Reporter | None]] = ContextVar(
    "stm_handed", default=(None, None)
)


def run_flow(
    config: RunConfig,
    inputs: RunInputs | None = None,
    report: Reporter | None = None,
    resume: bool = False,
) -> RunResult:
    """Run the flow `config.scale` asks for (`flow_for`), with data prepared beforehand
    and a progress callback handed to it in-process, not as flow parameters."""
    token = _HANDED.set((inputs, report))
    try:
        return flow_for(config)(config, resume=resume)
    finally:
        _HANDED.reset(token)


@flow(name="stm-curation", validate_parameters=False)
def stm_flow(
    config: RunConfig,
    inputs: RunInputs | None = None,
    report: Reporter | None = None,
    resume: bool = False,
) -> RunResult:
    """`inputs` may be prepared beforehand (the CLI does, to fail fast on bad data, and
    hands them over through `run_flow`); otherwise the flow prepares them from the config.
    With `resume`, an existing run continues after its last manifest, from the trainer
    state that produced it, and ends with the manifests an uninterrupted run would have."""
    handed_inputs, handed_report = handed()
    return curate(config, inputs or handed_inputs, report or handed_report, resume)


def handed() -> tuple[RunInputs | None, Reporter | None]:
    """What `run_flow` handed the flow. A function, not the ContextVar itself, in the flow's
    body: Dask pickles the flow's function by value, with the globals it names, and a
    ContextVar cannot be pickled; a module-level function travels by reference."""
    return _HANDED.get()


def curate(
    config: RunConfig,
    inputs: RunInputs | None = None,
    report: Reporter | None = None,
    resume: bool = False,
) -> RunResult:
    """The rounds and epochs of a run, for any flow that runs one: every step's manifest
    is also published as a Prefect artifact, and the run's summary at the end."""
    report = report or (lambda _: None)

    def done(step: StepReport) -> None:
        artifacts.publish_step(ctx.layout, step.record)
        report(step)

    if resume:
        ctx = tasks.open_run(config, inputs)
        point = tasks.restore(ctx)
    else:
        ctx = tasks.prepare_run(config, inputs)
        point = ResumePoint(None, [])
    manifests = list(point.manifests)
    for record in manifests:
        report(StepReport(record))
    parent = point.last
    for round_index in range(parent["round"] if parent else 0, config.rounds):
        if parent is None or parent["round"] != round_index:
            parent = tasks.reset(ctx, round_index, parent)
            manifests.append(parent)
            done(StepReport(parent))
        for epoch in range(parent["epoch"] + 1, config.epochs + 1):
            if parent["pool"]["size"] == 0:
                break
            step = run_epoch(ctx, parent, round_index, epoch)
            parent = step.record
            manifests.append(parent)
            done(step)
    tasks.finish(ctx, manifests[-1])
    artifacts.publish_summary(ctx.layout, manifests)
    return RunResult(ctx.layout, manifests)
