from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline import manifest
from pipeline.config import PolicyConfig
from pipeline.errors import ManifestIntegrityError
from pipeline.manifest import (
    load_manifest,
    manifest_id,
    pool_hash,
    pool_hash_of_frame,
    verify_manifest,
)
from pipeline.pruning import StepInputs, prune_step, reset_pool, run_manifests
from pipeline.store import RunLayout, sha256_file, write_immutable
from tests.builders import make_sample_table

POLICY = PolicyConfig(name="stm", delta=0.25, delta_mode="absolute", floor=0.5, tighten=0.5)


@pytest.mark.parametrize("ids", [[], ["b"], ["c", "a", "é", "b", "aa"]])
def test_pool_hash_of_frame_hashes_the_sorted_ids_in_slices(
    ids: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest, "HASH_SLICE_IDS", 2)  # several slices, one partial
    frame = pl.DataFrame({"sample_id": ids}, schema={"sample_id": pl.String})
    assert pool_hash_of_frame(frame) == pool_hash(sorted(ids))


def make_layout(root: Path, run_id: str = "run-a", n: int = 6) -> RunLayout:
    layout = RunLayout(root, run_id)
    layout.run_dir.mkdir(parents=True)
    pq.write_table(make_sample_table(n=n), layout.samples)
    return layout


def write_raw(layout: RunLayout, losses: dict[str, float], name: str = ".raw.parquet") -> Path:
    path = layout.run_dir / "scores" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {"sample_id": list(losses), "loss": list(losses.values()), "n_tokens": [2] * len(losses)}
    ).write_parquet(path)
    return path


def step(layout: RunLayout, round_index: int, epoch: int, losses: dict[str, float]) -> StepInputs:
    scorer = layout.scorer(round_index, epoch)
    scorer.parent.mkdir(parents=True, exist_ok=True)
    scorer.write_bytes(f"scorer {round_index} {epoch}".encode())
    return StepInputs(
        round_index=round_index,
        epoch=epoch,
        raw_scores=write_raw(layout, losses),
        scorer=scorer,
        scorer_sha256=sha256_file(scorer),
        tokens_trained=10,
        tokens_scored=2 * len(losses),
        metrics={"accuracy": {"all": 0.5}},
    )


def run_two_epochs(layout: RunLayout) -> list[dict[str, Any]]:
    """Epoch 1 sets the baseline; epoch 2 drops s000 and s002 (sharp drop, under floor)."""
    m0 = reset_pool(layout, 0, None, POLICY, "fp")
    ids = [f"s{i:03d}" for i in range(6)]
    m1 = prune_step(layout, m0, step(layout, 0, 1, dict.fromkeys(ids, 1.0)), POLICY)
    second = {i: 1.0 for i in ids} | {"s000": 0.25, "s002": 0.5, "s004": 0.75}
    m2 = prune_step(layout, m1, step(layout, 0, 2, second), POLICY)
    return [m0, m1, m2]


