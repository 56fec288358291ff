"""The flow with an external trainer: the digits example (plain PyTorch, nothing imported
from this project) through a real Prefect run, and tiny fake trainers that fail in each
way the contract names, stopping the run before anything is written for that epoch."""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from flows.stm_flow import RunResult, stm_flow
from pipeline.config import DataConfig, RunConfig, TrainerConfig, load_config
from pipeline.errors import ScorerContractError, TrainerError
from pipeline.manifest import verify_manifest
from pipeline.store import RunLayout
from tests.builders import make_sample_table, make_sum_scorer

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"
SHIPPED_TRAINER = "python examples/digits/train.py"


def python_command(script: Path, args: str) -> str:
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {args}"


def digits_config(store: Path, data: Path) -> RunConfig:
    """The shipped examples/digits/stm.toml, on this interpreter, for 1 round x 2 epochs."""
    config = load_config(DIGITS / "stm.toml")
    command = config.trainer.command or ""
    assert command.startswith(SHIPPED_TRAINER)
    trainer = python_command(DIGITS / "train.py", command.removeprefix(SHIPPED_TRAINER))
    return replace(
        config,
        store=str(store),
        run_id="digits",
        rounds=1,
        epochs=2,
        data=DataConfig(path=str(data), id_column="id", group_column="group"),
        trainer=replace(config.trainer, command=trainer),
    ).validate()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    data = tmp_path_factory.mktemp("data") / "digits.parquet"
    subprocess.run(
        [sys.executable, str(DIGITS / "make_dataset.py"), str(data), "--limit", "200"],
        check=True,
        capture_output=True,
    )
    return stm_flow(digits_config(tmp_path_factory.mktemp("store"), data))


def pool_ids(layout: RunLayout, record: dict[str, Any]) -> set[str]:
    return set(pl.read_parquet(layout.resolve(record["pool"]["path"]))["sample_id"])


def test_digits_manifests_chain_and_verify(digits_run: RunResult) -> None:
    manifests = digits_run.manifests
    assert [(m["round"], m["epoch"]) for m in manifests] == [(0, 0), (0, 1), (0, 2)]
    for parent, child in zip(manifests, manifests[1:], strict=False):
        assert child["parent"] == parent["id"]
    for record in manifests:
        path = digits_run.layout.manifest(record["round"], record["epoch"])
        assert verify_manifest(digits_run.layout.root, path)["id"] == record["id"]


def test_digits_pool_only_shrinks_and_counts_samples_as_tokens(digits_run: RunResult) -> None:
    layout = digits_run.layout
    previous = pool_ids(layout, digits_run.manifests[0])
    assert len(previous) == 200
    for parent, record in zip(digits_run.manifests, digits_run.manifests[1:], strict=False):
        pool = pool_ids(layout, record)
        assert pool <= previous
        assert len(previous) - len(pool) == record["step"]["dropped"]
        # no n_tokens column: a "token" is a sample
        assert record["tokens"]["trained_step"] == parent["pool"]["size"]
        previous = pool


def test_digits_trainer_metrics_go_into_the_manifest(digits_run: RunResult) -> None:
    for epoch, record in enumerate(digits_run.manifests[1:], start=1):
        trainer = record["metrics"]["trainer"]
        assert trainer["epochs"] == epoch  # state kept in the workdir between calls
        assert 0.0 <= trainer["train_accuracy"] <= 1.0
        assert record["metrics"]["train_loss"] is None
        assert set(record["metrics"]["seconds"]) == {"train", "check", "score"}


def test_digits_trainer_got_the_pool_with_the_dataset_columns(digits_run: RunResult) -> None:
    layout = digits_run.layout
    shards = pq.read_table(layout.trainer_pool)  # the last epoch's pool
    assert set(shards.column_names) == {"sample_id", "group", "id", "label", "pixels"}
    assert set(shards["sample_id"].to_pylist()) == pool_ids(layout, digits_run.manifests[1])
    assert not layout.vocabulary.exists()
    assert "examples/digits/train.py" in layout.run_record.read_text()


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    path = tmp_path / "data.parquet"
    pq.write_table(make_sample_table(n=6), path)
    return path


