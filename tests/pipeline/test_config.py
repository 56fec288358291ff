from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import (
    RunConfig,
    config_keys,
    dumps_toml,
    load_config,
    resolve_config,
    with_overrides,
)
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
    ("text", "message", "key"),
    [
        (
            "epoch = 3",
            "c.toml: unknown config key epoch, did you mean 'epochs'? (known: data, epochs, ",
            "epoch",
        ),
        (
            "[policy]\nflor = 0.1",
            "unknown config key policy.flor, did you mean 'floor'? "
            "(known in [policy]: anneal_epochs, ceiling, delta, delta_mode, floor, name, "
            "noise_growth, noise_guard, noise_high_loss, noise_warmup, "
            "patience, prune_ratio, rank_column, rank_order, reference_run, schedule, seed, "
            "tighten, warmup)",
            "policy.flor",
        ),
        ("[polciy]\nfloor = 0.1", "unknown config key polciy, did you mean 'policy'?", "polciy"),
        (
            "[data.arithmetic]\nn_eazy = 1",
            "unknown config key data.arithmetic.n_eazy, did you mean 'n_easy'?",
            "data.arithmetic.n_eazy",
        ),
        ("[model]\ncolour = 1", "unknown config key model.colour (known in [model]: ", None),
        ("floor = 0.1", "unknown config key floor, did you mean 'floor' in [policy]?", "floor"),
        ("batch_size = 8", "did you mean 'batch_size' in [train] or [scoring]?", "batch_size"),
        (
            "[train]\nepochs = 2",
            "unknown config key train.epochs, did you mean 'epochs' at the top level?",
            "train.epochs",
        ),
        ('epochs = "3"', 'config key epochs: expected an integer, got "3"', "epochs"),
        ("epochs = 3.0", "expected an integer, got 3.0 (write 3 for a whole number)", "epochs"),
        ("[train]\nbatch_size = 2.5", "train.batch_size: expected an integer, got 2.5", None),
        ("epochs = true", "config key epochs: expected an integer, got true", "epochs"),
        ('[policy]\nfloor = "0.1"', 'policy.floor: expected a number, got "0.1"', None),
        ("[data.arithmetic]\nreverse_answer = 1", "expected true or false, got 1", None),
        ('[data]\npath = ["a"]', "config key data.path: expected a string, got an array", None),
        (
            '[policy]\ndelta_mode = "ratio"',
            'policy.delta_mode: "ratio" is not one of "absolute", "relative"',
            "policy.delta_mode",
        ),
        ('[policy]\ndelta_mode = "relativ"', 'did you mean "relative"?', None),
        ("policy = 3", "config key policy: expected a table [policy], got 3", "policy"),
        ("epochs = ", "c.toml: invalid TOML", None),
    ],
)
def test_bad_config_names_file_and_key(
    tmp_path: Path, text: str, message: str, key: str | None
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    if key:
        assert raised.value.key == key


def test_every_config_key_is_listed_tables_included() -> None:
    keys = config_keys()
    assert {"epochs", "policy", "policy.floor", "data.arithmetic", "data.arithmetic.n_easy"} <= set(
        keys
    )
    assert len(keys) == len(set(keys))


def test_a_config_file_that_is_not_utf8_or_not_a_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\nepochs = 2\n")
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text, as TOML must be"):
        load_config(path)
    with pytest.raises(ConfigError, match=r": cannot read the config file: Is a directory"):
        load_config(tmp_path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "config key epochs: must be at least 1, got 0"),
        ({"rounds": -1}, "config key rounds: must be at least 1, got -1"),
        ({"seed": -1}, "config key seed: must be between 0 and 2**63 - 1"),
        ({"seed": 2**64}, "config key seed: must be between 0 and 2**63 - 1"),
        ({"store": " "}, "config key store: must not be empty"),
        ({"run_id": "../x"}, "config key run_id: '../x' must be letters, digits"),
        ({"run_id": "a:b"}, "config key run_id: 'a:b' must be letters, digits"),
        ({"train.lr": 0.0}, "config key train.lr: must be positive"),
        ({"train.lr": -0.1}, "config key train.lr: must be positive"),
        ({"train.lr": float("nan")}, "config key train.lr: must be a finite number, got nan"),
        ({"policy.floor": float("inf")}, "policy.floor: must be a finite number, got inf"),
        ({"train.batch_size": 0}, "config key train.batch_size: must be at least 1, got 0"),
        ({"train.threads": 0}, "config key train.threads: must be at least 1, got 0"),
        ({"scoring.batch_size": -8}, "config key scoring.batch_size: must be at least 1"),
        ({"scoring.threads": 0}, "config key scoring.threads: must be at least 1, got 0"),
        ({"policy.name": "stn"}, 'policy.name: unknown policy "stn", did you mean "stm"?'),
        (
            {"policy.name": "x"},
            'unknown policy "x" (known: anti-stm, delta-only, dual-stm, floor-only, infobatch, '
            "random, selective-repetition, standard, stm)",
        ),
        ({"policy.delta": -0.1}, "config key policy.delta: must be non-negative"),
        (
            {"policy.delta_mode": "relative", "policy.delta": 1.5},
            'policy.delta: must be at most 1 with delta_mode = "relative"',
        ),
        ({"policy.floor": 0.0}, "config key policy.floor: must be positive"),
        ({"policy.floor": -0.1}, "config key policy.floor: must be positive"),
        ({"policy.tighten": 0.0}, r"policy.tighten: must be in (0, 1]"),
        ({"policy.tighten": 1.5}, r"policy.tighten: must be in (0, 1]"),
        ({"scale.dask_workers": 0}, "config key scale.dask_workers: must be at least 1, got 0"),
        ({"scale.shards": 0}, "config key scale.shards: must be at least 1, got 0"),
        (
            {"scale.engine": "dask", "scale.dask_address": " "},
            "config key scale.dask_address: must not be empty",
        ),
        (
            {"scale.dask_address": "tcp://h:8786"},
            'config key scale.dask_address: is only used with scale.engine = "dask"',
        ),
        ({"model.embed_dim": 0}, "config key model.embed_dim: must be at least 1, got 0"),
        ({"model.layers": 0}, "config key model.layers: must be at least 1, got 0"),
        ({"model.max_len": 0}, "config key model.max_len: must be at least 1, got 0"),
        (
            {"model.arch": "transformer", "model.heads": 0},
            "config key model.heads: must be at least 1, got 0",
        ),
        (
            {"model.arch": "transformer", "model.hidden_dim": 30},
            "model.hidden_dim: must be divisible by model.heads",
        ),
        ({"data.arithmetic.n_hard": -1}, "data.arithmetic.n_hard: must be at least 0, got -1"),
        ({"data.arithmetic.eval_hard": -1}, "data.arithmetic.eval_hard: must be at least 0"),
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
    with pytest.raises(ConfigError) as raised:
        with_overrides(RunConfig(), overrides).validate()
    assert message in str(raised.value)
    assert raised.value.key in str(raised.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"policy.delta": 0.0},  # any drop counts as sharp: the floor alone decides
        {"policy.delta_mode": "relative", "policy.delta": 1.0},
        {"policy.tighten": 1.0},
        {"data.arithmetic.n_easy": 0},
        {"run_id": "2025-01-01_nightly.v2"},
    ],
)
def test_validate_accepts_edge_values_a_run_can_use(overrides: dict) -> None:
    config = with_overrides(RunConfig(), overrides)
    assert config.validate() == config


