"""The external trainer: any command that trains one epoch on the pool's Parquet shards and
writes an ONNX scorer (docs/trainer-contract.md). This module writes the pool for it, runs
it without a shell and reads back what it left; the pipeline never imports a trainer."""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import TrainerConfig
from pipeline.errors import TrainerError
from pipeline.pruning import training_set
from pipeline.shards import export_pool
from pipeline.store import RunLayout, read_samples_subset

POOL_SHARD_ROWS = 250_000
METRICS_FILE = "metrics.json"
# Enough of the end of stderr for its last line, however long the log grew.
STDERR_TAIL_BYTES = 16_384

log = logging.getLogger("stm.trainer")


@dataclass(frozen=True)
class TrainerCall:
    """What one call of the trainer is given, as placeholders and STM_* variables."""

    pool: Path
    workdir: Path
    scorer: Path
    round_index: int
    epoch: int
    seed: int

    def values(self) -> dict[str, str]:
        return {
            "pool": str(self.pool),
            "workdir": str(self.workdir),
            "scorer": str(self.scorer),
            "round": str(self.round_index),
            "epoch": str(self.epoch),
            "seed": str(self.seed),
        }


@dataclass(frozen=True)
class ExternalTrainStats:
    """What one epoch of an external trainer did, in the units of the built-in trainer's
    TrainStats: `tokens_trained` is the pool's `n_tokens` sum, or its sample count when
    the dataset has no such column. The pipeline cannot see a training loss: `mean_loss`
    is None. `metrics` is what the trainer reported in its metrics.json."""

    samples: int
    tokens_trained: int
    mean_loss: float | None
    seconds: float
    metrics: dict[str, float]


def trainer_argv(argv: list[str], call: TrainerCall) -> list[str]:
    """The command's words with `{pool}`, `{workdir}`, `{scorer}`, `{round}`, `{epoch}`
    and `{seed}` replaced; any other braces are left as they are."""
    values = call.values()

    def substitute(word: str) -> str:
        for name, value in values.items():
            word = word.replace("{" + name + "}", value)
        return word

    return [substitute(word) for word in argv]


def trainer_env(call: TrainerCall, inherited: Mapping[str, str]) -> dict[str, str]:
    """The inherited environment plus STM_POOL, STM_WORKDIR, STM_SCORER, STM_ROUND,
    STM_EPOCH and STM_SEED."""
    return {**inherited, **{f"STM_{name.upper()}": v for name, v in call.values().items()}}


def run_trainer(trainer: TrainerConfig, call: TrainerCall, stdout: Path, stderr: Path) -> float:
    """Run the trainer once, its output going to the two log files, and return its
    seconds. A failure to start, a non-zero exit, a timeout or a missing scorer afterwards
    is a TrainerError naming the command, the step and the last line of its stderr."""
    argv = trainer_argv(trainer.argv(), call)
    call.scorer.unlink(missing_ok=True)
    (call.workdir / METRICS_FILE).unlink(missing_ok=True)
    for directory in (call.workdir, call.scorer.parent, stdout.parent, stderr.parent):
        directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info(
        "round %d epoch %d: trainer started: %s",
        call.round_index,
        call.epoch,
        shlex.join(argv),
    )
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        try:
            # Its own process group, so that a timeout or an interrupt stops the trainer's
            # children too (data loader workers, say), not only the command itself.
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=trainer_env(call, os.environ),
                start_new_session=True,
            )
        except OSError as error:
            raise TrainerError(
                f"trainer command '{trainer.command}' could not start at round "
                f"{call.round_index} epoch {call.epoch}: {error}"
            ) from error
        try:
            code = process.wait(timeout=trainer.timeout_seconds)
        except subprocess.TimeoutExpired as timeout:
            _stop(process)
            what = f"timed out after {trainer.timeout_seconds:g} s"
            raise _failure(trainer, call, what, stderr) from timeout
        except BaseException:
            _stop(process)
            raise
    if code != 0:
        what = f"exited with code {code}" if code > 0 else f"was killed by signal {-code}"
        raise _failure(trainer, call, what, stderr)
    if not call.scorer.is_file():
        raise _failure(trainer, call, f"wrote no scorer to {call.scorer}", stderr)
    seconds = time.perf_counter() - started
    log.info(
        "round %d epoch %d: trainer finished in %.1f s (log: %s)",
        call.round_index,
        call.epoch,
        seconds,
        stdout,
    )
    return seconds


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone
    process.wait()


def _failure(trainer: TrainerConfig, call: TrainerCall, what: str, stderr: Path) -> TrainerError:
    last = last_line(stderr) or "nothing on stderr"
    return TrainerError(
        f"trainer command '{trainer.command}' {what} at round {call.round_index} epoch "
        f"{call.epoch}: {last} (log: {stderr})"
    )


def last_line(path: Path) -> str | None:
    """The last non-blank line of a text file, read from its end."""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - STDERR_TAIL_BYTES))
        tail = handle.read().decode(errors="replace")
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else None


def read_trainer_metrics(path: Path) -> dict[str, float]:
    """The trainer's own metrics: a flat JSON object of finite numbers, or none when it
    wrote no file."""
    if not path.is_file():
        return {}
    try:
        metrics: Any = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TrainerError(f"{path}: trainer metrics are not valid JSON: {err}") from err
    if not isinstance(metrics, dict):
        raise TrainerError(f"{path}: trainer metrics must be a JSON object of numbers")
    for key, value in metrics.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise TrainerError(
                f"{path}: trainer metrics must be a flat JSON object of finite numbers; "
                f"'{key}' is {json.dumps(value)}"
            )
    return metrics


def pool_tokens(samples: Path, ids: pa.Array, size: int) -> int:
    """Tokens of the pool for the compute accounting: its `n_tokens` sum when the dataset
    has that column, else one per sample."""
    if "n_tokens" not in pq.read_schema(samples).names:
        return size
    column = read_samples_subset(samples, ids, ["n_tokens"]).column("n_tokens")
    return int(pc.sum(column).as_py() or 0)


def train_external_epoch(
    trainer: TrainerConfig,
    layout: RunLayout,
    parent: dict[str, Any],
    round_index: int,
    epoch: int,
    seed: int,
) -> ExternalTrainStats:
    """One epoch of the external trainer on the pool of manifest `parent`: write the pool
    as Parquet shards, run the command, and leave its scorer at `layout.scorer(...)`."""
    shutil.rmtree(layout.trainer_pool, ignore_errors=True)
    exported = export_pool(
        layout, parent, layout.trainer_pool, "parquet", rows_per_shard=POOL_SHARD_ROWS
    )
    log.info(
        "round %d epoch %d: pool of %s samples written for the trainer in %d shard(s)",
        round_index,
        epoch,
        f"{exported.rows:,}",
        len(exported.shards),
    )
    call = TrainerCall(
        pool=layout.trainer_pool.resolve(),
        workdir=layout.trainer_dir.resolve(),
        scorer=layout.scorer(round_index, epoch).resolve(),
        round_index=round_index,
        epoch=epoch,
        seed=seed,
    )
    seconds = run_trainer(
        trainer,
        call,
        layout.trainer_log(round_index, epoch, "stdout"),
        layout.trainer_log(round_index, epoch, "stderr"),
    )
    return ExternalTrainStats(
        samples=exported.rows,
        tokens_trained=pool_tokens(layout.samples, training_set(layout, parent)[0], exported.rows),
        mean_loss=None,
        seconds=seconds,
        metrics=read_trainer_metrics(call.workdir / METRICS_FILE),
    )
