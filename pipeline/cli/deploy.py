"""`stm deploy` and `stm serve`: the curation flow as a Prefect deployment with its
parameters (config file, store, dataset) and an optional cron or interval schedule.
`serve` is one long-lived process that registers the deployment and runs its flow runs;
`deploy` registers it on a work pool for `prefect worker start` to run. Both need a Prefect
server (`prefect server start`): the in-process API starts no scheduler."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from pipeline.cli.app import JSON_OPTION, cli
from pipeline.errors import ConfigError, PrefectUnavailable

DEFAULT_NAME = "stm-nightly"
DEFAULT_POOL = "stm-process"
REPO_ROOT = Path(__file__).resolve().parents[2]
# A worker's flow-run process does not start from the CLI: tell its Prefect to route the
# pipeline's "stm" loggers into the run's logs.
WORKER_ENV = {"PREFECT_LOGGING_EXTRA_LOGGERS": "stm"}


def _absolute(path: str | None) -> str | None:
    """A path the flow will read later, from another working directory: made absolute
    now. Globs stay globs (only their directory part is anchored)."""
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def deployment_parameters(
    config: Path | None,
    store: Path | None,
    data: str | None,
    eval_data: str | None,
    id_column: str | None,
    group_column: str | None,
    seed: int | None,
) -> dict[str, Any]:
    """The parameters every run of the deployment gets, checked now (as `stm run` would)
    so that a bad config fails at deploy time rather than at 3 a.m. Store and dataset
    paths, from the options or the config file, are made absolute from here: the flow
    runs in another working directory."""
    from flows.scheduled import deployment_config

    parameters = {
        "config": _absolute(str(config)) if config else None,
        "store": _absolute(str(store)) if store else None,
        "data": _absolute(data),
        "eval_data": _absolute(eval_data),
        "id_column": id_column,
        "group_column": group_column,
        "seed": seed,
    }
    resolved = deployment_config(**parameters, run_id=None)
    parameters["store"] = _absolute(resolved.store)
    parameters["data"] = _absolute(resolved.data.path)
    parameters["eval_data"] = _absolute(resolved.data.eval_path)
    return {k: v for k, v in parameters.items() if v is not None}


def require_server(what: str) -> str:
    """Deployments and schedules live on a Prefect server: one line saying how to get
    one, instead of a run that silently never happens. The server is the one Prefect
    itself would use: PREFECT_API_URL, or the active profile's (`prefect config set`,
    `prefect cloud login`)."""
    import httpx
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise PrefectUnavailable(
            f"{what} needs a Prefect server: start one with `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (see docs/scheduling.md)"
        )
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5)
    except httpx.TransportError as err:  # any HTTP answer means someone is there
        raise PrefectUnavailable(f"{url}: Prefect server not reachable ({err})") from err
    return url


def _schedule(cron: str | None, interval: float | None) -> dict[str, Any]:
    if cron and interval:
        raise click.UsageError("give --cron or --interval, not both")
    if cron:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=cron)
        except ValueError as err:
            raise ConfigError(f"--cron {cron!r}: not a valid cron expression") from err
        return {"cron": cron}
    if interval:
        return {"interval": interval}
    return {}


DEPLOYMENT_OPTIONS = [
    click.option("--name", default=DEFAULT_NAME, show_default=True, help="Name of the deployment."),
    click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="TOML config file for every run [default: embedded defaults].",
    ),
    click.option(
        "--store",
        type=click.Path(file_okay=False, path_type=Path),
        help="Store root for the runs [default: manifests].",
    ),
    click.option(
        "--data",
        help="Dataset read at each run (file, directory, glob or save_to_disk directory): "
        "point it at where fresh data lands [default: built-in arithmetic].",
    ),
    click.option("--eval-data", help="Held-out set for accuracy."),
    click.option("--id-column", help="Column holding sample ids [default: content hash]."),
    click.option("--group-column", help="Column holding each sample's group."),
    click.option("--seed", type=int, help="Seed of every run [default: the config's]."),
    click.option("--cron", help="Cron schedule, e.g. '0 3 * * *' for 03:00 every night."),
    click.option(
        "--interval",
        type=click.FloatRange(min=1),
        help="Interval schedule in seconds, e.g. 86400 for daily.",
    ),
]


def with_deployment_options(command: Any) -> Any:
    for option in reversed(DEPLOYMENT_OPTIONS):
        command = option(command)
    return command


@cli.command()
@with_deployment_options
@click.option(
    "--work-pool",
    default=DEFAULT_POOL,
    show_default=True,
    help="Work pool whose workers run the flow; a process pool of this name is created if missing.",
)
@JSON_OPTION
def deploy(
    name: str,
    cron: str | None,
    interval: float | None,
    work_pool: str,
    as_json: bool,
    **options: Any,
) -> None:
    """Register STM curation as a Prefect deployment on a work pool.

    Each run of the deployment is a new STM run in the store, on whatever the dataset
    holds at that time; `stm manifests diff` compares one night's final pool with the
    next's. Runs happen where a worker of the pool runs, from this checkout:

    \b
      prefect server start                      # once, in its own shell
      export PREFECT_API_URL=http://127.0.0.1:4200/api
      stm deploy --data /data/incoming --cron '0 3 * * *'
      prefect worker start --pool stm-process   # runs the flow runs
      prefect deployment run stm-scheduled-curation/stm-nightly   # or wait for 03:00
    """
    parameters = deployment_parameters(**options)
    schedule = _schedule(cron, interval)
    url = require_server("stm deploy")
    from flows.scheduled import ENTRYPOINT, scheduled_curation

    _ensure_process_pool(work_pool)
    flow = scheduled_curation.from_source(source=str(REPO_ROOT), entrypoint=ENTRYPOINT)
    # to_deployment + apply registers without Prefect's console tables (--json stays
    # parseable); the local source gives the pull step that sets the worker's directory.
    deployment = flow.to_deployment(
        name=name,
        work_pool_name=work_pool,
        parameters=parameters,
        tags=["stm"],
        job_variables={"env": WORKER_ENV},
        **schedule,
    )
    deployment_id = deployment.apply()
    full_name = f"{scheduled_curation.name}/{name}"
    if as_json:
        payload = {
            "deployment": full_name,
            "id": str(deployment_id),
            "work_pool": work_pool,
            "parameters": parameters,
            "schedule": schedule or None,
            "api": url,
        }
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"Deployment {full_name} registered on work pool {work_pool!r} at {url}.")
    click.echo(f"  parameters: {json.dumps(parameters)}")
    click.echo(f"  schedule: {schedule or 'none (run it by hand)'}")
    click.echo(f"Start a worker:  prefect worker start --pool {work_pool}")
    click.echo(f"Run it now:      prefect deployment run '{full_name}'")


def _ensure_process_pool(name: str) -> None:
    """A process work pool of that name, created with Prefect's default job template when
    the server has none yet (what `prefect work-pool create --type process` does)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template)
            )


@cli.command()
@with_deployment_options
def serve(name: str, cron: str | None, interval: float | None, **options: Any) -> None:
    """Serve STM curation: register the deployment and run its flow runs in this process.

    The usual Prefect way for one machine: keep it running (systemd, tmux, a container);
    runs start on the schedule, from the UI, or by
    `prefect deployment run stm-scheduled-curation/NAME`. Stop it with Ctrl-C, which
    pauses the schedule.

    \b
      prefect server start                      # once, in its own shell
      export PREFECT_API_URL=http://127.0.0.1:4200/api
      stm serve --data /data/incoming --cron '0 3 * * *'
    """
    parameters = deployment_parameters(**options)
    schedule = _schedule(cron, interval)
    require_server("stm serve")
    from flows.scheduled import scheduled_curation

    scheduled_curation.serve(name=name, parameters=parameters, tags=["stm"], limit=1, **schedule)
