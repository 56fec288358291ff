"""The `stm` command line through click's runner: help, JSON output, and the one-line
error (exit 1, no traceback) for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipeline.cli import cli

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.toml")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_line_error(result: Result, message: str) -> None:
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["run", "runs", "--verbose", "STM_LOG_LEVEL"]),
        (
            ["run"],
            [
                "--config",
                "--store",
                "--data",
                "--epochs",
                "--rounds",
                "--seed",
                "--policy",
                "--floor",
                "--json",
                "--dry-run",
                "PREFECT_API_URL",
            ],
        ),
        (["runs"], ["--store", "--json"]),
    ],
)
def test_help_explains_every_command(args: list[str], expected: list[str]) -> None:
    result = invoke(*args, "--help")
    assert result.exit_code == 0
    for word in expected:
        assert word in result.output


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


def test_run_then_list_runs_as_json(store: Path) -> None:
    result = invoke(
        "run",
        "--config",
        TINY,
        "--store",
        str(store),
        "--run-id",
        "cli",
        "--epochs",
        "2",
        "--rounds",
        "1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run"] == "cli"
    assert [(m["round"], m["epoch"]) for m in summary["manifests"]] == [(0, 0), (0, 1), (0, 2)]
    assert "Manifests of run cli are in" in " ".join(result.stderr.split())
    assert (store / "runs" / "cli" / "config.toml").read_text().count("epochs = 2") == 1

    listed = json.loads(invoke("runs", "--store", str(store), "--json").stdout)
    assert [(r["run"], r["steps"], r["pool"]) for r in listed] == [
        ("cli", 3, summary["manifests"][-1]["pool"])
    ]
    table = invoke("runs", "--store", str(store))
    assert table.exit_code == 0 and "cli" in table.output


def test_run_on_a_users_jsonl_dataset(store: Path, tmp_path: Path) -> None:
    rows = [
        {"id": i, "kind": "odd" if i % 2 else "even", "q": f"{i}+1=", "a": str(i + 1)}
        for i in range(12)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = invoke(
        "run",
        "--config",
        TINY,
        "--store",
        str(store),
        "--run-id",
        "users",
        "--data",
        str(data),
        "--id-column",
        "id",
        "--group-column",
        "kind",
        "--prompt-column",
        "q",
        "--target-column",
        "a",
        "--rounds",
        "1",
        "--epochs",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)["manifests"][-1]
    assert final["pool_by_group"].keys() <= {"odd", "even"}
    assert final["accuracy"] == {}


def test_runs_of_an_empty_store(tmp_path: Path) -> None:
    result = invoke("runs", "--store", str(tmp_path))
    assert result.exit_code == 0 and "No runs in" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runs", "--store", "/nonexistent/store"], "/nonexistent/store: store not found"),
        (["run", "--config", "/nonexistent.toml"], "/nonexistent.toml: config file not found"),
        (["run", "--data", "/nonexistent/data.jsonl"], "/nonexistent/data.jsonl"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args: list[str], message: str) -> None:
    assert_one_line_error(invoke(*args), message)


def test_missing_column_in_users_data_names_file_and_column(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("question,answer\n1+1=,2\n")
    result = invoke("run", "--data", str(data), "--store", str(tmp_path / "s"))
    assert_one_line_error(result, "'prompt'")
    assert "d.csv" in result.stderr


def test_unknown_policy_is_rejected_by_the_option() -> None:
    result = invoke("run", "--policy", "nope")
    assert result.exit_code == 2 and "'nope' is not one of" in result.output


def test_bad_data_fails_before_orchestration_starts(tmp_path: Path, monkeypatch) -> None:
    def no_flow(*args, **kwargs):
        raise AssertionError("the flow must not start on bad data")

    monkeypatch.setattr("pipeline.cli.run._run_flow", no_flow)
    data = tmp_path / "dup.jsonl"
    data.write_text('{"id": 1, "prompt": "1+1=", "target": "2"}\n' * 2)
    result = invoke("run", "--data", str(data), "--id-column", "id", "--store", str(tmp_path))
    assert_one_line_error(result, "duplicate sample_id '1'")
    assert not (tmp_path / "runs").exists()


def test_unreachable_prefect_server_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    result = invoke("run", "--config", TINY, "--store", str(tmp_path))
    assert_one_line_error(
        result, "PREFECT_API_URL=http://127.0.0.1:9/api: Prefect server not reachable"
    )


def test_runs_reports_completion(store: Path) -> None:
    listed = json.loads(invoke("runs", "--store", str(store), "--json").stdout)
    assert {r["run"]: r["status"] for r in listed}["cli"] == "complete"
