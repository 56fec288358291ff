"""What starting a run means for a given config and dataset: a new run, the resumption of
an interrupted one, or nothing because it already finished. Decided in one place for
`stm run`, `stm run --dry-run` and the scheduled flow, so all three agree."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

from pipeline.config import RunConfig
from pipeline.errors import StoreError
from pipeline.resume import check_resumable
from pipeline.runs import default_run_id, is_complete
from pipeline.store import RunLayout

RunState = Literal["new", "resume", "complete"]


@dataclass(frozen=True)
class RunPlan:
    config: RunConfig  # with its run id set
    layout: RunLayout
    state: RunState


def plan_run(config: RunConfig, fingerprint: str, now: datetime) -> RunPlan:
    """A run without a name gets one from the time and config; a named run that exists
    is resumed, or found complete, and refused either way if its config or data changed
    since (by fingerprint)."""
    config = replace(config, run_id=config.run_id or default_run_id(config, now))
    layout = RunLayout(Path(config.store), config.run_id)
    if not layout.run_record.exists():
        return RunPlan(config, layout, "new")
    if is_complete(layout):
        try:
            check_resumable(layout, config, fingerprint)
        except StoreError as err:
            # A fixed run name on new data must not quietly report last time's result.
            raise StoreError(
                f"{layout.run_dir}: run {config.run_id!r} is complete and was made from "
                "another config or dataset; choose another run id"
            ) from err
        return RunPlan(config, layout, "complete")
    check_resumable(layout, config, fingerprint)
    return RunPlan(config, layout, "resume")
