"""The flow a deployment runs: STM curation with plain, JSON-friendly parameters (config
file, store, dataset), so the Prefect UI, a schedule or `prefect deployment run` can start
it. Every scheduled run on new data is a new run in the same store; a run named by
`run_id` that was interrupted is resumed instead.

A pipeline error (bad data, a changed config, a broken scorer) ends the flow run Failed
with the pipeline's one-line message as its state message, and in the run's logs: what a
reader of the UI needs, not a traceback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from flows.inputs import prepare_inputs
from flows.stm_flow import RunResult, StepReport, curate, run_flow
from pipeline.config import RunConfig, resolve_config
from pipeline.dask_cluster import check_scheduler
from pipeline.errors import STORAGE_ERRNOS, PipelineError
from pipeline.launch import plan_run
from pipeline.pruning import run_manifests
from pipeline.resume import run_lock
from pipeline.summaries import step_line

ENTRYPOINT = "flows/scheduled.py:scheduled_curation"


# Each override's parameter, so a bad value is blamed on it: `seed -1: config key seed: ...`.
PARAMETERS = {
    "store": "store",
    "data.path": "data",
    "data.eval_path": "eval_data",
    "data.id_column": "id_column",
    "data.group_column": "group_column",
    "seed": "seed",
    "run_id": "run_id",
}


def deployment_config(
    config: str | None,
    store: str | None,
    data: str | None,
    eval_data: str | None,
    id_column: str | None,
    group_column: str | None,
    seed: int | None,
    run_id: str | None,
) -> RunConfig:
    """The config file (or the embedded defaults) with the deployment's parameters over it,
    checked as `stm run` checks it."""
    values = {
        "store": store,
        "data": data,
        "eval_data": eval_data,
        "id_column": id_column,
        "group_column": group_column,
        "seed": seed,
        "run_id": run_id,
    }
    overrides = {key: values[name] for key, name in PARAMETERS.items()}
    return resolve_config(Path(config) if config else None, overrides, PARAMETERS)


@flow(name="stm-scheduled-curation", log_prints=False)
def scheduled_curation(
    config: str | None = None,
    store: str | None = None,
    data: str | None = None,
    eval_data: str | None = None,
    id_column: str | None = None,
    group_column: str | None = None,
    seed: int | None = None,
    run_id: str | None = None,
) -> dict[str, Any] | State:
    """Curate `data` (or the built-in benchmark) with the TOML `config` into `store` (by
    default the config's, `manifests` without one).
    Relative paths are taken from the working directory of the process running the flow
    (the serve process, or the directory a worker's pull step sets)."""
    logger = get_run_logger()
    if logging.getLogger("stm").level == logging.NOTSET:
        logging.getLogger("stm").setLevel(logging.INFO)  # the pipeline's lines, in the UI
    try:
        resolved = deployment_config(
            config, store, data, eval_data, id_column, group_column, seed, run_id
        )
        check_scheduler(resolved)
        inputs = prepare_inputs(resolved)
        plan = plan_run(resolved, inputs.fingerprint, datetime.now(UTC))
        if plan.state == "complete":
            logger.info("run %s is already complete in %s", plan.config.run_id, resolved.store)
            return _summary(plan.layout.run_dir, run_manifests(plan.layout)[-1])
        logger.info(
            "%s run %s in %s",
            "resuming" if plan.state == "resume" else "starting",
            plan.config.run_id,
            Path(resolved.store).resolve(),
        )
        with run_lock(plan.layout):
            result = curation(plan.config)(
                plan.config,
                inputs,
                report=lambda step: _log_step(logger, step),
                resume=plan.state == "resume",
            )
    except PipelineError as err:
        logger.error("%s", err)
        return Failed(message=str(err))
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        message = f"{err.filename}: {err.strerror}"  # a full or read-only store
        logger.error("%s", message)
        return Failed(message=message)
    return _summary(result.layout.run_dir, result.manifests[-1])


def curation(config: RunConfig) -> Callable[..., RunResult]:
    """What runs the curation: with the local engine, `curate` in this flow run (its task
    runs, logs and artifacts on it). With the Dask engine, the flow `stm run --engine dask`
    runs, as a subflow: a flow run's task runner is fixed when the run starts, before this
    flow has read the config, and only a subflow can start with the Dask one."""
    if config.scale.engine == "dask":
        return run_flow
    return curate


def _log_step(logger: Any, step: StepReport) -> None:
    logger.info("%s", step_line(step.record))


def _summary(run_dir: Path, final: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": final["run"],
        "run_dir": str(run_dir.resolve()),
        "manifest": final["id"],
        "pool": final["pool"]["size"],
        "samples": final["dataset"]["samples"],
    }
