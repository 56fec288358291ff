"""The whole loop on the shipped tiny config, through a real (ephemeral) Prefect run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from flows.stm_flow import RunResult, StepReport, stm_flow
from pipeline.config import RunConfig, load_config
from pipeline.manifest import verify_manifest

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"


def tiny_config(store: Path, **changes: Any) -> RunConfig:
    return replace(load_config(TINY), store=str(store), run_id="tiny", **changes)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, list[StepReport]]:
    reports: list[StepReport] = []
    result = stm_flow(tiny_config(tmp_path_factory.mktemp("store")), report=reports.append)
    return result, reports


def ids(layout, record: dict[str, Any]) -> set[str]:
    return set(pl.read_parquet(layout.resolve(record["pool"]["path"]))["sample_id"])


def test_every_step_has_a_verifiable_manifest_chain(tiny_run) -> None:
    result, reports = tiny_run
    config = load_config(TINY)
    steps = [(m["round"], m["epoch"]) for m in result.manifests]
    assert steps[0] == (0, 0)
    assert [r.record for r in reports] == result.manifests
    for parent, child in zip(result.manifests, result.manifests[1:], strict=False):
        assert child["parent"] == parent["id"]
    for record in result.manifests:
        path = result.layout.manifest(record["round"], record["epoch"])
        assert verify_manifest(result.layout.root, path)["id"] == record["id"]
    assert {r for r, _ in steps} == set(range(config.rounds))


def test_pool_shrinks_within_a_round_and_resets_each_round(tiny_run) -> None:
    result, _ = tiny_run
    full = result.manifests[0]["dataset"]["samples"]
    previous: set[str] = set()
    for record in result.manifests:
        pool = ids(result.layout, record)
        if record["kind"] == "reset":
            assert len(pool) == full
        else:
            assert pool <= previous
            assert len(previous) - len(pool) == record["step"]["dropped"]
        previous = pool


def test_floor_tightens_each_round(tiny_run) -> None:
    result, _ = tiny_run
    floors = {m["round"]: m["policy"]["params"]["floor"] for m in result.manifests}
    assert floors == {0: 1.0, 1: 0.5}


def test_tokens_are_counted_for_training_and_scoring(tiny_run) -> None:
    result, _ = tiny_run
    layout = result.layout
    for record in result.manifests:
        if record["kind"] != "prune":
            continue
        scores = pl.read_parquet(layout.resolve(record["step"]["scores"]["path"]))
        assert record["tokens"]["scored_step"] == scores["n_tokens"].sum()
        # training ran on the parent's pool, which is exactly what was scored
        assert record["tokens"]["trained_step"] == record["tokens"]["scored_step"]
    last = result.manifests[-1]["tokens"]
    prunes = [m for m in result.manifests if m["kind"] == "prune"]
    assert last["trained"] == sum(m["tokens"]["trained_step"] for m in prunes)


def test_scores_files_carry_the_delta_columns(tiny_run) -> None:
    result, _ = tiny_run
    first = pl.read_parquet(result.layout.scores(0, 1))
    second = pl.read_parquet(result.layout.scores(0, 2))
    assert first.columns == [
        "sample_id",
        "round",
        "epoch",
        "loss",
        "loss_prev",
        "delta",
        "rel_delta",
        "n_tokens",
        "passes",
        "mean_loss",
        "min_loss",
        "wander",
        "calm",
    ]
    assert first["loss_prev"].null_count() == first.height  # round baseline
    joined = second.join(first.select("sample_id", pl.col("loss").alias("l1")), on="sample_id")
    assert (joined["loss_prev"] == joined["l1"]).all()


def test_held_out_accuracy_per_group_is_recorded(tiny_run) -> None:
    result, reports = tiny_run
    accuracy = result.manifests[-1]["metrics"]["accuracy"]
    assert set(accuracy) == {"_overall", "easy", "hard"}
    assert all(0.0 <= v <= 1.0 for v in accuracy.values())
    seen = result.manifests[-1]["metrics"]["accuracy_seen"]  # retention on trained samples
    assert set(seen) == {"_overall", "easy", "hard"}
    assert all(0.0 <= v <= 1.0 for v in seen.values())
    epoch_seconds = [r.seconds["epoch"] for r in reports if r.record["kind"] == "prune"]
    assert all(s > 0 for s in epoch_seconds)


def test_same_seed_and_config_give_the_same_manifest_ids(tiny_run, tmp_path: Path) -> None:
    """Through `.fn()` (plain Python, no flow run) the lineage is the same as through
    Prefect: the orchestration adds nothing to the results."""
    result, _ = tiny_run
    again = stm_flow.fn(tiny_config(tmp_path))
    assert [m["id"] for m in again.manifests] == [m["id"] for m in result.manifests]


def test_an_existing_run_is_never_overwritten(tiny_run) -> None:
    from pipeline.errors import StoreError

    result, _ = tiny_run
    with pytest.raises(StoreError, match=r"run 'tiny' already exists"):
        stm_flow.fn(tiny_config(result.layout.root))


def test_seen_sample_is_the_first_training_samples_of_each_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models import evaluate

    ids = [f"s{i:02d}" for i in range(10)]
    samples = tmp_path / "samples.parquet"
    frame = {"sample_id": ids[::-1], "group": ["a", "b"] * 5, "prompt": ids, "target": ids}
    pl.DataFrame(frame).write_parquet(samples)
    monkeypatch.setattr(evaluate, "SEEN_PER_GROUP", 2)
    seen = evaluate.seen_sample(samples, "prompt", "target")
    assert sorted(seen.column("sample_id").to_pylist()) == ["s00", "s01", "s02", "s03"]


def test_infobatch_trains_on_the_weighted_samples_and_scores_the_whole_pool(
    tmp_path: Path,
) -> None:
    """Soft pruning through the flow: the pool never shrinks and every epoch scores all of
    it, while training skips the samples weighted 0 (fewer tokens) until the last epoch."""
    base = load_config(TINY)
    policy = replace(base.policy, name="infobatch", prune_ratio=0.5, anneal_epochs=1)
    result = stm_flow(tiny_config(tmp_path, rounds=1, epochs=3, policy=policy))
    layout, manifests = result.layout, result.manifests
    full = manifests[0]["pool"]["size"]
    prunes = [m for m in manifests if m["kind"] == "prune"]
    assert [m["pool"]["size"] for m in prunes] == [full] * 3
    assert [m["step"]["scored"] for m in prunes] == [full] * 3
    trained = [m["tokens"]["trained_step"] for m in prunes]
    weights = pl.read_parquet(layout.resolve(prunes[0]["pool"]["weights"]["path"]))
    samples = pl.read_parquet(layout.samples, columns=["sample_id", "n_tokens"])
    skipped = weights.filter(pl.col("weight") == 0).join(samples, on="sample_id")
    assert skipped.height > 0
    # epoch 2 trains on what epoch 1's step weighted above 0; epoch 3 (annealing) on all
    assert trained[1] == trained[0] - skipped["n_tokens"].sum()
    assert trained[2] == trained[0]
    assert prunes[1]["step"]["by_reason"] == {"anneal": full}
    for record in manifests:
        verify_manifest(layout.root, layout.manifest(record["round"], record["epoch"]))
