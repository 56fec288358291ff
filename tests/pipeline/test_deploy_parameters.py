"""What `stm deploy` and `stm serve` register: paths made absolute from where they ran,
whether an option or the config file gave them, and the config file's store respected."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli.deploy import deployment_parameters


def test_paths_from_the_config_file_are_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "nightly.toml"
    config.write_text('store = "nightly-store"\n[data]\npath = "incoming/*.jsonl"\n')
    parameters = deployment_parameters(config, None, None, None, "id", None, None)
    assert parameters == {
        "config": str(config),
        "store": str(tmp_path / "nightly-store"),
        "data": str(tmp_path / "incoming" / "*.jsonl"),
        "id_column": "id",
    }


def test_options_override_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "nightly.toml"
    config.write_text('store = "nightly-store"\n')
    parameters = deployment_parameters(config, Path("other"), "d.parquet", None, None, None, 3)
    assert parameters["store"] == str(tmp_path / "other")
    assert parameters["data"] == str(tmp_path / "d.parquet")
    assert parameters["seed"] == 3


def test_without_a_config_the_default_store_is_anchored_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert deployment_parameters(None, None, None, None, None, None, None) == {
        "store": str(tmp_path / "manifests")
    }
