"""Prefect artifacts of a run: each step's pool per group as a table, described by its drops
per reason, tokens and manifest path, and the run's summary in Markdown. What changed,
readable in the Prefect UI.

Plain calls from the flow rather than tasks: an artifact attaches to the flow run either
way, and a task per artifact doubled the orchestration cost of a small epoch. Publishing
never fails a run: the manifests in the store are the record, the artifacts a view of it."""

from __future__ import annotations

import logging
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext

from pipeline.store import RunLayout
from pipeline.summaries import artifact_key, pool_rows, run_markdown, step_markdown

log = logging.getLogger("stm.artifacts")

SUMMARY_KEY = "stm-run-summary"


def pool_key(run_id: str) -> str:
    return artifact_key("stm-pool", run_id)


def in_flow_run() -> bool:
    """The flow's body also runs without Prefect (`stm_flow.fn`, in tests): no run, no UI."""
    return FlowRunContext.get() is not None


def publish_step(layout: RunLayout, record: dict[str, Any]) -> None:
    if not in_flow_run():
        return
    manifest = layout.manifest(record["round"], record["epoch"]).resolve()
    try:
        create_table_artifact(
            pool_rows(record),
            key=pool_key(layout.run_id),
            description=step_markdown(record, manifest),
        )
    except Exception as err:  # the API is a view; the manifest is already written
        log.warning("artifact of %s not published: %s", manifest, err)


def publish_summary(layout: RunLayout, manifests: list[dict[str, Any]]) -> None:
    """Under one key for every run, so the UI's Artifacts page lists night after night."""
    if not in_flow_run():
        return
    try:
        create_markdown_artifact(
            run_markdown(manifests, layout.run_dir.resolve()),
            key=SUMMARY_KEY,
            description=f"STM run {layout.run_id}",
        )
    except Exception as err:
        log.warning("summary artifact of run %s not published: %s", layout.run_id, err)
