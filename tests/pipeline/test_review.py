"""The review list of quarantined samples, on hand-built stores whose steps quarantine
chosen samples as the noise guard does (`keep` false, reason `suspect-label`) and whose
records carry a `noise` estimate (`tests.store_builders.build_quarantine_store`)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from pipeline.catalog import Catalog
from pipeline.cli import cli
from pipeline.errors import StoreError
from pipeline.label_noise import SUSPECT_LABEL
from pipeline.manifest import with_id
from pipeline.review import (
    REVIEW_SCHEMA,
    quarantined_at_step,
    read_review,
    with_sample_columns,
    write_review,
)
from pipeline.verify import manifest_paths, verify_store
from tests.store_builders import build_quarantine_store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return build_quarantine_store(tmp_path / "store")


def test_the_built_store_is_one_the_pipeline_could_have_written(store: Path) -> None:
    record = Catalog.load(store).find("guarded:0:3").record
    assert record["noise"]["quarantined"] == 2
    assert record["step"]["by_reason"] == {"learning": 3, SUSPECT_LABEL: 2}
    assert with_id({k: v for k, v in record.items() if k != "noise"})["id"] == record["id"]
    assert verify_store(store, manifest_paths(store)) == (8, [])


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("guarded:0:2", []),
        ("guarded:0:3", [("s003", 3), ("s005", 3)]),
        ("guarded:0:4", [("s003", 3), ("s005", 3)]),
        ("guarded:1:0", []),
        ("guarded:1:2", [("s004", 2)]),
    ],
)
def test_review_lists_the_rounds_quarantines_up_to_the_manifest_once_each(
    store: Path, ref: str, expected: list[tuple[str, int]]
) -> None:
    catalog = Catalog.load(store)
    entry = catalog.find(ref)
    review = read_review(catalog, entry)
    assert list(review.rows.select("sample_id", "epoch").iter_rows()) == expected
    assert review.rows.schema == REVIEW_SCHEMA
    assert (review.manifest, review.round_index, review.epoch) == (entry.id, *entry.step)
    assert review.rows["round"].to_list() == [entry.step[0]] * len(expected)


def test_review_rows_carry_the_loss_and_running_diagnostics(store: Path) -> None:
    catalog = Catalog.load(store)
    review = read_review(catalog, catalog.find("guarded:0:4"))
    row = review.rows.row(0, named=True)
    assert row["manifest"] == catalog.find("guarded:0:3").id
    assert (row["group"], row["loss"], row["loss_prev"], row["delta"]) == ("hard", 1.0, 1.0, 0.0)
    assert (row["passes"], row["mean_loss"], row["min_loss"]) == (3, 1.0, 1.0)
    assert review.by_epoch == {3: 2} and review.by_group == {"hard": 2}


def test_scores_without_diagnostics_give_nulls() -> None:
    decisions = pl.LazyFrame(
        {
            "sample_id": ["a", "b"],
            "group": ["g", "g"],
            "keep": [False, False],
            "reason": [SUSPECT_LABEL, "mastered"],
            "loss": [2.0, 0.1],
            "loss_prev": [2.0, 1.0],
            "delta": [0.0, 0.9],
        }
    )
    older = pl.LazyFrame({"sample_id": ["a", "b"], "loss": [2.0, 0.1]})
    for scores in (older, None):
        rows = quarantined_at_step(decisions, scores, 0, 3, "m").collect()
        assert rows["sample_id"].to_list() == ["a"]
        assert rows.select("passes", "mean_loss", "min_loss").row(0) == (None, None, None)


def test_dataset_columns_follow_and_a_clashing_name_gets_a_suffix() -> None:
    review = pl.LazyFrame(
        {"sample_id": ["a"], "group": ["g"], "loss": [2.0]}, schema_overrides={"loss": pl.Float32}
    )
    samples = pl.LazyFrame(
        {"sample_id": ["a", "b"], "group": ["g", "g"], "label": [3, 4], "loss": ["x", "y"]}
    )
    joined = with_sample_columns(review, samples, ["sample_id", "group", "label", "loss"])
    assert joined.collect().to_dicts() == [
        {"sample_id": "a", "group": "g", "loss": 2.0, "label": 3, "loss_dataset": "x"}
    ]


@pytest.mark.parametrize("name", ["review.parquet", "review.jsonl"])
def test_write_review_adds_the_dataset_columns(store: Path, tmp_path: Path, name: str) -> None:
    catalog = Catalog.load(store)
    review = read_review(catalog, catalog.find("guarded"))
    path = tmp_path / "out" / name
    write_review(store, review, path, "jsonl" if name.endswith("jsonl") else "parquet")
    if name.endswith("jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    else:
        rows = pl.read_parquet(path).to_dicts()
    assert [(r["sample_id"], r["label"], r["epoch"]) for r in rows] == [("s004", "label-4", 2)]
    assert list(rows[0]) == [*REVIEW_SCHEMA, "label"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_an_empty_review_is_an_empty_file_with_the_schema(store: Path, tmp_path: Path) -> None:
    catalog = Catalog.load(store)
    review = read_review(catalog, catalog.find("guarded:0:2"))
    parquet, jsonl = tmp_path / "r.parquet", tmp_path / "r.jsonl"
    write_review(store, review, parquet, "parquet")
    write_review(store, review, jsonl, "jsonl")
    written = pl.read_parquet(parquet)
    assert written.height == 0 and written.schema == pl.Schema(
        {**REVIEW_SCHEMA, "label": pl.String}
    )
    assert jsonl.read_bytes() == b""


def test_write_review_refuses_an_existing_file_and_the_shard_directory(
    store: Path, tmp_path: Path
) -> None:
    catalog = Catalog.load(store)
    review = read_review(catalog, catalog.find("guarded"))
    existing = tmp_path / "r.parquet"
    existing.write_bytes(b"keep me")
    with pytest.raises(StoreError, match=r"r.parquet: already exists; write the review"):
        write_review(store, review, existing, "parquet")
    assert existing.read_bytes() == b"keep me"
    shards = tmp_path / "shards"
    with pytest.raises(StoreError, match=r"inside the export directory .*shards"):
        write_review(store, review, shards / "review.parquet", "parquet", shards)
    blocked = existing / "inside" / "review.jsonl"  # under a file: no directory to make
    with pytest.raises(StoreError, match=r"r.parquet is a file, not a directory"):
        write_review(store, review, blocked, "jsonl")


def test_export_refuses_a_review_under_a_file_before_writing_any_shard(
    store: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "exists.parquet"
    blocker.write_bytes(b"x")
    result = CliRunner().invoke(
        cli,
        ["export", "guarded", "--store", str(store), "--out", str(tmp_path / "shards")]
        + ["--review", str(blocker / "r.jsonl")],
    )
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == f"Error: {blocker / 'r.jsonl'}: {blocker} is a file, not a directory"
    )
    assert not (tmp_path / "shards").exists()
