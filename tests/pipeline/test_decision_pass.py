"""The bounded-memory pass over a step's decisions, with slices of 3 rows so that every
check meets slice boundaries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from pipeline import decision_pass, policies
from pipeline.decision_pass import Misaligned
from pipeline.errors import ManifestIntegrityError
from pipeline.manifest import pool_hash
from pipeline.pruning import prune_step, reset_pool
from tests.pipeline.test_manifest import POLICY, make_layout, step

IDS = [f"s{i:03d}" for i in range(8)]


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decision_pass, "PASS_ROWS", 3)


def write_decisions(path: Path, ids: list[str], keep: list[bool]) -> Path:
    pl.DataFrame(
        {
            "sample_id": ids,
            "keep": keep,
            "reason": ["kept" if k else "mastered" for k in keep],
            "loss": [0.5] * len(ids),
            "loss_prev": [1.0] * len(ids),
            "delta": [0.5] * len(ids),
            "likely_mislabeled": [None] * len(ids),
        },
        schema_overrides={
            "loss": pl.Float32,
            "loss_prev": pl.Float32,
            "delta": pl.Float32,
            "likely_mislabeled": pl.Boolean,
        },
    ).write_parquet(path)
    return path


def write_pool(path: Path, ids: list[str]) -> Path:
    groups = ["easy" if i % 2 else "hard" for i in range(len(ids))]
    pl.DataFrame({"sample_id": ids, "group": groups}).write_parquet(path)
    return path


def run_pass(tmp_path: Path, ids: list[str], keep: list[bool], parent: list[str]):
    return decision_pass.decision_pass(
        write_decisions(tmp_path / "staged.parquet", ids, keep),
        write_pool(tmp_path / "parent.parquet", parent),
        tmp_path / "decisions.parquet",
        tmp_path / "pool.parquet",
    )


def test_pass_writes_decisions_with_groups_the_pool_its_hash_and_counts(
    tmp_path: Path,
) -> None:
    keep = [i % 3 != 0 for i in range(len(IDS))]
    seen = run_pass(tmp_path, IDS, keep, IDS)
    survivors = [i for i, k in zip(IDS, keep, strict=True) if k]
    pool = pl.read_parquet(tmp_path / "pool.parquet")
    assert pool["sample_id"].to_list() == survivors
    assert (seen.scored, seen.pool_size, seen.pool_sha256) == (8, 5, pool_hash(survivors))
    assert seen.kept == {("kept", "easy"): 3, ("kept", "hard"): 2}
    assert seen.dropped == {("mastered", "hard"): 2, ("mastered", "easy"): 1}
    decided = pl.read_parquet(tmp_path / "decisions.parquet")
    assert decided.columns == list(decision_pass.DECISION_COLUMNS)
    assert decided["group"].to_list() == ["hard", "easy"] * 4
    assert decided["keep"].to_list() == keep


@pytest.mark.parametrize(
    ("ids", "parent"),
    [
        (["a", "b", "c", "c", "d"], ["a", "b", "c", "d", "e"]),  # repeat across slices
        (["a", "b", "c", "e", "d"], ["a", "b", "c", "d", "e"]),  # out of order
        (["a", "b", "x"], ["a", "b", "c"]),  # a stranger
        (["a", "b"], ["a", "b", "c"]),  # one missing
    ],
)
def test_pass_refuses_decisions_that_do_not_line_up_with_the_parent(
    tmp_path: Path, ids: list[str], parent: list[str]
) -> None:
    with pytest.raises(Misaligned):
        run_pass(tmp_path, ids, [True] * len(ids), parent)


def test_pass_of_an_all_dropped_step_and_of_an_empty_pool(tmp_path: Path) -> None:
    seen = run_pass(tmp_path, IDS, [False] * len(IDS), IDS)
    assert (seen.pool_size, seen.pool_sha256) == (0, pool_hash([]))
    assert pl.read_parquet(tmp_path / "pool.parquet").columns == ["sample_id", "group"]
    empty = tmp_path / "empty"
    empty.mkdir()
    seen = run_pass(empty, [], [], [])
    assert (seen.scored, seen.pool_size) == (0, 0)


def test_a_null_id_does_not_line_up(tmp_path: Path) -> None:
    with pytest.raises(Misaligned):
        run_pass(tmp_path, ["a", None, "c"], [True] * 3, ["a", "b", "c"])


def reversing_stm(scores: pl.LazyFrame, params: policies.PolicyParams) -> pl.LazyFrame:
    """STM's decisions in reverse id order, as a policy that reorders rows gives them."""
    return policies.stm(scores, params).sort("sample_id", descending=True)


def two_epochs(layout, second: dict[str, float]) -> dict:
    m0 = reset_pool(layout, 0, None, POLICY, "fp")
    m1 = prune_step(layout, m0, step(layout, 0, 1, dict.fromkeys(IDS, 1.0)), POLICY)
    return prune_step(layout, m1, step(layout, 0, 2, second), POLICY)


def test_a_policy_that_reorders_rows_records_the_same_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decisions are sorted once and give the same pool, manifest id and decisions
    file as an order-keeping policy."""
    second = dict.fromkeys(IDS, 1.0) | {"s000": 0.25, "s003": 0.25, "s007": 0.5}
    records = {}
    for name, policy in {"stm": policies.stm, "reversed": reversing_stm}.items():
        entry = dataclasses.replace(policies.POLICIES["stm"], decide=policy)
        monkeypatch.setitem(policies.POLICIES, "stm", entry)
        layout = make_layout(tmp_path / name, n=8)
        m2 = two_epochs(layout, second)
        records[name] = (m2, (tmp_path / name / m2["step"]["decisions"]["path"]).read_bytes())
    (ordered, ordered_bytes), (reordered, reordered_bytes) = records.values()
    assert reordered["id"] == ordered["id"]
    assert reordered["step"]["by_reason"] == {"learning": 5, "mastered": 3}
    assert reordered_bytes == ordered_bytes


def test_an_unsorted_parent_pool_is_named(tmp_path: Path) -> None:
    layout = make_layout(tmp_path, n=8)
    m0 = reset_pool(layout, 0, None, POLICY, "fp")
    pool = tmp_path / m0["pool"]["path"]
    pl.read_parquet(pool).reverse().write_parquet(pool)
    with pytest.raises(ManifestIntegrityError, match=r"is not sorted by sample_id"):
        prune_step(layout, m0, step(layout, 0, 1, dict.fromkeys(IDS, 1.0)), POLICY)


def test_a_failed_step_leaves_no_decisions_pool_or_temporary_file(tmp_path: Path) -> None:
    layout = make_layout(tmp_path, n=8)
    m0 = reset_pool(layout, 0, None, POLICY, "fp")
    stored = sorted(p.name for p in (tmp_path / "pools").iterdir())
    with pytest.raises(ManifestIntegrityError, match=r"sample 'zzz' is not in the pool"):
        prune_step(layout, m0, step(layout, 0, 1, dict.fromkeys([*IDS[1:], "zzz"], 1.0)), POLICY)
    assert sorted(p.name for p in (tmp_path / "pools").iterdir()) == stored
    assert not list(layout.decisions(0, 1).parent.iterdir())
