"""`stm score` and `stm prune` for users with their own training loop: the curation half
alone writes the same store, and it verifies."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from pipeline.cli import cli
from tests.builders import make_sample_table, make_sum_scorer

DATA = ("--id-column", "sample_id", "--group-column", "group")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "data.parquet"
    pq.write_table(make_sample_table(n=6), data)
    return {
        "data": data,
        "scorer": make_sum_scorer(tmp_path / "sum.onnx"),
        "store": tmp_path / "store",
        "dir": tmp_path,
    }


def test_score_then_prune_into_a_new_run_then_follow_up(files: dict[str, Path]) -> None:
    first = files["dir"] / "scores-1.parquet"
    scored = invoke(
        "score",
        "--scorer",
        str(files["scorer"]),
        "--data",
        str(files["data"]),
        *DATA,
        "--out",
        str(first),
        "--json",
    )
    assert json.loads(scored.stdout)["samples"] == 6
    frame = pl.read_parquet(first)
    assert frame.columns == [
        "sample_id",
        "round",
        "epoch",
        "loss",
        "loss_prev",
        "delta",
        "rel_delta",
        "n_tokens",
        "passes",
        "mean_loss",
        "min_loss",
        "wander",
        "calm",
    ]
    assert frame["loss"].to_list() == [0.0, 1.5, 2.0, 3.5, 4.0, 5.5]

    baseline = json.loads(
        invoke(
            "prune",
            "--scores",
            str(first),
            "--run",
            "mine",
            "--data",
            str(files["data"]),
            *DATA,
            "--scorer",
            str(files["scorer"]),
            "--store",
            str(files["store"]),
            "--json",
        ).stdout
    )
    assert (baseline["round"], baseline["epoch"], baseline["pool"]) == (0, 1, 6)
    assert baseline["dropped_by_reason"] == {"baseline": 6}

    second = files["dir"] / "scores-2.parquet"
    pl.DataFrame(
        {"sample_id": frame["sample_id"], "loss": [0.0, 0.1, 1.9, 0.2, 4.0, 5.5]}
    ).write_parquet(second)
    rescored = files["dir"] / "scores-2-deltas.parquet"
    # `stm score --prev` computes the deltas; here the losses come from "another model"
    pl.read_parquet(second).join(
        frame.select("sample_id", pl.col("loss").alias("loss_prev")), on="sample_id"
    ).with_columns(
        delta=pl.col("loss_prev") - pl.col("loss"),
        rel_delta=(pl.col("loss_prev") - pl.col("loss")) / pl.col("loss_prev"),
    ).write_parquet(rescored)
    step = json.loads(
        invoke(
            "prune",
            "--scores",
            str(rescored),
            "--parent",
            baseline["id"][:12],
            "--floor",
            "0.5",
            "--delta",
            "1.0",
            "--tokens-trained",
            "40",
            "--store",
            str(files["store"]),
            "--json",
        ).stdout
    )
    assert (step["epoch"], step["pool"], step["dropped"]) == (2, 4, 2)
    assert step["tokens_trained"] == 40
    verified = invoke("manifests", "verify", "--all", "--store", str(files["store"]))
    assert verified.exit_code == 0, verified.output
    removed = invoke(
        "manifests",
        "diff",
        baseline["id"],
        step["id"],
        "--ids",
        "removed",
        "--store",
        str(files["store"]),
    )
    assert removed.stdout.split() == ["s001", "s003"]


def test_score_with_prev_computes_deltas(files: dict[str, Path]) -> None:
    first, second = files["dir"] / "a.parquet", files["dir"] / "b.parquet"
    args = ("score", "--scorer", str(files["scorer"]), "--data", str(files["data"]), *DATA)
    invoke(*args, "--out", str(first))
    invoke(*args, "--out", str(second), "--prev", str(first), "--epoch", "2")
    frame = pl.read_parquet(second)
    assert frame["delta"].to_list() == [0.0] * 6 and frame["epoch"].unique().to_list() == [2]


def test_prune_rejects_scores_of_samples_outside_the_pool(files: dict[str, Path]) -> None:
    scores = files["dir"] / "s.parquet"
    pl.DataFrame({"sample_id": ["s000", "zzz"], "loss": [1.0, 1.0]}).write_parquet(scores)
    result = invoke(
        "prune",
        "--scores",
        str(scores),
        "--run",
        "r",
        "--data",
        str(files["data"]),
        *DATA,
        "--store",
        str(files["store"]),
    )
    assert result.exit_code == 1
    assert "sample 'zzz' is not in the pool of manifest" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--parent", "x", "--run", "y"), "give --parent ID, or --run NAME with --data"),
        (("--run", "y"), "--run needs --data"),
    ],
)
def test_prune_usage_errors(files: dict[str, Path], args: tuple, message: str) -> None:
    scores = files["dir"] / "s.parquet"
    pl.DataFrame({"sample_id": ["s000"], "loss": [1.0]}).write_parquet(scores)
    result = invoke("prune", "--scores", str(scores), *args, "--store", str(files["store"]))
    assert result.exit_code == 2 and message in result.output


def test_scores_file_without_loss_is_named(files: dict[str, Path]) -> None:
    scores = files["dir"] / "s.parquet"
    pl.DataFrame({"sample_id": ["s000"]}).write_parquet(scores)
    result = invoke(
        "prune",
        "--scores",
        str(scores),
        "--run",
        "r",
        "--data",
        str(files["data"]),
        *DATA,
        "--store",
        str(files["store"]),
    )
    assert result.exit_code == 1
    assert f"{scores}: column 'loss' missing from the scores file" in result.stderr


def test_check_scorer_ok_and_every_problem_listed(files: dict[str, Path]) -> None:
    ok = invoke("check-scorer", str(files["scorer"]), "--data", str(files["data"]), *DATA)
    assert ok.exit_code == 0 and "meets the scorer contract" in ok.stdout
    bad = make_sum_scorer(files["dir"] / "bad.onnx", input_name="pixels", output_name="nll")
    result = invoke("check-scorer", str(bad), "--data", str(files["data"]), *DATA, "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert any("no output named 'loss'" in p for p in problems)
    assert any("input 'pixels' has no column of that name" in p for p in problems)


def test_prune_after_a_step_that_has_a_successor_is_refused(files: dict[str, Path]) -> None:
    scores = files["dir"] / "s.parquet"
    pl.DataFrame({"sample_id": [f"s{i:03d}" for i in range(6)], "loss": [1.0] * 6}).write_parquet(
        scores
    )
    first = json.loads(
        invoke(
            "prune",
            "--scores",
            str(scores),
            "--run",
            "r",
            "--data",
            str(files["data"]),
            *DATA,
            "--store",
            str(files["store"]),
            "--json",
        ).stdout
    )
    reset = invoke("manifests", "show", "r:0:0", "--json", "--store", str(files["store"]))
    result = invoke(
        "prune",
        "--scores",
        str(scores),
        "--parent",
        json.loads(reset.stdout)["id"],
        "--store",
        str(files["store"]),
    )
    assert result.exit_code == 1 and "already has a next step" in result.stderr
    assert invoke("manifests", "verify", "--all", "--store", str(files["store"])).exit_code == 0
    assert first["epoch"] == 1


def test_scoring_shows_progress_on_a_terminal_and_keeps_json_clean(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    out = files["dir"] / "scores.parquet"
    args = ["--scorer", str(files["scorer"]), "--data", str(files["data"]), *DATA]
    result = invoke("score", *args, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 6
    assert "Scoring" in result.stderr and "samples" in result.stderr
