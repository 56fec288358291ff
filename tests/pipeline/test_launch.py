"""Starting a run: new, resumed or complete, and never silently reusing a finished run
for another config or dataset."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.config import RunConfig
from pipeline.errors import StoreError
from pipeline.launch import plan_run
from pipeline.runs import mark_complete
from pipeline.store import RunLayout
from tests.store_builders import make_run

NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


def test_new_resumed_and_complete(tmp_path: Path) -> None:
    layout = make_run(tmp_path, "nightly")
    fresh = plan_run(replace(_config(layout), run_id=None), "fingerprint", NOW)
    assert fresh.state == "new" and fresh.config.run_id.startswith("20261125-030000-")
    config = _config(layout)
    assert plan_run(config, "fingerprint", NOW).state == "resume"
    mark_complete(layout, {"id": "x" * 64, "round": 0, "epoch": 0})
    assert plan_run(config, "fingerprint", NOW).state == "complete"


@pytest.mark.parametrize("complete", [False, True])
def test_a_named_run_with_other_data_is_refused(tmp_path: Path, complete: bool) -> None:
    layout = make_run(tmp_path, "nightly")
    if complete:
        mark_complete(layout, {"id": "x" * 64, "round": 0, "epoch": 0})
    with pytest.raises(StoreError) as err:
        plan_run(_config(layout), "tonight's data", NOW)
    if complete:
        assert str(err.value) == (
            f"{layout.run_dir}: run 'nightly' is complete and was made from another config "
            "or dataset; choose another run id"
        )
    else:
        assert "the dataset fingerprint differs" in str(err.value)


def _config(layout: RunLayout) -> RunConfig:
    return RunConfig(store=str(layout.root), run_id=layout.run_id)
