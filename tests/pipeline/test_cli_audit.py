"""`stm manifests ...` and `stm export` through click's runner on a hand-built store."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result

from pipeline.cli import cli
from pipeline.config import PolicyConfig
from tests.store_builders import make_run, run_rounds

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
