"""`stm manifests ...` and `stm export` through click's runner on a hand-built store."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result

from pipeline.cli import cli
from pipeline.config import PolicyConfig
from tests.store_builders import build_quarantine_store, make_run, run_rounds

STM = PolicyConfig(name="stm", delta=0.25, floor=0.5, tighten=0.5)
BASE = {f"s{i:03d}": 1.0 for i in range(6)}
ROUNDS = [[BASE, BASE | {"s000": 0.25, "s002": 0.5}], [BASE, BASE | {"s001": 0.125}]]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    run_rounds(make_run(tmp_path / "store", "stm-run"), STM, ROUNDS)
    return tmp_path / "store"


def invoke(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--store", str(store)], catch_exceptions=False)


def test_list_filters_by_run_and_round(store: Path) -> None:
    rows = json.loads(
        invoke(store, "manifests", "list", "--run", "stm-run", "--round", "1", "--json").stdout
    )
    assert [(r["round"], r["epoch"], r["kind"]) for r in rows] == [
        (1, 0, "reset"),
        (1, 1, "prune"),
        (1, 2, "prune"),
    ]
    table = invoke(store, "manifests", "list")
    assert table.exit_code == 0 and "r1 e2" in table.stdout


def test_show_by_prefix_and_log_of_a_run(store: Path) -> None:
    last = json.loads(invoke(store, "manifests", "show", "stm-run", "--json").stdout)
    shown = json.loads(invoke(store, "manifests", "show", last["id"][:8], "--json").stdout)
    assert shown == last
    assert "reproduce" in last and last["reproduce"]["config"] == "runs/stm-run/config.toml"
    log = json.loads(invoke(store, "manifests", "log", "stm-run", "--json").stdout)
    assert [(r["round"], r["epoch"], r["pool"]) for r in log] == [
        (0, 0, 6),
        (0, 1, 6),
        (0, 2, 4),
        (1, 0, 6),
        (1, 1, 6),
        (1, 2, 5),
    ]
    assert log[2]["by_reason"] == {"learning": 4, "mastered": 2}


def test_diff_ids_json_and_table(store: Path) -> None:
    args = ("manifests", "diff", "stm-run:0:2", "stm-run:1:2")
    assert invoke(store, *args, "--ids", "removed").stdout == "s001\n"
    assert invoke(store, *args, "--ids", "added").stdout == "s000\ns002\n"
    summary = json.loads(invoke(store, *args, "--json").stdout)
    assert summary["removed"]["by_reason"] == {"mastered": 1}
    assert summary["added"]["returned_at_reset"] == 2
    assert summary["added"]["samples"][0]["epoch"] == 2
    table = " ".join(invoke(store, *args).stdout.split())
    assert "s001" in table and "came back at a reset 2" in table
    assert "quarantined" not in table
    assert summary["quarantined"] == {
        "count": 0,
        "by_group": {},
        "by_side": {},
        "returned_at_reset": 0,
        "samples": [],
    }


def test_verify_ok_then_names_the_tampered_file(store: Path) -> None:
    ok = invoke(store, "manifests", "verify", "--all")
    assert ok.exit_code == 0 and "OK: 6 manifest(s)" in ok.stdout
    decisions = store / "runs" / "stm-run" / "decisions" / "r01-e002.parquet"
    pl.DataFrame({"sample_id": ["x"]}).write_parquet(decisions)
    failed = invoke(store, "manifests", "verify", "--run", "stm-run")
    assert failed.exit_code == 1
    assert f"FAIL {decisions}: missing or changed since" in failed.stderr
    one = invoke(store, "manifests", "verify", "stm-run:0:2", "--json")
    assert json.loads(one.stdout) == {"checked": 1, "problems": []}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("manifests", "verify"), 2, "give exactly one of REF, --run RUN or --all"),
        (("manifests", "show", "nope"), 1, "no manifest or run matches 'nope'"),
        (("manifests", "log", "stm-run:9:9"), 1, "has no step 'stm-run:9:9'"),
        (
            ("export", "stm-run", "--out", "/tmp/x", "--shards", "2", "--rows-per-shard", "2"),
            2,
            "give --shards or --rows-per-shard, not both",
        ),
    ],
)
def test_bad_references_and_usage(store: Path, args: tuple, code: int, message: str) -> None:
    result = invoke(store, *args)
    assert result.exit_code == code and message in result.output
    assert "Traceback" not in result.output


def test_export_writes_shards_and_reports_json(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    result = invoke(
        store,
        "export",
        "stm-run:0:2",
        "--out",
        str(out),
        "--format",
        "jsonl",
        "--shards",
        "2",
        "--json",
    )
    summary = json.loads(result.stdout)
    assert summary["rows"] == 4 and summary["shards"] == ["part-00000.jsonl", "part-00001.jsonl"]
    rows = [json.loads(line) for f in sorted(out.glob("*.jsonl")) for line in f.open()]
    assert sorted(r["sample_id"] for r in rows) == ["s001", "s003", "s004", "s005"]
    again = invoke(store, "export", "stm-run:0:2", "--out", str(out))
    assert again.exit_code == 1 and "already exists" in again.stderr


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (("manifests", "verify", "--all"), "Verifying 6 manifest(s): hashes, then lineage"),
        (("export", "stm-run:0:2", "--out", "{tmp}/shards"), "Exporting manifest"),
        (("manifests", "diff", "stm-run:0:2", "stm-run:1:2"), "Comparing the pools of"),
    ],
)
def test_progress_goes_to_a_terminals_stderr_and_json_stays_clean(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple, shown: str
) -> None:
    """Rich draws nothing when stderr is not a terminal; here it is told it is one."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    result = invoke(store, *(a.format(tmp=tmp_path) for a in args), "--json")
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)
    assert shown in result.stderr


