"""Diff, verify and export on hand-built stores (no training involved)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.catalog import Catalog
from pipeline.config import PolicyConfig
from pipeline.diff import counts, diff_manifests
from pipeline.errors import ManifestIntegrityError, ManifestNotFound, StoreError
from pipeline.manifest import encode_record, with_id
from pipeline.shards import export_pool, read_checksums
from pipeline.store import sha256_file
from pipeline.verify import manifest_paths, verify_store
from tests.store_builders import build_quarantine_store, make_run, run_rounds

STM = PolicyConfig(name="stm", delta=0.25, floor=0.5, tighten=0.5)
STANDARD = PolicyConfig(name="standard")
IDS = [f"s{i:03d}" for i in range(6)]
BASE = dict.fromkeys(IDS, 1.0)
# Round 0: s000 and s002 mastered at epoch 2. Round 1 (floor 0.25): s001 mastered.
ROUNDS = [
    [BASE, BASE | {"s000": 0.25, "s002": 0.5}],
    [BASE, BASE | {"s001": 0.125, "s003": 0.5}],
]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    run_rounds(make_run(tmp_path, "stm-run"), STM, ROUNDS)
    run_rounds(make_run(tmp_path, "std-run"), STANDARD, ROUNDS)
    return tmp_path


def test_find_by_prefix_run_and_step(store: Path) -> None:
    catalog = Catalog.load(store)
    last = catalog.find("stm-run")
    assert last.step == (1, 2)
    assert catalog.find(last.id[:10]) == last
    assert catalog.find("stm-run:0:2").step == (0, 2)
    with pytest.raises(ManifestNotFound, match=r"no manifest or run matches 'zzz'"):
        catalog.find("zzz")
    with pytest.raises(ManifestNotFound, match=r"run 'stm-run' has no step 'stm-run:7:1'"):
        catalog.find("stm-run:7:1")


def test_ambiguous_prefix_is_an_error(store: Path) -> None:
    with pytest.raises(ManifestNotFound, match=r"manifest id '' is ambiguous"):
        Catalog.load(store).find("")


def test_diff_across_a_round_says_when_and_why_and_who_came_back(store: Path) -> None:
    catalog = Catalog.load(store)
    end_r0, end_r1 = catalog.find("stm-run:0:2"), catalog.find("stm-run:1:2")
    result = diff_manifests(catalog, end_r0, end_r1)
    removed = result.removed.row(0, named=True)
    assert result.removed["sample_id"].to_list() == ["s001"]
    assert (removed["round"], removed["epoch"], removed["reason"]) == (1, 2, "mastered")
    assert (removed["loss"], removed["loss_prev"], removed["delta"]) == (0.125, 1.0, 0.875)
    assert (removed["floor"], removed["delta_threshold"], removed["policy"]) == (0.25, 0.25, "stm")
    assert removed["manifest"] == end_r1.id
    assert removed["returned_round"] is None
    assert result.added["sample_id"].to_list() == ["s000", "s002"]
    assert result.added["returned_round"].to_list() == [1, 1]
    assert result.added["epoch"].to_list() == [2, 2]
    assert counts(result.added, "group") == {"easy": 2}


def test_diff_is_a_mirror_image(store: Path) -> None:
    catalog = Catalog.load(store)
    a, b = catalog.find("stm-run:0:2"), catalog.find("stm-run:1:2")
    forward, backward = diff_manifests(catalog, a, b), diff_manifests(catalog, b, a)
    assert forward.removed.equals(backward.added)
    assert forward.added.equals(backward.removed)


def test_diff_across_runs_with_different_policies(store: Path) -> None:
    catalog = Catalog.load(store)
    result = diff_manifests(catalog, catalog.find("std-run"), catalog.find("stm-run"))
    assert result.removed["sample_id"].to_list() == ["s001"]
    assert result.added.height == 0
    standard_side = diff_manifests(catalog, catalog.find("stm-run"), catalog.find("std-run"))
    assert counts(standard_side.added, "reason") == {"mastered": 1}


@pytest.fixture
def guarded(tmp_path: Path) -> Catalog:
    """A run whose guard quarantined s003 and s005 at r0 e3 and s004 at r1 e2."""
    return Catalog.load(build_quarantine_store(tmp_path / "guarded"))


def test_diff_lists_quarantined_samples_apart_and_once(guarded: Catalog) -> None:
    step_3 = guarded.find("guarded:0:3")
    result = diff_manifests(guarded, guarded.find("guarded:0:1"), guarded.find("guarded:0:4"))
    assert result.removed["sample_id"].to_list() == ["s000", "s001"]
    assert counts(result.removed, "reason") == {"mastered": 2}
    assert result.quarantined["sample_id"].to_list() == ["s003", "s005"]
    assert result.quarantined.columns[:3] == ["sample_id", "group", "side"]
    assert result.quarantined["side"].to_list() == ["removed", "removed"]
    assert result.quarantined["manifest"].to_list() == [step_3.id] * 2
    assert result.quarantined["epoch"].to_list() == [3, 3]
    assert result.added.height == 0


def test_quarantine_diffs_are_mirror_images_across_a_reset(guarded: Catalog) -> None:
    a, b = guarded.find("guarded:0:4"), guarded.find("guarded:1:2")
    forward, backward = diff_manifests(guarded, a, b), diff_manifests(guarded, b, a)
    assert forward.removed.height == 0
    assert forward.added["sample_id"].to_list() == ["s000", "s001"]
    # s004 was quarantined in B's round; s003 and s005 in A's, and came back at the reset
    quarantined = forward.quarantined.select("sample_id", "side", "round", "returned_round")
    assert quarantined.rows() == [
        ("s003", "added", 0, 1),
        ("s004", "removed", 1, None),
        ("s005", "added", 0, 1),
    ]
    swapped = pl.col("side").replace({"added": "removed", "removed": "added"})
    assert forward.quarantined.with_columns(swapped).equals(backward.quarantined)
    assert forward.added.equals(backward.removed)


def test_consecutive_epochs_diff_matches_the_step_record(store: Path) -> None:
    catalog = Catalog.load(store)
    child = catalog.find("stm-run:0:2")
    result = diff_manifests(catalog, catalog.find("stm-run:0:1"), child)
    assert result.removed.height == child.record["step"]["dropped"]
    assert counts(result.removed, "group") == child.record["step"]["dropped_by_group"]


def test_verify_passes_on_an_intact_store(store: Path) -> None:
    checked, problems = verify_store(store, manifest_paths(store))
    assert (checked, problems) == (12, [])


def test_verify_reports_two_checks_per_manifest_as_it_goes(store: Path) -> None:
    checks: list[int] = []
    paths = manifest_paths(store)
    verify_store(store, paths, on_progress=checks.append)
    assert checks == [1] * 2 * len(paths)
    broken = paths[0]
    broken.write_text("{}")
    checks.clear()
    verify_store(store, paths, on_progress=checks.append)
    assert len(checks) == 2 * len(paths)


def test_verify_names_a_tampered_pool_file(store: Path) -> None:
    record = Catalog.load(store).find("stm-run:0:2").record
    pool = store / record["pool"]["path"]
    pl.DataFrame({"sample_id": ["s000"], "group": ["easy"]}).write_parquet(pool)
    _, problems = verify_store(store, manifest_paths(store))
    assert any(p.startswith(f"{pool}: ids do not match pool hash") for p in problems)


def test_verify_names_a_missing_parent(store: Path) -> None:
    parent = store / "runs" / "stm-run" / "manifests" / "r00-e001.json"
    parent_id = json.loads(parent.read_text())["id"]
    parent.unlink()
    _, problems = verify_store(store, manifest_paths(store, ["stm-run"]))
    assert f"r00-e002.json: parent manifest {parent_id} is missing from the store" in "\n".join(
        problems
    )


def test_verify_catches_a_forged_record_whose_pool_grew(store: Path) -> None:
    """A record forged with a self-consistent id still fails the lineage checks."""
    catalog = Catalog.load(store)
    parent, reset = catalog.find("stm-run:0:2").record, catalog.find("stm-run:0:0").record
    forged = with_id({**parent, "epoch": 3, "parent": parent["id"], "pool": reset["pool"]})
    path = store / "runs" / "stm-run" / "manifests" / "r00-e003.json"
    path.write_bytes(encode_record(forged))
    _, problems = verify_store(store, [path])
    assert any("pool grew within a round: sample 's000'" in p for p in problems)
    assert any("scored 6 samples, the parent pool has 4" in p for p in problems)
    assert any("parent pool 4 - dropped 2 != pool 6" in p for p in problems)


@pytest.mark.parametrize(("fmt", "loader"), [("parquet", "parquet"), ("jsonl", "json")])
def test_export_round_trips_through_datasets_and_pyarrow(
    store: Path, tmp_path: Path, fmt: str, loader: str
) -> None:
    import datasets

    entry = Catalog.load(store).find("stm-run:1:2")
    layout = make_layout_for(store, entry)
    out = tmp_path / "shards"
    summary = export_pool(layout, entry.record, out, fmt, rows_per_shard=2)
    expected = set(pl.read_parquet(store / entry.record["pool"]["path"])["sample_id"])
    assert summary.rows == len(expected) == 5
    assert summary.shards == [f"part-{i:05d}.{fmt}" for i in range(3)]
    files = [str(out / name) for name in summary.shards]
    loaded = datasets.load_dataset(loader, data_files=files, split="train")
    assert set(loaded["sample_id"]) == expected
    # every original column, none of the built-in model's encoded ones
    assert set(loaded.column_names) == {"sample_id", "group", "values"}
    if fmt == "parquet":
        assert set(pq.read_table(out).column("sample_id").to_pylist()) == expected
        whole_dir = datasets.load_dataset("parquet", data_files=f"{out}/*.parquet", split="train")
        assert set(whole_dir["sample_id"]) == expected
    sums = read_checksums(out)
    assert sums == {name: sha256_file(out / name) for name in [*summary.shards, "_manifest.json"]}
    assert json.loads((out / "_manifest.json").read_text())["id"] == entry.id


def test_export_shard_count_and_refusal_to_overwrite(store: Path, tmp_path: Path) -> None:
    entry = Catalog.load(store).find("stm-run:0:0")
    layout = make_layout_for(store, entry)
    written: list[int] = []
    summary = export_pool(
        layout, entry.record, tmp_path / "out", "parquet", shards=4, on_progress=written.append
    )
    assert [pq.read_metadata(tmp_path / "out" / s).num_rows for s in summary.shards] == [2, 2, 2]
    assert written == [2, 2, 2]
    with pytest.raises(StoreError, match=r"out: already exists"):
        export_pool(layout, entry.record, tmp_path / "out", "parquet")


def make_layout_for(store: Path, entry):
    from pipeline.store import RunLayout

    return RunLayout(store, entry.record["run"])


def test_verify_recounts_from_the_files(store: Path) -> None:
    """Counts edited into a record (with a recomputed id) do not match the files."""
    path = store / "runs" / "stm-run" / "manifests" / "r00-e002.json"
    record = json.loads(path.read_text())
    step = {**record["step"], "by_reason": {"learning": 6}, "dropped_by_group": {"hard": 2}}
    path.write_bytes(encode_record(with_id({**record, "step": step})))
    _, problems = verify_store(store, [path])
    assert any("step.by_reason {'learning': 6} but the decisions hold" in p for p in problems)
    assert any("step.dropped_by_group {'hard': 2}" in p for p in problems)


def test_one_broken_manifest_does_not_hide_other_runs(store: Path) -> None:
    path = store / "runs" / "stm-run" / "manifests" / "r01-e001.json"
    path.write_text(path.read_text().replace('"round": 1', '"round": 7'))
    catalog = Catalog.load(store)
    assert catalog.find("std-run").record["run"] == "std-run"
    with pytest.raises(ManifestNotFound, match=r"failed their id check"):
        catalog.chain(catalog.find("stm-run"))


def test_export_refuses_a_pool_file_that_does_not_match(store: Path, tmp_path: Path) -> None:
    entry = Catalog.load(store).find("stm-run:0:2")
    pl.DataFrame({"sample_id": ["s001"], "group": ["hard"]}).write_parquet(
        store / entry.record["pool"]["path"]
    )
    with pytest.raises(ManifestIntegrityError, match=r"ids do not match the pool hash"):
        export_pool(make_layout_for(store, entry), entry.record, tmp_path / "o", "parquet")
    assert not (tmp_path / "o").exists()
