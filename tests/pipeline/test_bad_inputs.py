"""Every bad input of the corpus gives one line naming the file, column or sample, a
non-zero exit, no traceback, and nothing written to the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipeline.cli import cli
from pipeline.config import PolicyConfig
from tests.store_builders import make_run, run_rounds

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_line(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("duplicate_id.jsonl", ["column 'id': duplicate sample_id '1' (rows 1 and 4)"]),
        ("null_id.jsonl", ["column 'id': null sample_id (row 2)"]),
        ("list_id.jsonl", ["column 'id': cannot be read as text"]),
        ("missing_target.jsonl", ["column 'target' (required) not found"]),
        ("int_prompt.jsonl", ["column 'prompt': text expected", "first sample '1'"]),
        ("empty.jsonl", ["the dataset has no rows"]),
        ("invalid_utf8.jsonl", ["cannot read as jsonl", "Invalid UTF8"]),
        ("ragged.csv", ["cannot read as csv", "Expected 3 columns, got 2"]),
        ("not_parquet.parquet", ["cannot read as parquet", "magic bytes"]),
        ("truncated.parquet", ["cannot read as parquet"]),
    ],
)
def test_bad_dataset(name: str, fragments: list[str], tmp_path: Path) -> None:
    path = CORPUS / name
    result = invoke("run", "--data", str(path), "--id-column", "id", "--store", str(tmp_path))
    assert_one_line(result, str(path), *fragments)
    assert not (tmp_path / "runs").exists()


def test_a_huge_row_is_named_not_trained_on(tmp_path: Path) -> None:
    """Longer than a JSON reader block (1 MiB), and than any sample the model takes."""
    path = tmp_path / "huge.jsonl"
    rows = [
        {"id": 1, "prompt": "1+1=", "target": "2"},
        {"id": 2, "prompt": "1" * 1_500_000 + "+1=", "target": "2"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("run", "--data", str(path), "--id-column", "id", "--store", str(tmp_path / "s"))
    assert_one_line(
        result, f"{path}: sample '2' has 1500004 characters", "more than model.max_len = 64"
    )


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("unknown_key.toml", ["unknown config key epoch, did you mean 'epochs'? (known: data,"]),
        (
            "nested_unknown_key.toml",
            [
                "unknown config key policy.flor, did you mean 'floor'? "
                "(known in [policy]: anneal_epochs, ceiling, delta, delta_mode, floor, name, "
                "noise_growth, noise_guard, noise_high_loss, noise_warmup, "
                "patience, prune_ratio, rank_column, rank_order, reference_run, schedule, "
                "seed, tighten, warmup)"
            ],
        ),
        ("misplaced_key.toml", ["unknown config key floor, did you mean 'floor' in [policy]?"]),
        (
            "unknown_policy.toml",
            [
                'config key policy.name: unknown policy "stn", did you mean "stm"? '
                "(known: anti-stm, delta-only"
            ],
        ),
        (
            "misspelt_choice.toml",
            [
                'config key policy.delta_mode: "relativ" is not one of "absolute", "relative", '
                'did you mean "relative"?'
            ],
        ),
        ("float_epochs.toml", ["config key epochs: expected an integer, got 2.5"]),
        ("negative_floor.toml", ["config key policy.floor: must be positive"]),
        ("nan_floor.toml", ["config key policy.floor: must be a finite number, got nan"]),
        ("zero_epochs.toml", ["config key epochs: must be at least 1, got 0"]),
        ("zero_lr.toml", ["config key train.lr: must be positive"]),
        ("zero_batch_size.toml", ["config key scoring.batch_size: must be at least 1, got 0"]),
        ("zero_heads.toml", ["config key model.heads: must be at least 1, got 0"]),
        ("relative_delta_above_one.toml", ["policy.delta: must be at most 1 with delta_mode"]),
        ("escaping_run_id.toml", ["config key run_id: '../elsewhere' must be letters, digits"]),
        ("not_utf8.toml", ["not UTF-8 text, as TOML must be (invalid continuation byte"]),
    ],
)
def test_bad_config(name: str, fragments: list[str], tmp_path: Path) -> None:
    path = CORPUS / name
    result = invoke("run", "--config", str(path), "--store", str(tmp_path))
    assert_one_line(result, f"{path}: ", *fragments)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--floor", "-1"], "--floor -1.0: config key policy.floor: must be positive"),
        (["--seed", "-1"], "--seed -1: config key seed: must be between 0 and 2**63 - 1"),
        (["--run-id", "a:b"], "--run-id a:b: config key run_id: 'a:b' must be letters"),
    ],
)
def test_a_bad_option_value_is_blamed_on_the_option_not_the_file(
    option: list[str], fragment: str, tmp_path: Path
) -> None:
    tiny = CORPUS.parent.parent / "configs" / "tiny.toml"
    result = invoke("run", "--config", str(tiny), *option, "--store", str(tmp_path))
    assert_one_line(result, fragment)
    assert str(tiny) not in result.stderr


def test_a_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    run_rounds(make_run(tmp_path, "r"), PolicyConfig(), [[{f"s{i:03d}": 1.0 for i in range(6)}]])
    path = tmp_path / "runs" / "r" / "manifests" / "r00-e000.json"
    path.write_text(path.read_text().replace('"schema_version": 1', '"schema_version": 2'))
    result = invoke("manifests", "show", "r:0:0", "--store", str(tmp_path))
    assert_one_line(result, "schema_version 2, this version reads 1")


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))

    monkeypatch.setattr("pipeline.store.os.fsync", no_space)
    result = invoke(
        "run",
        "--config",
        str(CORPUS.parent.parent / "configs" / "tiny.toml"),
        "--store",
        str(tmp_path),
    )
    assert_one_line(result, "No space left on device")
    assert not list(tmp_path.rglob("*.tmp"))
