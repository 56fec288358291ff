"""Invariants of pruning, manifests, diff and export over random losses (hypothesis)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.catalog import Catalog
from pipeline.config import DataConfig, PolicyConfig
from pipeline.diff import diff_manifests
from pipeline.ingest import load_samples
from pipeline.manifest import manifest_id, pool_hash
from pipeline.shards import export_pool
from pipeline.store import RunLayout
from tests.store_builders import make_run, run_rounds

N = 8
IDS = [f"s{i:03d}" for i in range(N)]
POLICY = PolicyConfig(name="stm", delta=0.2, floor=0.6, tighten=0.5)
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

losses = st.lists(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.8, 1.2, 2.0]), min_size=N, max_size=N).map(
    lambda values: dict(zip(IDS, values, strict=True))
)
rounds = st.lists(st.lists(losses, min_size=1, max_size=3), min_size=1, max_size=3)


def pool(root: Path, record: dict) -> set[str]:
    return set(pl.read_parquet(root / record["pool"]["path"])["sample_id"])


@SETTINGS
@given(rounds)
def test_pool_never_grows_within_a_round_and_each_drop_has_one_reason(plan) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records = run_rounds(make_run(root, "r", n=N), POLICY, plan)
        dropped_this_round: set[str] = set()
        previous: set[str] = set()
        for record in records:
            current = pool(root, record)
            if record["kind"] == "reset":
                assert current == set(IDS)
                dropped_this_round = set()
            else:
                assert current <= previous
                assert not current & dropped_this_round  # never back before a reset
                decisions = pl.read_parquet(root / record["step"]["decisions"]["path"])
                assert decisions["sample_id"].is_unique().all()
                assert decisions["reason"].null_count() == 0
                dropped = set(decisions.filter(~pl.col("keep"))["sample_id"])
                assert dropped == previous - current
                dropped_this_round |= dropped
            previous = current


@SETTINGS
@given(rounds, st.data())
def test_diff_is_a_mirror_image(plan, data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records = run_rounds(make_run(root, "r", n=N), POLICY, plan)
        catalog = Catalog.load(root)
        a = catalog.by_id(data.draw(st.sampled_from(records))["id"])
        b = catalog.by_id(data.draw(st.sampled_from(records))["id"])
        forward, backward = diff_manifests(catalog, a, b), diff_manifests(catalog, b, a)
        assert forward.removed.equals(backward.added)
        assert forward.added.equals(backward.removed)
        assert set(forward.removed["sample_id"]) == pool(root, a.record) - pool(root, b.record)


@SETTINGS
@given(rounds)
def test_same_inputs_give_the_same_manifest_ids(plan) -> None:
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        a = run_rounds(make_run(Path(first), "a", n=N), POLICY, plan)
        b = run_rounds(make_run(Path(second), "b", n=N), POLICY, plan)
        assert [r["id"] for r in a] == [r["id"] for r in b]


@given(st.sets(st.sampled_from(IDS), min_size=1), st.sampled_from(IDS))
def test_ids_change_when_any_surviving_id_changes(survivors, other) -> None:
    changed = survivors ^ {other}
    record = {
        "schema_version": 1,
        "round": 0,
        "epoch": 1,
        "kind": "prune",
        "parent": "p",
        "policy": {},
        "scorer": None,
        "dataset": {"fingerprint": "f"},
        "pool": {"sha256": pool_hash(sorted(survivors))},
    }
    moved = {**record, "pool": {"sha256": pool_hash(sorted(changed))}}
    assert manifest_id(record) != manifest_id(moved)
    assert manifest_id(record) == manifest_id(dict(record))


@SETTINGS
@given(rounds)
def test_export_then_reingest_gives_the_same_ids(plan) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        last = run_rounds(make_run(root, "r", n=N), POLICY, plan)[-1]
        out = root / "export"
        export_pool(RunLayout(root, "r"), last, out, "parquet", rows_per_shard=3)
        if last["pool"]["size"] == 0:
            return
        data = DataConfig(path=str(out), id_column="sample_id", group_column="group")
        again = load_samples(data, [])
        assert set(again["sample_id"].to_pylist()) == pool(root, last)
