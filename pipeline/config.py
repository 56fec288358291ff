"""Typed, frozen run configuration: built once from a TOML file plus CLI overrides and
passed down; the resolved config is saved with every run so it can be replayed."""

from __future__ import annotations

import dataclasses
import shlex
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class ArithmeticConfig:
    """The built-in benchmark: `a+b=c` as characters, an easy and a hard group.

    There are only 100 single-digit problems, so `eval_easy` of them are held out and the
    `n_easy` training samples are drawn with repetition from the rest (each copy its own
    sample_id). Hard problems are unique, carry at least once and never appear in both sets.
    Defaults: with 2-3 digit hard problems, 200 or even 1500 samples are memorised and
    nothing generalises to held-out problems; 1500 two-digit problems (of about 2,900 with
    a carry) are learnable by the small GRU (bench/README.md has the measurements).
    """

    n_easy: int = 500
    n_hard: int = 1500
    eval_easy: int = 20
    eval_hard: int = 200
    hard_min_digits: int = 2
    hard_max_digits: int = 2
    reverse_answer: bool = True


@dataclass(frozen=True)
class DataConfig:
    """Where samples come from. `path` unset means the built-in arithmetic benchmark."""

    path: str | None = None
    eval_path: str | None = None
    id_column: str | None = None
    group_column: str | None = None
    prompt_column: str = "prompt"
    target_column: str = "target"
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The built-in character-level model: a GRU (as in the method's experiments) or a
    tiny causal transformer. `max_len` is the longest prompt + target (in characters) a
    sample may have; the transformer's learned positions stop there too."""

    arch: Literal["gru", "transformer"] = "gru"
    embed_dim: int = 32
    hidden_dim: int = 128
    layers: int = 1
    heads: int = 4
    max_len: int = 64


@dataclass(frozen=True)
class TrainConfig:
    """`threads` is torch's intra-op thread count: models this small run fastest on one
    thread, and far slower on two when another process competes for the cores."""

    batch_size: int = 32
    lr: float = 3e-3
    threads: int = 1


@dataclass(frozen=True)
class PolicyConfig:
    """Which policy prunes the pool, and its parameters.

    `delta` is the loss drop that counts as sharp: in nats when `delta_mode` is
    "absolute", as a fraction of `loss_prev` when "relative". `floor` is the mastery floor
    of round 0; round r uses `floor * tighten**r`.
    """

    name: str = "stm"
    delta: float = 0.1
    delta_mode: Literal["absolute", "relative"] = "absolute"
    floor: float = 0.3
    tighten: float = 0.5

    def floor_for_round(self, round_index: int) -> float:
        return self.floor * self.tighten**round_index


@dataclass(frozen=True)
class ScoringConfig:
    batch_size: int = 256
    threads: int = 2


@dataclass(frozen=True)
class TrainerConfig:
    """An external trainer: `command` runs once per epoch instead of the built-in model
    (docs/trainer-contract.md); unset means the built-in trainer. `timeout_seconds` bounds
    one call, unbounded when unset."""

    command: str | None = None
    timeout_seconds: float | None = None

    def argv(self) -> list[str]:
        """The command split as a POSIX shell would, placeholders still in place."""
        if self.command is None:
            return []
        try:
            return shlex.split(self.command)
        except ValueError as err:
            raise ConfigError(f"config key trainer.command: cannot be parsed: {err}") from err


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    rounds: int = 3
    epochs: int = 10
    store: str = "manifests"
    run_id: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> RunConfig:
        """Reject values no run could use, naming the key; returns self to allow chaining."""
        checks = [
            (self.rounds >= 1, "rounds", "must be at least 1"),
            (self.epochs >= 1, "epochs", "must be at least 1"),
            (self.train.batch_size >= 1, "train.batch_size", "must be at least 1"),
            (self.train.lr > 0, "train.lr", "must be positive"),
            (self.train.threads >= 1, "train.threads", "must be at least 1"),
            (self.scoring.batch_size >= 1, "scoring.batch_size", "must be at least 1"),
            (self.scoring.threads >= 1, "scoring.threads", "must be at least 1"),
            (self.policy.delta >= 0, "policy.delta", "must be non-negative"),
            (self.policy.floor >= 0, "policy.floor", "must be non-negative"),
            (0 < self.policy.tighten <= 1, "policy.tighten", "must be in (0, 1]"),
            (
                self.model.hidden_dim % self.model.heads == 0 or self.model.arch == "gru",
                "model.hidden_dim",
                "must be divisible by model.heads for a transformer",
            ),
            (
                self.data.arithmetic.n_easy + self.data.arithmetic.n_hard >= 1,
                "data.arithmetic.n_easy",
                "n_easy + n_hard must be at least 1",
            ),
            (
                0 <= self.data.arithmetic.eval_easy < 100,
                "data.arithmetic.eval_easy",
                "must leave some of the 100 single-digit problems for training",
            ),
            (
                2 <= self.data.arithmetic.hard_min_digits <= self.data.arithmetic.hard_max_digits,
                "data.arithmetic.hard_min_digits",
                "must be >= 2 and <= hard_max_digits",
            ),
        ]
        for ok, key, message in checks + self._trainer_checks():
            if not ok:
                raise ConfigError(f"config key {key}: {message}")
        return self

    def _trainer_checks(self) -> list[tuple[bool, str, str]]:
        trainer = self.trainer
        external = trainer.command is not None
        return [
            (not external or bool(trainer.argv()), "trainer.command", "must not be empty"),
            (
                trainer.timeout_seconds is None or trainer.timeout_seconds > 0,
                "trainer.timeout_seconds",
                "must be positive",
            ),
            (
                not external or self.data.path is not None,
                "data.path",
                "must be set with trainer.command: the built-in benchmark is for the "
                "built-in model",
            ),
            (
                not external or self.data.eval_path is None,
                "data.eval_path",
                "held-out evaluation is the built-in model's; an external trainer reports "
                "its own metrics in metrics.json",
            ),
        ]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check one TOML value against its dataclass annotation, building nested sections."""
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: expected a table, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"config key {key}: {value!r} is not one of {choices}")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if type(value) is not annotation:
            raise ConfigError(f"config key {key}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build a config dataclass from a (TOML) dict; an unknown key is an error, not ignored."""
    hints = _field_types(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        known = ", ".join(sorted(hints))
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {known})")
    kwargs = {name: _coerce(v, hints[name], f"{prefix}{name}") for name, v in values.items()}
    return cls(**kwargs)


def load_config(path: Path | None) -> RunConfig:
    """The config of a TOML file, or the embedded defaults when no file is given."""
    if path is None:
        return RunConfig()
    try:
        values = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from err
    try:
        return from_dict(RunConfig, values)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply dotted-key overrides (`policy.floor`) from the CLI; None means "not given"."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        config = _replace_path(config, dotted.split("."), value)
    return config


def _replace_path(obj: Any, keys: list[str], value: Any) -> Any:
    head, *rest = keys
    new_value = _replace_path(getattr(obj, head), rest, value) if rest else value
    return dataclasses.replace(obj, **{head: new_value})


def to_dict(config: Any) -> dict[str, Any]:
    """A TOML-ready dict: nested tables, None values left out (TOML has no null)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif value is not None:
            out[f.name] = value
    return out


def dumps_toml(config: RunConfig) -> str:
    return tomli_w.dumps(to_dict(config))