@pytest.fixture
def guarded(tmp_path: Path) -> Path:
    """A run whose guard quarantined s003 and s005 at r0 e3 and s004 at r1 e2."""
    return build_quarantine_store(tmp_path / "guarded")


def test_diff_shows_quarantined_samples_in_their_own_section(guarded: Path) -> None:
    args = ("manifests", "diff", "guarded:0:1", "guarded:0:4")
    assert invoke(guarded, *args, "--ids", "removed").stdout == "s000\ns001\n"
    assert invoke(guarded, *args, "--ids", "quarantined").stdout == "s003\ns005\n"
    summary = json.loads(invoke(guarded, *args, "--json").stdout)
    assert summary["removed"]["by_reason"] == {"mastered": 2}
    quarantined = summary["quarantined"]
    assert (quarantined["count"], quarantined["by_side"]) == (2, {"removed": 2})
    assert [(s["sample_id"], s["reason"], s["epoch"]) for s in quarantined["samples"]] == [
        ("s003", "suspect-label", 3),
        ("s005", "suspect-label", 3),
    ]
    text = invoke(guarded, *args).stdout
    removed_part, quarantined_part = text.split("quarantined (suspect-label): 2")
    assert "s003" not in removed_part and "s000" in removed_part
    assert quarantined_part.count("s003") == 1 and "r0 e3" in quarantined_part


def test_review_lists_prints_and_writes_the_quarantine(guarded: Path, tmp_path: Path) -> None:
    table = invoke(guarded, "manifests", "review", "guarded:0:4").stdout
    assert "quarantined (suspect-label) in round 0 up to epoch 4" in table
    assert "s003" in table and "s005" in table and "s004" not in table
    listed = json.loads(invoke(guarded, "manifests", "review", "guarded", "--json").stdout)
    assert (listed["round"], listed["count"], listed["by_epoch"]) == (1, 1, {"2": 1})
    assert listed["samples"][0]["sample_id"] == "s004" and listed["out"] is None
    out = tmp_path / "review.jsonl"
    written = invoke(guarded, "manifests", "review", "guarded:0:3", "--out", str(out))
    assert "Wrote 2 samples quarantined (suspect-label) in round 0 up to epoch 3" in (
        written.stdout
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["sample_id"], r["label"]) for r in rows] == [
        ("s003", "label-3"),
        ("s005", "label-5"),
    ]


def test_export_writes_the_review_beside_the_shards(guarded: Path, tmp_path: Path) -> None:
    out, review = tmp_path / "shards", tmp_path / "review.parquet"
    result = invoke(
        guarded, "export", "guarded:0:4", "--out", str(out), "--review", str(review), "--json"
    )
    summary = json.loads(result.stdout)
    assert summary["rows"] == 2 and summary["review"]["count"] == 2
    assert summary["review"]["out"] == str(review) and summary["review"]["format"] == "parquet"
    rows = pl.read_parquet(review)
    assert rows["sample_id"].to_list() == ["s003", "s005"]
    assert rows["label"].to_list() == ["label-3", "label-5"]
    exported = pl.read_parquet(out / "*.parquet")["sample_id"].to_list()
    assert sorted(exported) == ["s002", "s004"]


def test_export_of_a_round_with_no_quarantine_writes_an_empty_review(
    guarded: Path, tmp_path: Path
) -> None:
    review = tmp_path / "review.jsonl"
    result = invoke(
        guarded, "export", "guarded:0:2", "--out", str(tmp_path / "s"), "--review", str(review)
    )
    assert result.exit_code == 0, result.output
    assert "No sample was quarantined (suspect-label) in round 0 up to epoch 2" in result.stdout
    assert review.read_bytes() == b""


@pytest.mark.parametrize(
    ("review", "code", "message"),
    [
        ("{tmp}/taken.parquet", 1, "taken.parquet: already exists; write the review to a new"),
        ("{tmp}/shards/review.parquet", 1, "inside the export directory"),
        ("{tmp}/review.csv", 2, "review.csv: must end in .parquet or .jsonl"),
    ],
)
def test_export_refuses_a_bad_review_path_before_writing_anything(
    guarded: Path, tmp_path: Path, review: str, code: int, message: str
) -> None:
    (tmp_path / "taken.parquet").write_bytes(b"keep me")
    shards = tmp_path / "shards"
    args = ("export", "guarded", "--out", str(shards), "--review", review.format(tmp=tmp_path))
    result = invoke(guarded, *args)
    assert result.exit_code == code and message in result.output
    assert "Traceback" not in result.output
    assert not shards.exists() and (tmp_path / "taken.parquet").read_bytes() == b"keep me"
