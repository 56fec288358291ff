"""The pipeline logs through stdlib "stm" loggers and never imports Prefect; inside a flow
run, those records must land in the run's logs (what the Prefect UI shows), through a
real (ephemeral) Prefect run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.context import get_run_context
from prefect.logging.handlers import APILogWorker

from pipeline import logs


@task
def prune_step(marker: str) -> None:
    logging.getLogger("stm.pruning").info("dropped %s", marker)
    logging.getLogger("stm.pruning").debug("below the level: %s", marker)


@flow
def curation(marker: str) -> UUID:
    prune_step(marker)
    return get_run_context().flow_run.id


@pytest.fixture
def quiet_console() -> Iterator[None]:
    """The console set up as `stm run` sets it (warnings only, as the live table is the
    display), then put back as it was."""
    stm = logging.getLogger(logs.ROOT_LOGGER)
    handlers, level, propagate = list(stm.handlers), stm.level, stm.propagate
    logs.log_to_console(logging.WARNING)
    yield
    stm.handlers[:] = handlers
    stm.setLevel(level)
    stm.propagate = propagate


def test_a_record_of_an_stm_logger_in_a_task_is_in_the_flow_runs_logs(
    quiet_console: None, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = uuid4().hex
    flow_run_id = curation(marker)
    APILogWorker.drain_all()
    with get_client(sync_client=True) as client:
        records = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    stm = [(r.name, r.message, r.level) for r in records if r.name.startswith("stm")]
    assert stm == [("stm.pruning", f"dropped {marker}", logging.INFO)]
    assert all(r.task_run_id is not None for r in records if r.name == "stm.pruning")
    assert marker not in capsys.readouterr().err  # the console shows warnings only
