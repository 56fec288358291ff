"""Typed, frozen run configuration: built once from a TOML file plus CLI overrides and
passed down; the resolved config is saved with every run so it can be replayed."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
import shlex
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
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
    """Which policy prunes the pool, and its parameters (docs/policies.md says which
    policy reads which).

    `delta` is the loss drop that counts as sharp: in nats when `delta_mode` is
    "absolute", as a fraction of `loss_prev` when "relative". `floor` is the mastery floor
    of round 0; round r uses `floor * tighten**r`. `stm` drops nothing in the first
    `warmup` epochs of a round and only once its condition held on `patience` passes in a
    row. `ceiling` is the loss above which a sample that does not fall sharply counts as
    hopeless (anti-stm, dual-stm). `random` follows the pool sizes of the run
    `reference_run` in the same store, drawing from `seed`. `selective-repetition` keeps,
    after epoch e, the fraction `schedule[e-1]` of the dataset (the last one after the
    list ends), ranked by the sample table's `rank_column` or else by loss, in
    `rank_order` (unset: high scores first for a rank column, low losses first).
    `infobatch` lets a below-mean-loss sample sit the next epoch out with probability
    `prune_ratio` and rescales the other below-mean ones, drawing from `seed`; the last
    `anneal_epochs` epochs of a round train on the whole pool unweighted.

    The `noise_*` keys apply to every policy (docs/label-noise.md): a sample is *likely
    mislabeled* once more than `noise_warmup` passes of its round scored it, its loss
    never came below `noise_high_loss` (ln 2: the model never gave its label even odds)
    and it is not falling. Each step records their share of the surviving pool and warns
    when it grew more than `noise_growth` times within the round; with `noise_guard` they
    are quarantined (reason `suspect-label`) whatever the policy decides.
    """

    name: str = "stm"
    delta: float = 0.1
    delta_mode: Literal["absolute", "relative"] = "absolute"
    floor: float = 0.3
    tighten: float = 0.5
    warmup: int = 0
    patience: int = 1
    ceiling: float = 1.0
    reference_run: str | None = None
    seed: int = 0
    schedule: tuple[float, ...] = (1.0, 1.0, 0.5, 0.3, 0.1)
    rank_column: str | None = None
    rank_order: Literal["low_first", "high_first"] | None = None
    prune_ratio: float = 0.5
    anneal_epochs: int = 1
    noise_guard: bool = False
    noise_high_loss: float = 0.693
    noise_warmup: int = 2
    noise_growth: float = 2.0

    def floor_for_round(self, round_index: int) -> float:
        return self.floor * self.tighten**round_index

    def resolved_rank_order(self) -> Literal["low_first", "high_first"]:
        if self.rank_order is not None:
            return self.rank_order
        return "high_first" if self.rank_column is not None else "low_first"


# Policy keys added after runs were first recorded: a run's config fingerprint leaves
# them out while they hold their defaults, so runs started before they existed resume.
POLICY_KEYS_ADDED_LATER = (
    "warmup",
    "patience",
    "ceiling",
    "seed",
    "schedule",
    "prune_ratio",
    "anneal_epochs",
    "noise_guard",
    "noise_high_loss",
    "noise_warmup",
    "noise_growth",
)


@dataclass(frozen=True)
class ScoringConfig:
    batch_size: int = 1024
    threads: int = 2


@dataclass(frozen=True)
class ScaleConfig:
    """Where scoring runs. "local": in the flow's process. "dask": the pool is cut into
    `shards` pieces, scored and decided as Prefect tasks on a Dask cluster: the one at
    `dask_address`, or a local cluster of `dask_workers` single-threaded worker processes
    when unset. `shards` unset means two per local worker (docs/distributed.md)."""

    engine: Literal["local", "dask"] = "local"
    dask_address: str | None = None
    dask_workers: int = 2
    shards: int | None = None

    def shard_count(self) -> int:
        return self.shards if self.shards is not None else 2 * self.dask_workers


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
            raise ConfigError(
                f"config key trainer.command: cannot be parsed: {err}", key="trainer.command"
            ) from err


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
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    def validate(self) -> RunConfig:
        """Reject values no run could use, naming the key; returns self to allow chaining."""
        for key, message in self._problems():
            raise ConfigError(f"config key {key}: {message}", key=key)
        return self

    def _problems(self) -> Iterator[tuple[str, str]]:
        """(dotted key, what is wrong) for each unusable value, top-level keys first. A
        check that would divide by a value comes after the check of that value."""
        for key, value in _float_values(self):
            if not math.isfinite(value):
                yield key, f"must be a finite number, got {_toml_value(value)}"
        if not 0 <= self.seed <= MAX_SEED:
            yield "seed", "must be between 0 and 2**63 - 1"
        yield from _at_least(1, rounds=self.rounds, epochs=self.epochs)
        if not self.store.strip():
            yield "store", "must not be empty"
        if self.run_id is not None and not RUN_ID_PATTERN.fullmatch(self.run_id):
            yield (
                "run_id",
                f"{self.run_id!r} must be letters, digits, '.', '_' or '-', starting with a "
                "letter or digit (it names a directory)",
            )
        yield from self._data_problems()
        yield from self._model_problems()
        yield from _at_least(
            1,
            **{
                "train.batch_size": self.train.batch_size,
                "train.threads": self.train.threads,
                "scoring.batch_size": self.scoring.batch_size,
                "scoring.threads": self.scoring.threads,
            },
        )
        if not self.train.lr > 0:
            yield "train.lr", "must be positive"
        yield from self._policy_problems()
        yield from self._trainer_problems()
        yield from self._scale_problems()

    def _data_problems(self) -> Iterator[tuple[str, str]]:
        arithmetic = self.data.arithmetic
        yield from _at_least(
            0,
            **{
                "data.arithmetic.n_easy": arithmetic.n_easy,
                "data.arithmetic.n_hard": arithmetic.n_hard,
                "data.arithmetic.eval_easy": arithmetic.eval_easy,
                "data.arithmetic.eval_hard": arithmetic.eval_hard,
            },
        )
        if arithmetic.n_easy + arithmetic.n_hard < 1:
            yield "data.arithmetic.n_easy", "n_easy + n_hard must be at least 1"
        if not arithmetic.eval_easy < 100:
            yield (
                "data.arithmetic.eval_easy",
                "must leave some of the 100 single-digit problems for training",
            )
        if not 2 <= arithmetic.hard_min_digits <= arithmetic.hard_max_digits:
            yield "data.arithmetic.hard_min_digits", "must be >= 2 and <= hard_max_digits"

    def _model_problems(self) -> Iterator[tuple[str, str]]:
        model = self.model
        sizes = {
            "model.embed_dim": model.embed_dim,
            "model.hidden_dim": model.hidden_dim,
            "model.layers": model.layers,
            "model.heads": model.heads,
            "model.max_len": model.max_len,
        }
        too_small = list(_at_least(1, **sizes))
        yield from too_small
        if not too_small and model.arch == "transformer" and model.hidden_dim % model.heads:
            yield "model.hidden_dim", "must be divisible by model.heads for a transformer"

    def _policy_problems(self) -> Iterator[tuple[str, str]]:
        # Imported here: the policies module builds on this one (PolicyConfig).
        from pipeline.policies import POLICIES

        policy = self.policy
        if policy.name not in POLICIES:
            yield (
                "policy.name",
                f"unknown policy {_toml_value(policy.name)}"
                f"{_did_you_mean(policy.name, POLICIES, _toml_value)} "
                f"(known: {', '.join(sorted(POLICIES))})",
            )
        if not policy.delta >= 0:
            yield "policy.delta", "must be non-negative"
        elif policy.delta_mode == "relative" and policy.delta > 1:
            yield (
                "policy.delta",
                'must be at most 1 with delta_mode = "relative": it is a fraction of '
                "loss_prev, and a loss cannot fall by more than all of it",
            )
        if not policy.floor > 0:
            yield (
                "policy.floor",
                "must be positive: losses are not negative, so a floor at 0 would drop "
                'nothing (policy "standard" keeps every sample)',
            )
        if not 0 < policy.tighten <= 1:
            yield "policy.tighten", "must be in (0, 1]"
        yield from _at_least(0, **{"policy.warmup": policy.warmup})
        yield from _at_least(1, **{"policy.patience": policy.patience})
        if not policy.ceiling > 0:
            yield "policy.ceiling", "must be positive"
        if not 0 <= policy.seed <= MAX_SEED:
            yield "policy.seed", "must be between 0 and 2**63 - 1"
        yield from _reference_problems(policy, self.run_id)
        yield from _schedule_problems(policy.schedule)
        if policy.rank_column is not None and not policy.rank_column.strip():
            yield "policy.rank_column", "must not be empty"
        if not 0 <= policy.prune_ratio < 1:
            yield (
                "policy.prune_ratio",
                "must be in [0, 1): kept samples weigh 1 / (1 - prune_ratio)",
            )
        yield from _at_least(0, **{"policy.anneal_epochs": policy.anneal_epochs})
        if not policy.noise_high_loss > 0:
            yield "policy.noise_high_loss", "must be positive"
        yield from _at_least(1, **{"policy.noise_warmup": policy.noise_warmup})
        if not policy.noise_growth > 1:
            yield (
                "policy.noise_growth",
                "must be greater than 1: a share that did not grow is no warning",
            )

    def _trainer_problems(self) -> Iterator[tuple[str, str]]:
        trainer = self.trainer
        external = trainer.command is not None
        if external and not trainer.argv():
            yield "trainer.command", "must not be empty"
        if trainer.timeout_seconds is not None and not trainer.timeout_seconds > 0:
            yield "trainer.timeout_seconds", "must be positive"
        if external and self.data.path is None:
            yield (
                "data.path",
                "must be set with trainer.command: the built-in benchmark is for the "
                "built-in model",
            )
        if external and self.data.eval_path is not None:
            yield (
                "data.eval_path",
                "held-out evaluation is the built-in model's; an external trainer reports "
                "its own metrics in metrics.json",
            )

    def _scale_problems(self) -> Iterator[tuple[str, str]]:
        scale = self.scale
        yield from _at_least(1, **{"scale.dask_workers": scale.dask_workers})
        if scale.shards is not None:
            yield from _at_least(1, **{"scale.shards": scale.shards})
        if scale.dask_address is not None:
            if not scale.dask_address.strip():
                yield "scale.dask_address", "must not be empty"
            elif scale.engine != "dask":
                yield (
                    "scale.dask_address",
                    'is only used with scale.engine = "dask" (--engine dask)',
                )


def _reference_problems(policy: PolicyConfig, run_id: str | None) -> Iterator[tuple[str, str]]:
    reference = policy.reference_run
    if reference is None:
        if policy.name == "random":
            yield (
                "policy.reference_run",
                'must be set with policy.name = "random": the run whose pool sizes it follows',
            )
    elif not RUN_ID_PATTERN.fullmatch(reference):
        yield "policy.reference_run", f"{reference!r} is not a run id"
    elif reference == run_id:
        yield "policy.reference_run", "must be another run than this one"


def _schedule_problems(schedule: tuple[float, ...]) -> Iterator[tuple[str, str]]:
    if not schedule:
        yield "policy.schedule", "must not be empty"
    elif not all(0 < fraction <= 1 for fraction in schedule):
        yield "policy.schedule", "every fraction must be in (0, 1]"
    elif any(later > earlier for earlier, later in itertools.pairwise(schedule)):
        yield "policy.schedule", "must not increase: a pool only shrinks within a round"


# Torch seeds its generators from a signed 64-bit integer, as large as TOML's.
MAX_SEED = 2**63 - 1
# A run id names a directory under runs/ and is part of manifest references (RUN:R:E).
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _at_least(minimum: int, **values: int) -> Iterator[tuple[str, str]]:
    for key, value in values.items():
        if value < minimum:
            yield key, f"must be at least {minimum}, got {value}"


def _float_values(config: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from _float_values(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            yield f"{prefix}{f.name}", value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# What each scalar annotation is called in an error, in TOML's words.
_EXPECTED = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _toml_value(value: Any) -> str:
    """A value as it is written in TOML (`true`, `"3"`, `nan`), as the user typed it."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _did_you_mean(name: str, known: Any, quote: Callable[[str], str] = repr) -> str:
    """`, did you mean X?` for the closest of `known` to a misspelt `name`, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f", did you mean {quote(close[0])}?" if close else ""


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check one TOML value against its dataclass annotation, building nested sections."""
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(
                f"config key {key}: expected a table [{key}], got {_toml_value(value)}", key=key
            )
        return from_dict(annotation, value, prefix=f"{key}.")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(
                f"config key {key}: expected an array, got {_toml_value(value)}", key=key
            )
        return tuple(_coerce(item, args[0], key) for item in value)
    if origin is Literal:
        if not isinstance(value, str) or value not in args:
            choices = ", ".join(_toml_value(a) for a in args)
            hint = _did_you_mean(value, args, _toml_value) if isinstance(value, str) else ""
            raise ConfigError(
                f"config key {key}: {_toml_value(value)} is not one of {choices}{hint}", key=key
            )
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in _EXPECTED and type(value) is not annotation:
        got = _toml_value(value)
        if annotation is int and isinstance(value, float) and value.is_integer():
            got += f" (write {int(value)} for a whole number)"
        raise ConfigError(f"config key {key}: expected {_EXPECTED[annotation]}, got {got}", key=key)
    return value


