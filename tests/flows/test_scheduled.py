"""The deployment's flow in-process (ephemeral Prefect): each night's data is a new run in
the same store, the two nights' final pools diff, a config with the Dask engine scores on
Dask as `stm run` does, and a pipeline error ends the flow run Failed with the pipeline's
one-line message."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from prefect_dask import DaskTaskRunner

from flows.scheduled import scheduled_curation
from pipeline.cli import cli
from pipeline.pruning import pool_ids, run_manifests
from pipeline.runs import is_complete, store_runs
from pipeline.store import RunLayout

CONFIG = """
seed = 0
rounds = 1
epochs = 2

[model]
embed_dim = 8
hidden_dim = 16

[train]
batch_size = 8

[policy]
name = "standard"  # keeps every sample: the final pool is the night's data

[scoring]
batch_size = 16
threads = 1
"""

DASK_SCALE = """
[scale]
engine = "dask"
dask_workers = 1
shards = 2
"""


def _night(path: Path, first: int, last: int) -> Path:
    """Sums a+b for a in [first, last): consecutive nights overlap in part."""
    rows = [
        {"id": f"sum-{a}-{b}", "prompt": f"{a}+{b}=", "target": str(a + b),
         "group": "easy" if a + b < 10 else "hard"}
        for a in range(first, last) for b in range(4)
    ]  # fmt: skip
    pl.DataFrame(rows).write_ndjson(path)
    return path


def test_each_night_is_a_new_run_and_the_final_pools_diff(tmp_path: Path) -> None:
    config = tmp_path / "nightly.toml"
    config.write_text(CONFIG)
    store = tmp_path / "store"
    common = {"config": str(config), "store": str(store), "id_column": "id"}
    common["group_column"] = "group"
    monday = scheduled_curation(data=str(_night(tmp_path / "mon.jsonl", 0, 6)), **common)
    tuesday = scheduled_curation(data=str(_night(tmp_path / "tue.jsonl", 3, 9)), **common)

    runs = store_runs(store)
    assert sorted(layout.run_id for layout in runs) == sorted([monday["run"], tuesday["run"]])
    assert monday["run"] != tuesday["run"] and all(is_complete(layout) for layout in runs)
    pools = {summary["run"]: _final_pool(store, summary) for summary in (monday, tuesday)}
    for side, expected in (
        ("removed", pools[monday["run"]] - pools[tuesday["run"]]),
        ("added", pools[tuesday["run"]] - pools[monday["run"]]),
    ):
        result = CliRunner().invoke(
            cli,
            ["manifests", "diff", "--store", str(store), monday["run"], tuesday["run"],
             "--ids", side],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert set(result.output.split()) == expected
    assert pools[monday["run"]] - pools[tuesday["run"]]  # the nights differ both ways
    assert pools[tuesday["run"]] - pools[monday["run"]]


def _final_pool(store: Path, summary: dict[str, str]) -> set[str]:
    """The run's final pool, read from the manifest the flow reported."""
    layout = RunLayout(store, summary["run"])
    record = run_manifests(layout)[-1]
    assert record["id"] == summary["manifest"]
    return set(pool_ids(layout, record).to_pylist())


def test_a_pipeline_error_fails_the_flow_run_with_its_message(tmp_path: Path) -> None:
    missing = tmp_path / "missing.parquet"
    state = scheduled_curation(store=str(tmp_path / "store"), data=str(missing), return_state=True)
    assert state.is_failed()
    assert state.message == f"{missing}: no such file or directory"
    assert not (tmp_path / "store" / "runs").exists()


def test_a_full_disk_fails_the_flow_run_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(_config: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "store"))

    monkeypatch.setattr("flows.scheduled.prepare_inputs", full_disk)
    state = scheduled_curation(store=str(tmp_path / "store"), return_state=True)
    assert state.is_failed()
    assert state.message == f"{tmp_path / 'store'}: No space left on device"


def test_a_scheduled_run_with_the_dask_engine_scores_its_shards_on_dask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted: list[str] = []
    submit = DaskTaskRunner.submit

    def recording_submit(runner: DaskTaskRunner, task: Any, *args: Any, **kwargs: Any) -> Any:
        submitted.append(task.name)
        return submit(runner, task, *args, **kwargs)

    monkeypatch.setattr(DaskTaskRunner, "submit", recording_submit)
    night = str(_night(tmp_path / "night.jsonl", 0, 6))
    final = {}
    for engine, scale in (("local", ""), ("dask", DASK_SCALE)):
        config = tmp_path / f"{engine}.toml"
        config.write_text(CONFIG + scale)
        final[engine] = scheduled_curation(
            config=str(config), store=str(tmp_path / engine), data=night, id_column="id",
            group_column="group", run_id="night",
        )  # fmt: skip

    assert submitted and set(submitted) == {"score-shard"}  # the Dask run's shard tasks
    assert final["dask"]["manifest"] == final["local"]["manifest"]
    assert final["dask"]["pool"] == final["local"]["pool"] == 24


def test_an_unreachable_dask_cluster_fails_the_flow_run_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipeline.dask_cluster.CONNECT_SECONDS", 1)
    config = tmp_path / "dask.toml"
    config.write_text(CONFIG + DASK_SCALE + 'dask_address = "tcp://127.0.0.1:1"\n')
    night = str(_night(tmp_path / "night.jsonl", 0, 6))
    store = tmp_path / "store"
    state = scheduled_curation(
        config=str(config), store=str(store), data=night, id_column="id",
        group_column="group", return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    assert state.message == (
        "scale.dask_address=tcp://127.0.0.1:1: Dask scheduler not reachable "
        "(Timed out trying to connect to tcp://127.0.0.1:1 after 1 s)"
    )
    assert not (store / "runs").exists()
