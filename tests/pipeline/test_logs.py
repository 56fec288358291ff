"""Logging outside a flow: the CLI's console handler prints the stm loggers on stderr at the
level -v or STM_LOG_LEVEL asks for, stdout stays JSON, and the CLI tells Prefect to route
the same loggers into flow runs (tests/flows/test_logging.py follows them there)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from pipeline import logs
from pipeline.cli import cli
from pipeline.errors import ConfigError
from tests.builders import make_sample_table, make_sum_scorer


@pytest.fixture(autouse=True)
def restore_stm_logger() -> Iterator[None]:
    """The CLI configures the process-wide "stm" logger: undo it after each test."""
    stm = logging.getLogger(logs.ROOT_LOGGER)
    handlers, level, propagate = list(stm.handlers), stm.level, stm.propagate
    yield
    stm.handlers[:] = handlers
    stm.setLevel(level)
    stm.propagate = propagate


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({}, "stm"),
        ({logs.EXTRA_LOGGERS_VARIABLE: "mylib"}, "mylib,stm"),
        ({logs.EXTRA_LOGGERS_VARIABLE: "stm, mylib"}, "stm, mylib"),
    ],
)
def test_prefect_is_told_to_route_the_stm_loggers(before: dict, after: str) -> None:
    environ = dict(before)
    logs.route_to_prefect(environ)
    assert environ[logs.EXTRA_LOGGERS_VARIABLE] == after
    assert environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] == "ignore"


def test_a_users_choice_for_records_outside_a_run_is_kept() -> None:
    environ = {"PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "warn"}
    logs.route_to_prefect(environ)
    assert environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] == "warn"


def test_every_command_routes_the_stm_loggers_before_prefect_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(logs.EXTRA_LOGGERS_VARIABLE, raising=False)
    assert invoke("runs", "--store", str(tmp_path)).exit_code == 0
    assert os.environ[logs.EXTRA_LOGGERS_VARIABLE] == "stm"


@pytest.mark.parametrize(
    ("verbose", "configured", "default", "level"),
    [
        (0, None, logging.INFO, logging.INFO),
        (1, None, logging.INFO, logging.DEBUG),
        (1, None, logging.WARNING, logging.INFO),
        (5, None, logging.WARNING, logging.DEBUG),
        (0, "debug", logging.WARNING, logging.DEBUG),
        (0, "ERROR", logging.INFO, logging.ERROR),
        (1, "WARNING", logging.INFO, logging.INFO),
        (0, "30", logging.INFO, logging.WARNING),
    ],
)
def test_console_level(verbose: int, configured: str | None, default: int, level: int) -> None:
    assert logs.console_level(verbose, configured, default) == level


def test_a_bad_log_level_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"STM_LOG_LEVEL=LOUD: not a log level \(one of DEBUG"):
        logs.parse_level("LOUD")
    monkeypatch.setenv(logs.LEVEL_VARIABLE, "LOUD")
    result = invoke("runs", "--store", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: STM_LOG_LEVEL=LOUD: not a log level (one of DEBUG, INFO, WARNING, ERROR)"
    )


@pytest.fixture
def scoring_files(tmp_path: Path) -> list[str]:
    data = tmp_path / "data.parquet"
    pq.write_table(make_sample_table(n=6), data)
    scorer = make_sum_scorer(tmp_path / "sum.onnx")
    return [
        "score",
        "--scorer",
        str(scorer),
        "--data",
        str(data),
        "--id-column",
        "sample_id",
        "--group-column",
        "group",
        "--out",
        str(tmp_path / "scores.parquet"),
        "--json",
    ]


def test_stm_logs_go_to_stderr_outside_a_flow(scoring_files: list[str]) -> None:
    result = invoke(*scoring_files)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 6
    assert "INFO     " in result.stderr
    assert "data.parquet: 6 samples from 1 file(s), 2 group(s)" in result.stderr
    assert "scored 6 samples" not in result.stderr  # a debug line


def test_verbose_shows_debug_lines_and_a_level_hides_info(
    scoring_files: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    verbose = invoke("-v", *scoring_files)
    assert "DEBUG    " in verbose.stderr and "scored 6 samples" in verbose.stderr
    monkeypatch.setenv(logs.LEVEL_VARIABLE, "WARNING")
    quiet = invoke(*scoring_files[:-3], "--out", scoring_files[-2] + ".2", "--json")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""


def test_a_terminal_gets_richs_layout_a_pipe_one_line_per_record(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    logs.log_to_console(logging.INFO)
    message = "a long line " + "x" * 120
    logging.getLogger("stm.test").info(message)
    assert capsys.readouterr().err == f"INFO     {message}\n"
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    logging.getLogger("stm.test").info("on a terminal")
    assert "on a terminal" in capsys.readouterr().err
