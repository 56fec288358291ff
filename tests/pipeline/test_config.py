from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import RunConfig, dumps_toml, load_config, with_overrides
from pipeline.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_no_file_gives_embedded_defaults() -> None:
    assert load_config(None) == RunConfig()


def test_toml_maps_onto_nested_dataclasses(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, 'epochs = 3\n[policy]\nfloor = 1\ndelta_mode = "relative"\n')
    )
    assert config.epochs == 3
    assert config.policy.floor == 1.0 and isinstance(config.policy.floor, float)
    assert config.policy.delta_mode == "relative"
    assert config.model == RunConfig().model


def test_resolved_config_round_trips_through_toml(tmp_path: Path) -> None:
    config = with_overrides(RunConfig(), {"seed": 7, "data.id_column": "id", "policy.floor": 0.2})
    assert load_config(write(tmp_path, dumps_toml(config))) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epoch = 3", r"c.toml: unknown config key epoch \(known: "),
        ("[policy]\nflor = 0.1", r"unknown config key policy.flor"),
        ('epochs = "3"', r"config key epochs: expected int, got '3'"),
        ('[policy]\ndelta_mode = "ratio"', r"policy.delta_mode: 'ratio' is not one of"),
        ("policy = 3", r"config key policy: expected a table"),
        ("epochs = ", r"c.toml: invalid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "config key epochs: must be at least 1"),
        ({"policy.tighten": 1.5}, r"policy.tighten: must be in \(0, 1\]"),
        ({"data.arithmetic.eval_easy": 100}, "data.arithmetic.eval_easy"),
        ({"trainer.command": "  ", "data.path": "d"}, "trainer.command: must not be empty"),
        (
            {"trainer.command": "train 'unclosed", "data.path": "d"},
            "trainer.command: cannot be parsed: No closing quotation",
        ),
        ({"trainer.timeout_seconds": 0.0}, "trainer.timeout_seconds: must be positive"),
        ({"trainer.command": "train"}, "data.path: must be set with trainer.command"),
        (
            {"trainer.command": "train", "data.path": "d", "data.eval_path": "e"},
            "data.eval_path: held-out evaluation is the built-in model's",
        ),
    ],
)
def test_validate_rejects_unusable_values(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        with_overrides(RunConfig(), overrides).validate()


def test_trainer_section_maps_and_splits_like_a_shell(tmp_path: Path) -> None:
    text = '[data]\npath = "d.parquet"\n[trainer]\ncommand = "python \'my train.py\' {pool}"\n'
    config = load_config(write(tmp_path, text + "timeout_seconds = 60\n")).validate()
    assert config.trainer.timeout_seconds == 60.0
    assert config.trainer.argv() == ["python", "my train.py", "{pool}"]
    assert RunConfig().trainer.argv() == []


def test_none_overrides_mean_not_given() -> None:
    assert with_overrides(RunConfig(), {"epochs": None}) == RunConfig()