def fake_config(tmp_path: Path, data: Path, body: str) -> RunConfig:
    """A run whose trainer is a Python script with `body`, given `{scorer}` as argv[1]."""
    script = tmp_path / "fake_trainer.py"
    script.write_text("import os, shutil, sys\n" + textwrap.dedent(body))
    data_config = DataConfig(path=str(data), id_column="sample_id", group_column="group")
    return replace(
        RunConfig(),
        store=str(tmp_path / "store"),
        run_id="fake",
        rounds=1,
        epochs=2,
        data=data_config,
        trainer=TrainerConfig(python_command(script, "{scorer}")),
    ).validate()


def step_files(config: RunConfig) -> list[str]:
    """Every file of the run's scores, decisions and manifests, temp files included."""
    run_dir = RunLayout(Path(config.store), config.run_id or "").run_dir
    written = []
    for kind in ("scores", "decisions", "manifests"):
        if (run_dir / kind).is_dir():
            written += [f"{kind}/{p.name}" for p in (run_dir / kind).iterdir()]
    return sorted(written)


def test_a_fake_trainer_that_copies_a_valid_scorer_drives_the_run(
    tmp_path: Path, tiny_data: Path
) -> None:
    scorer = make_sum_scorer(tmp_path / "sum.onnx")
    config = fake_config(
        tmp_path,
        tiny_data,
        f"""
        shutil.copy({str(scorer)!r}, sys.argv[1])
        with open(os.path.join(os.environ["STM_WORKDIR"], "metrics.json"), "w") as out:
            out.write('{{"epoch": %s}}' % os.environ["STM_EPOCH"])
        """,
    )
    result = stm_flow.fn(config)
    last = result.manifests[-1]
    assert last["metrics"]["trainer"] == {"epoch": 2}
    # the dataset's n_tokens column counts the tokens trained, as it counts those scored
    assert last["tokens"]["trained_step"] == last["tokens"]["scored_step"] == 9


def test_a_failing_trainer_stops_the_run_with_one_line(tmp_path: Path, tiny_data: Path) -> None:
    config = fake_config(
        tmp_path,
        tiny_data,
        """
        print("Traceback (most recent call last):", file=sys.stderr)
        print("RuntimeError: out of memory", file=sys.stderr)
        sys.exit(3)
        """,
    )
    with pytest.raises(TrainerError) as raised:
        stm_flow.fn(config)
    log = Path(config.store) / "runs" / "fake" / "logs" / "r00-e001.stderr"
    assert str(raised.value) == (
        f"trainer command '{config.trainer.command}' exited with code 3 at round 0 epoch 1: "
        f"RuntimeError: out of memory (log: {log})"
    )
    assert step_files(config) == ["manifests/r00-e000.json"]


def test_a_trainer_that_writes_no_scorer_stops_the_run(tmp_path: Path, tiny_data: Path) -> None:
    config = fake_config(tmp_path, tiny_data, "print('done, I think')\n")
    scorer = RunLayout(Path(config.store), "fake").scorer(0, 1)
    with pytest.raises(TrainerError, match=f"wrote no scorer to {scorer} at round 0 epoch 1"):
        stm_flow.fn(config)
    assert step_files(config) == ["manifests/r00-e000.json"]


def test_a_scorer_breaking_the_contract_stops_the_run_before_scoring(
    tmp_path: Path, tiny_data: Path
) -> None:
    wrong = make_sum_scorer(tmp_path / "nll.onnx", output_name="nll")
    config = fake_config(tmp_path, tiny_data, f"shutil.copy({str(wrong)!r}, sys.argv[1])\n")
    scorer = RunLayout(Path(config.store), "fake").scorer(0, 1)
    with pytest.raises(ScorerContractError) as raised:
        stm_flow.fn(config)
    assert str(raised.value) == f"{scorer}: no output named 'loss' (outputs: nll)"
    assert step_files(config) == ["manifests/r00-e000.json"]