def config_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config file may set, tables included (`policy`, `policy.floor`)."""
    keys = []
    for name, annotation in _field_types(cls).items():
        keys.append(f"{prefix}{name}")
        if dataclasses.is_dataclass(annotation):
            keys += config_keys(annotation, f"{prefix}{name}.")
    return keys


def _unknown_key_message(prefix: str, name: str, known: list[str]) -> str:
    """Name the key and the likeliest one meant: the same name in another table (a key in
    the wrong section), else a close spelling in this table."""
    table = f" in [{prefix.rstrip('.')}]" if prefix else ""
    tables = [key.rpartition(".")[0] for key in config_keys() if key.rpartition(".")[2] == name]
    if tables:
        where = " or ".join(f"[{t}]" if t else "at the top level" for t in tables)
        hint = f", did you mean {name!r} {'in ' if tables[0] else ''}{where}?"
    else:
        hint = _did_you_mean(name, known)
    return f"unknown config key {prefix}{name}{hint} (known{table}: {', '.join(known)})"


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build a config dataclass from a (TOML) dict; an unknown key is an error, not ignored."""
    hints = _field_types(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(
            _unknown_key_message(prefix, unknown[0], sorted(hints)), key=prefix + unknown[0]
        )
    kwargs = {name: _coerce(v, hints[name], f"{prefix}{name}") for name, v in values.items()}
    return cls(**kwargs)


def load_config(path: Path | None) -> RunConfig:
    """The config of a TOML file, or the embedded defaults when no file is given."""
    if path is None:
        return RunConfig()
    try:
        values = tomllib.loads(Path(path).read_bytes().decode())
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text, as TOML must be ({err.reason} at byte {err.start})"
        ) from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from err
    try:
        return from_dict(RunConfig, values)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}", key=err.key) from err


def resolve_config(
    path: Path | None, overrides: dict[str, Any], option_names: Mapping[str, str]
) -> RunConfig:
    """The config file with the given overrides applied, validated. An unusable value is
    blamed on where it came from: the option that set it (`--floor -1: config key
    policy.floor: ...`), else the file."""
    config = with_overrides(load_config(path), overrides)
    try:
        return config.validate()
    except ConfigError as err:
        if overrides.get(err.key or "") is not None and err.key in option_names:
            source = f"{option_names[err.key]} {overrides[err.key]}"
        else:
            source = str(path) if path else None
        raise ConfigError(f"{source}: {err}" if source else str(err), key=err.key) from err


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
