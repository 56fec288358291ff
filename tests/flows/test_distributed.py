"""The Dask engine against the single-process one: the same run on a local 2-worker
cluster, its pool cut in 3 shards, must write the same manifests and decisions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flows.stm_flow import RunResult, stm_flow
from pipeline.cli import cli
from pipeline.config import RunConfig, ScaleConfig, dumps_toml, load_config
from pipeline.pruning import run_manifests
from pipeline.store import RunLayout, sha256_file

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"


def small_config(store: Path, **changes: Any) -> RunConfig:
    """configs/tiny.toml cut to 2 rounds of 2 epochs (a reset, a baseline pass and a pass
    with loss deltas in each round), with batches of 2 so that its 112 samples make
    several scoring blocks (`pipeline.sharding.scoring_block_rows`) for the shards."""
    tiny = load_config(TINY)
    data = replace(tiny.data, arithmetic=replace(tiny.data.arithmetic, n_easy=96))
    scoring = replace(tiny.scoring, batch_size=2)
    return replace(
        tiny, store=str(store), run_id="small", epochs=2, data=data, scoring=scoring, **changes
    )


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, RunResult]:
    local = stm_flow.fn(small_config(tmp_path_factory.mktemp("local")))
    scale = ScaleConfig(engine="dask", dask_workers=2, shards=3)
    config = small_config(tmp_path_factory.mktemp("dask"), scale=scale)
    # Through `stm run`, as a user runs it: its progress callback and the prepared sample
    # table must not be pickled into every shard task (they were, and the callback's locks
    # failed every shard).
    path = Path(config.store) / "dask.toml"
    path.write_text(dumps_toml(config))
    result = CliRunner().invoke(cli, ["run", "--config", str(path)])
    assert result.exit_code == 0, result.output
    # The progress callback was handed to the flow: every step's row is in the table.
    assert all(f"r{r} e{e} " in result.output for r in (0, 1) for e in (0, 1, 2))
    layout = RunLayout(Path(config.store), "small")
    return local, RunResult(layout, run_manifests(layout))


def test_dask_engine_gives_the_single_process_manifests_id_for_id(both_runs) -> None:
    local, distributed = both_runs
    assert [m["id"] for m in distributed.manifests] == [m["id"] for m in local.manifests]
    assert [m["pool"]["sha256"] for m in distributed.manifests] == [
        m["pool"]["sha256"] for m in local.manifests
    ]
    assert any(m["step"] and m["step"]["dropped"] for m in local.manifests)
    assert local.manifests[0]["pool"]["size"] == 112


def test_dask_engine_writes_the_same_scores_and_decisions(both_runs) -> None:
    local, distributed = both_runs
    for ours, theirs in zip(local.manifests, distributed.manifests, strict=True):
        if ours["kind"] != "prune":
            continue
        r, e = ours["round"], ours["epoch"]
        for path in (local.layout.scores, local.layout.decisions):
            other = path.__func__(distributed.layout, r, e)
            assert sha256_file(path(r, e)) == sha256_file(other), other
        assert theirs["tokens"] == ours["tokens"]


def test_shard_parts_are_removed_once_merged(both_runs) -> None:
    _, distributed = both_runs
    scores_dir = distributed.layout.scores(0, 1).parent
    assert sorted(p.name for p in scores_dir.iterdir()) == sorted(
        p.name for p in scores_dir.iterdir() if not p.name.startswith(".")
    )


def test_an_unreachable_dask_address_fails_in_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipeline.dask_cluster.CONNECT_SECONDS", 1)
    store = tmp_path / "store"
    args = ["run", "--store", str(store), "--engine", "dask", "--dask-address", "tcp://127.0.0.1:1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: scale.dask_address=tcp://127.0.0.1:1: Dask scheduler not reachable "
        "(Timed out trying to connect to tcp://127.0.0.1:1 after 1 s)"
    ]
    assert not store.exists()


def test_a_dask_address_without_the_dask_engine_is_refused(tmp_path: Path) -> None:
    args = ["run", "--store", str(tmp_path), "--dask-address", "tcp://127.0.0.1:1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "config key scale.dask_address: is only used with" in result.output