def test_pruning_records_lineage_counts_and_tokens(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    m0, m1, m2 = run_two_epochs(layout)
    assert (m0["kind"], m0["pool"]["size"], m0["parent"]) == ("reset", 6, None)
    assert m1["parent"] == m0["id"] and m2["parent"] == m1["id"]
    assert m1["step"]["by_reason"] == {"baseline": 6}
    assert m2["step"]["by_reason"] == {"above_floor": 1, "learning": 3, "mastered": 2}
    assert m2["step"]["dropped_by_group"] == {"easy": 2}
    assert m2["pool"]["size"] == 4
    assert m2["pool"]["by_group"] == {"easy": 1, "hard": 3}
    assert m2["tokens"] == {"trained": 20, "scored": 24, "trained_step": 10, "scored_step": 12}
    assert m2["policy"] == {
        "name": "stm",
        "params": {"delta": 0.25, "delta_mode": "absolute", "floor": 0.5},
    }
    survivors = pl.read_parquet(layout.resolve(m2["pool"]["path"]))["sample_id"].to_list()
    assert survivors == ["s001", "s003", "s004", "s005"]
    dropped = pl.read_parquet(layout.resolve(m2["step"]["decisions"]["path"])).filter(
        ~pl.col("keep")
    )
    assert dropped.select("sample_id", "reason").rows() == [
        ("s000", "mastered"),
        ("s002", "mastered"),
    ]


def test_paths_in_records_are_relative_and_a_moved_store_verifies(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "a")
    run_two_epochs(layout)
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    for path in sorted((moved / "runs" / "run-a" / "manifests").glob("*.json")):
        record = verify_manifest(moved, path)
        assert not Path(record["pool"]["path"]).is_absolute()


def test_same_lineage_gives_same_ids_across_runs_and_pools_are_shared(tmp_path: Path) -> None:
    first = run_two_epochs(make_layout(tmp_path, "run-a"))
    second = run_two_epochs(make_layout(tmp_path, "run-b"))
    assert [m["id"] for m in first] == [m["id"] for m in second]
    assert len(list((tmp_path / "pools").glob("*.parquet"))) == 2  # full pool, and 4 survivors


def test_any_change_to_lineage_changes_the_id() -> None:
    record = {
        "schema_version": 1,
        "round": 0,
        "epoch": 1,
        "kind": "prune",
        "parent": "p",
        "policy": {"name": "stm", "params": {"floor": 0.5}},
        "scorer": {"sha256": "s"},
        "dataset": {"fingerprint": "f"},
        "pool": {"sha256": pool_hash(["a", "b"])},
    }
    base = manifest_id(record)
    assert manifest_id({**record, "metrics": {"seconds": 1.0}}) == base
    variants = [
        {**record, "parent": "q"},
        {**record, "epoch": 2},
        {**record, "policy": {"name": "stm", "params": {"floor": 0.25}}},
        {**record, "scorer": {"sha256": "t"}},
        {**record, "pool": {"sha256": pool_hash(["a", "c"])}},
    ]
    assert len({manifest_id(v) for v in variants} | {base}) == len(variants) + 1


def test_pool_hash_is_over_sorted_ids() -> None:
    assert pool_hash(["a", "b"]) != pool_hash(["a", "b", "c"])
    assert pool_hash(["a", "b"]) == pool_hash(iter(["a", "b"]))


def test_tampered_manifest_fails_to_load(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    m2 = run_two_epochs(layout)[-1]
    path = layout.manifest(0, 2)
    record = json.loads(path.read_text())
    record["pool"]["size"] = 6
    record["parent"] = "forged"
    path.write_text(json.dumps(record))
    with pytest.raises(
        ManifestIntegrityError, match=rf"r00-e002.json: id {m2['id']} does not match"
    ):
        load_manifest(path)


def test_changed_pool_file_fails_verification(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    m2 = run_two_epochs(layout)[-1]
    pool_file = layout.resolve(m2["pool"]["path"])
    pl.DataFrame({"sample_id": ["s001"], "group": ["hard"]}).write_parquet(pool_file)
    with pytest.raises(ManifestIntegrityError, match=r"ids do not match pool hash"):
        verify_manifest(tmp_path, layout.manifest(0, 2))


def test_changed_decisions_file_fails_verification(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    m2 = run_two_epochs(layout)[-1]
    layout.resolve(m2["step"]["decisions"]["path"]).write_bytes(b"changed")
    with pytest.raises(ManifestIntegrityError, match=r"r00-e002.parquet: missing or changed"):
        verify_manifest(tmp_path, layout.manifest(0, 2))


def test_manifests_are_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_immutable(path, b"one")
    write_immutable(path, b"one")
    with pytest.raises(
        ManifestIntegrityError, match=r"m.json: already exists with different content"
    ):
        write_immutable(path, b"two")


def test_pool_of_a_step_must_match_its_parent(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    m0 = reset_pool(layout, 0, None, POLICY, "fp")
    with pytest.raises(ManifestIntegrityError, match=r"2 samples scored but the pool of manifest"):
        prune_step(layout, m0, step(layout, 0, 1, {"s000": 1.0, "s001": 1.0}), POLICY)


def test_run_manifests_are_in_step_order(tmp_path: Path) -> None:
    layout = make_layout(tmp_path)
    run_two_epochs(layout)
    assert [(m["round"], m["epoch"]) for m in run_manifests(layout)] == [(0, 0), (0, 1), (0, 2)]


def test_a_sample_scored_twice_is_refused(tmp_path: Path) -> None:
    """Six rows for a pool of six, but s000 twice and s005 never: the counts match, the
    repeated id must not pass."""
    layout = make_layout(tmp_path)
    m0 = reset_pool(layout, 0, None, POLICY, "fp")
    inputs = step(layout, 0, 1, dict.fromkeys([f"s{i:03d}" for i in range(5)], 1.0))
    twice = pl.read_parquet(inputs.raw_scores)
    pl.concat([twice, twice.head(1)]).write_parquet(inputs.raw_scores)
    with pytest.raises(ManifestIntegrityError, match=r"sample 's000' is scored more than once"):
        prune_step(layout, m0, inputs, POLICY)