def test_a_bad_value_is_blamed_on_the_file_or_the_option_that_set_it(tmp_path: Path) -> None:
    path = write(tmp_path, "[policy]\nfloor = -1.0\n")
    options = {"policy.floor": "--floor", "epochs": "--epochs"}
    with pytest.raises(ConfigError, match=r"c.toml: config key policy.floor: must be positive"):
        resolve_config(path, {"policy.floor": None}, options)
    assert resolve_config(path, {"policy.floor": 0.5}, options).policy.floor == 0.5
    fine = write(tmp_path, "epochs = 2\n")
    with pytest.raises(ConfigError, match=r"^--floor -2.0: config key policy.floor"):
        resolve_config(fine, {"policy.floor": -2.0}, options)
    with pytest.raises(ConfigError, match=r"^config key epochs: must be at least 1"):
        resolve_config(None, {"epochs": 0}, {})


def test_trainer_section_maps_and_splits_like_a_shell(tmp_path: Path) -> None:
    text = '[data]\npath = "d.parquet"\n[trainer]\ncommand = "python \'my train.py\' {pool}"\n'
    config = load_config(write(tmp_path, text + "timeout_seconds = 60\n")).validate()
    assert config.trainer.timeout_seconds == 60.0
    assert config.trainer.argv() == ["python", "my train.py", "{pool}"]
    assert RunConfig().trainer.argv() == []


def test_none_overrides_mean_not_given() -> None:
    assert with_overrides(RunConfig(), {"epochs": None}) == RunConfig()
