"""InfoBatch-style soft pruning: exact decisions and weights on hand-built scores, the
weights file and its place in the manifest, what training and export read from it."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.config import PolicyConfig, RunConfig, TrainerConfig, dumps_toml
from pipeline.errors import ManifestIntegrityError
from pipeline.external_trainer import train_external_epoch
from pipeline.manifest import identity, manifest_id, verify_manifest
from pipeline.policies import PolicyParams, infobatch, uniform_draws
from pipeline.pruning import StepInputs, prune_step, reset_pool, training_set
from pipeline.shards import export_pool
from pipeline.store import RunLayout
from pipeline.verify import verify_store
from tests.builders import make_sample_table, make_scores

PARAMS = PolicyParams(delta=0.1, delta_mode="absolute", floor=0.3, last_soft_epoch=3)
IDS = [f"s{i}" for i in range(6)]


def decided(loss: list[float], params: PolicyParams = PARAMS, epoch: int = 2) -> pl.DataFrame:
    scores = make_scores(loss=loss, ids=IDS[: len(loss)]).with_columns(
        epoch=pl.lit(epoch, dtype=pl.Int32)
    )
    return infobatch(scores, params).collect()


def test_below_mean_samples_sit_out_or_are_rescaled_by_the_seeded_draw() -> None:
    # mean 0.5: s0, s1, s2 are below it; s3, s4 above.
    out = decided([0.1, 0.2, 0.3, 0.9, 1.0])
    draws = uniform_draws(pl.Series(IDS[:5]), seed=0, round_index=0, epoch=2)
    expected = {
        sample: ("above_mean", 1.0)
        if loss >= 0.5
        else ("skipped", 0.0)
        if draw < 0.5
        else ("rescaled", 2.0)
        for sample, loss, draw in zip(IDS, [0.1, 0.2, 0.3, 0.9, 1.0], draws, strict=False)
    }
    got = {r["sample_id"]: (r["reason"], r["weight"]) for r in out.iter_rows(named=True)}
    assert got == expected
    assert out["keep"].all()  # nothing leaves the pool for good
    # pinned: with seed 0 at (round 0, epoch 2) these ids sit out
    assert sorted(k for k, (reason, _) in got.items() if reason == "skipped") == sorted(
        IDS[i] for i in range(3) if draws[i] < 0.5
    )


def test_the_draw_uses_numpy_over_the_sorted_ids_whatever_the_row_order() -> None:
    ids = pl.Series(["b", "c", "a"])
    expected = np.random.default_rng([4, 1, 2]).random(3)
    assert list(uniform_draws(ids, 4, 1, 2)) == [expected[1], expected[2], expected[0]]
    loss = [0.1, 0.2, 0.3, 0.9, 1.0, 0.05]
    scores = make_scores(loss=loss, ids=IDS).with_columns(epoch=pl.lit(2, dtype=pl.Int32))
    shuffled = scores.collect().sample(fraction=1.0, shuffle=True, seed=1).lazy()
    frame = infobatch(scores, PARAMS).collect().sort("sample_id")
    assert infobatch(shuffled, PARAMS).collect().sort("sample_id").equals(frame)
    other_seed = infobatch(scores, replace(PARAMS, seed=9)).collect().sort("sample_id")
    assert not other_seed["weight"].equals(frame["weight"])


def test_anneal_epochs_train_on_the_whole_pool_unweighted() -> None:
    out = decided([0.1, 0.2, 0.3, 0.9, 1.0], epoch=4)  # after last_soft_epoch 3
    assert set(out["reason"]) == {"anneal"} and out["weight"].to_list() == [1.0] * 5


def test_a_zero_ratio_skips_nothing_and_weighs_everything_one() -> None:
    out = decided([0.1, 0.2, 0.3, 0.9, 1.0], replace(PARAMS, prune_ratio=0.0))
    assert "skipped" not in set(out["reason"]) and out["weight"].to_list() == [1.0] * 5


def test_the_policy_refuses_to_run_without_its_step_parameter() -> None:
    with pytest.raises(ValueError, match="last_soft_epoch"):
        decided([0.1], replace(PARAMS, last_soft_epoch=None))


def make_run(root: Path, epochs: int, policy: PolicyConfig) -> RunLayout:
    layout = RunLayout(root, "soft")
    layout.run_dir.mkdir(parents=True)
    pq.write_table(make_sample_table(n=6), layout.samples)
    config = RunConfig(epochs=epochs, rounds=1, policy=policy)
    layout.config.write_text(dumps_toml(config))
    return layout


def step(layout: RunLayout, epoch: int, losses: list[float]) -> StepInputs:
    raw = layout.run_dir / "scores" / ".raw.parquet"
    raw.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"s{i:03d}" for i in range(6)]
    pl.DataFrame({"sample_id": ids, "loss": losses, "n_tokens": [2] * 6}).write_parquet(raw)
    return StepInputs(0, epoch, raw, None, None, 10, 12, {})


@pytest.fixture
def soft_run(tmp_path: Path) -> tuple[RunLayout, list[dict[str, Any]]]:
    policy = PolicyConfig(name="infobatch", seed=3)
    layout = make_run(tmp_path, epochs=3, policy=policy)
    records = [reset_pool(layout, 0, None, policy, "fp")]
    losses = [[2.0, 1.9, 0.1, 0.2, 0.3, 0.05], [1.5, 1.0, 0.1, 0.1, 0.2, 0.05], [1.0] * 6]
    for epoch, epoch_losses in enumerate(losses, start=1):
        records.append(prune_step(layout, records[-1], step(layout, epoch, epoch_losses), policy))
    return layout, records


def test_a_soft_step_keeps_the_pool_and_records_its_weights(soft_run) -> None:
    layout, records = soft_run
    first = records[1]
    assert first["pool"]["size"] == 6 and first["step"]["dropped"] == 0
    weights = pl.read_parquet(layout.resolve(first["pool"]["weights"]["path"]))
    decisions = pl.read_parquet(layout.decisions(0, 1))
    assert decisions.columns[-1] == "weight"
    assert weights.equals(decisions.select("sample_id", "weight"))
    assert first["pool"]["weights"]["trained"] == (weights["weight"] > 0).sum()
    assert set(first["step"]["by_reason"]) <= {"above_mean", "rescaled", "skipped"}
    # epochs = 3, anneal_epochs = 1: the decision after epoch 2 sets up the last epoch
    assert set(pl.read_parquet(layout.decisions(0, 2))["reason"]) == {"anneal"}
    assert identity(first)["weights_sha256"] == first["pool"]["weights"]["sha256"]
    for record in records[1:]:
        verify_manifest(layout.root, layout.manifest(0, record["epoch"]))
    assert verify_store(layout.root, sorted(layout.manifest_dir.glob("*.json")))[1] == []


def test_weights_are_part_of_the_identity_only_when_present(soft_run) -> None:
    _, records = soft_run
    record = records[1]
    unweighted = {**record, "pool": {k: v for k, v in record["pool"].items() if k != "weights"}}
    assert "weights_sha256" not in identity(unweighted)
    reweighted = {**record, "pool": {**record["pool"], "weights": {"sha256": "0" * 64}}}
    assert manifest_id(reweighted) != manifest_id(record) != manifest_id(unweighted)


def test_changed_weights_fail_verification(soft_run) -> None:
    layout, records = soft_run
    path = layout.resolve(records[1]["pool"]["weights"]["path"])
    weights = pl.read_parquet(path)
    weights.with_columns(weight=pl.col("weight") * 2).write_parquet(path)
    with pytest.raises(ManifestIntegrityError, match="weights do not match their hash"):
        verify_manifest(layout.root, layout.manifest(0, 1))
    with pytest.raises(ManifestIntegrityError, match="weights do not match their hash"):
        training_set(layout, records[1])  # nor trained or exported on


def test_training_and_export_take_the_samples_weighted_above_zero(soft_run, tmp_path: Path) -> None:
    layout, records = soft_run
    record = records[1]
    weights = pl.read_parquet(layout.resolve(record["pool"]["weights"]["path"]))
    training = weights.filter(pl.col("weight") > 0)
    ids, trained = training_set(layout, record)
    assert ids.to_pylist() == training["sample_id"].to_list() and trained.equals(training)
    summary = export_pool(layout, record, tmp_path / "out", "parquet")
    exported = pl.read_parquet(tmp_path / "out" / "part-00000.parquet")
    assert summary.rows == training.height < 6
    assert exported.select("sample_id", "weight").sort("sample_id").equals(training)
    # a manifest without weights trains and exports its whole pool, with no weight column
    ids, none = training_set(layout, records[0])
    assert len(ids) == 6 and none is None
    export_pool(layout, records[0], tmp_path / "all", "parquet")
    assert "weight" not in pl.read_parquet(tmp_path / "all" / "part-00000.parquet").columns


def test_an_external_trainer_gets_the_weighted_samples_and_is_charged_for_them(
    soft_run, tmp_path: Path
) -> None:
    layout, records = soft_run
    script = tmp_path / "trainer.py"
    script.write_text(
        "import shutil, sys\n"
        "shutil.copytree(sys.argv[1], sys.argv[2])\n"
        "open(sys.argv[3], 'wb').write(b'onnx')\n"
    )
    seen = tmp_path / "seen"
    command = f"{sys.executable} {script} {{pool}} {seen} {{scorer}}"
    stats = train_external_epoch(TrainerConfig(command), layout, records[1], 0, 2, seed=0)
    weights = pl.read_parquet(layout.resolve(records[1]["pool"]["weights"]["path"]))
    training = weights.filter(pl.col("weight") > 0)
    shard = pl.read_parquet(seen / "part-00000.parquet")
    assert shard.select("sample_id", "weight").sort("sample_id").equals(training)
    assert stats.samples == training.height
    samples = pl.read_parquet(layout.samples)
    expected = training.join(samples, on="sample_id")["n_tokens"].sum()
    assert stats.tokens_trained == expected
