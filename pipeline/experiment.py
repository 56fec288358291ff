"""Experiments: a grid file (base config, policies, seeds, parameter grids) expanded into
ordinary runs in one store, run one process per run (resuming what a killed experiment
left), then read back into one frame for `pipeline.experiment_results`."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty
from typing import Any

import polars as pl

from pipeline import experiment_results
from pipeline.config import (
    PolicyConfig,
    RunConfig,
    _did_you_mean,
    config_keys,
    dumps_toml,
    from_dict,
    load_config,
)
from pipeline.errors import ConfigError
from pipeline.experiment_results import FLIPPED, OVERALL, label_noise
from pipeline.label_noise import SUSPECT_LABEL
from pipeline.pruning import run_manifests
from pipeline.store import RunLayout, write_bytes_atomic, write_parquet_atomic, write_text_atomic

GRID_KEYS = ("base", "data", "config", "seeds", "baseline", "policies", "grid")
# Keys of the grid's [data] table that name files: relative to the grid file, as `base`.
DATA_PATH_KEYS = ("data.path", "data.eval_path")
# What an external trainer reports in metrics.json as held-out accuracy: over all its
# samples, and `held_out_accuracy.<group>` per group (examples/digits/train.py --eval).
TRAINER_HELD_OUT = "held_out_accuracy"
# A policy entry: its label, its registered name, a table of run-config overrides
# (`rounds` for Recursive STM), and any PolicyConfig key.
POLICY_ENTRY_KEYS = ("label", "config", *(f.name for f in fields(PolicyConfig)))
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class PolicySpec:
    label: str
    overrides: dict[str, Any]  # dotted RunConfig keys, policy.name included


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a policy at one parameter combination and one seed."""

    run_id: str
    policy: str  # the policy entry's label
    params: str  # the grid combination, `key=value` joined by `,`; empty without a grid
    seed: int
    config: RunConfig


@dataclass(frozen=True)
class Experiment:
    path: Path
    baseline: str
    cells: list[Cell]


def _fail(path: Path, message: str, key: str | None = None) -> ConfigError:
    return ConfigError(f"{path}: {message}", key=key)


def _refuse_unknown(
    path: Path, keys: Any, known: Any, where: str, what: str, listed: bool = False
) -> None:
    """One line for the first key (sorted) that is not known, with a did-you-mean."""
    for key in sorted(keys):
        if key not in known:
            listing = f" (known: {', '.join(known)})" if listed else ""
            raise _fail(
                path,
                f"unknown {what} {where}{key}{_did_you_mean(key, known)}{listing}",
                key=f"{where}{key}",
            )


def _check_keys(path: Path, table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    _refuse_unknown(path, table, known, where, "key", listed=True)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables as dotted keys: `{"policy": {"floor": 1}}` -> `policy.floor`."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_config_overrides(path: Path, where: str, values: dict[str, Any]) -> dict[str, Any]:
    """Dotted overrides checked against the RunConfig keys and types (by building the
    nested tables with `from_dict`), so a misspelt key fails before anything runs."""
    flat = _flatten(values)
    _refuse_unknown(path, flat, config_keys(), where, "config key")
    return flat


def _data_overrides(path: Path, table: Any) -> dict[str, Any]:
    """The grid's [data] table (the keys of a config's [data]) as `data.*` overrides, its
    file paths relative to the grid file, so a grid names its dataset wherever it runs."""
    if not isinstance(table, dict):
        raise _fail(path, "data: expected a table [data]", key="data")
    flat = _as_config_overrides(path, "", {"data": table})
    for key in DATA_PATH_KEYS:
        if isinstance(flat.get(key), str):
            flat[key] = str(Path(path).parent.resolve() / flat[key])
    return flat


def _checked_config(
    path: Path, base: RunConfig, overrides: dict[str, Any], where: str
) -> RunConfig:
    # Through TOML text, so the base's values have the types a config file gives.
    nested = tomllib.loads(dumps_toml(base))
    for dotted, value in overrides.items():
        *tables, name = dotted.split(".")
        target = nested
        for table in tables:
            target = target.setdefault(table, {})
        target[name] = value
    try:
        return from_dict(RunConfig, nested).validate()
    except ConfigError as err:
        raise _fail(path, f"{where}{err}", key=err.key) from err


def _policy_spec(path: Path, index: int, entry: Any) -> PolicySpec:
    where = f"policies[{index}]"
    if not isinstance(entry, dict) or "name" not in entry:
        raise _fail(path, f"{where}: a policy is a table with at least a name", key=where)
    _check_keys(path, entry, POLICY_ENTRY_KEYS, f"{where}.")
    label = entry.get("label", entry["name"])
    if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
        raise _fail(path, f"{where}.label: {label!r} must be letters, digits, '.', '_' or '-'")
    overrides = _as_config_overrides(path, f"{where}.config.", entry.get("config", {}))
    for key, value in entry.items():
        if key not in ("label", "config"):
            overrides[f"policy.{key}"] = value
    return PolicySpec(label, overrides)


def _grid_combinations(path: Path, grid: dict[str, Any]) -> list[dict[str, Any]]:
    flat = _as_config_overrides(path, "grid.", grid)
    for key, values in flat.items():
        if not isinstance(values, list) or not values:
            raise _fail(path, f"grid.{key}: expected a non-empty array of values", key=key)
    keys = sorted(flat)
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(flat[k] for k in keys))
    ]


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(value).lower())


def params_label(params: dict[str, Any]) -> str:
    return ",".join(f"{key}={params[key]}" for key in sorted(params))


def cell_run_id(label: str, params: dict[str, Any], seed: int) -> str:
    """Deterministic from the grid cell, so running the grid again finds its runs."""
    parts = [label, *(f"{key}-{_slug(params[key])}" for key in sorted(params)), f"s{seed}"]
    return "__".join(parts)


def load_experiment(path: Path, out: Path) -> Experiment:
    """Parse and expand a grid file; every cell's config is validated before any runs, so
    an unknown key or policy fails in one line naming it."""
    try:
        values = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: grid file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the grid file: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from err
    _check_keys(path, values, GRID_KEYS, "")
    base = RunConfig()
    if "base" in values:
        base_path = (Path(path).parent / values["base"]).resolve()
        if not base_path.is_file():
            raise _fail(path, f"base config {base_path} not found", key="base")
        base = load_config(base_path)
    data = _data_overrides(path, values.get("data", {}))
    shared = _as_config_overrides(path, "config.", values.get("config", {}))
    both = sorted(data.keys() & shared.keys())
    if both:
        raise _fail(path, f"{both[0]} is set in both [data] and [config]; keep one", key=both[0])
    shared.update(data)
    seeds = values.get("seeds", [base.seed])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise _fail(path, "seeds: expected a non-empty array of integers", key="seeds")
    entries = values.get("policies")
    if not isinstance(entries, list) or not entries:
        raise _fail(path, "policies: expected at least one [[policies]] table", key="policies")
    specs = [_policy_spec(path, i, entry) for i, entry in enumerate(entries)]
    labels = [spec.label for spec in specs]
    for label in labels:
        if labels.count(label) > 1:
            raise _fail(path, f"policy label {label!r} is used twice; give each a label")
    baseline = values.get("baseline", "standard")
    if baseline not in labels:
        raise _fail(path, f"baseline {baseline!r} is not one of the policies ({', '.join(labels)})")
    store = str(out / "store")
    cells = []
    for params, spec, seed in itertools.product(
        _grid_combinations(path, values.get("grid", {})), specs, seeds
    ):
        run_id = cell_run_id(spec.label, params, seed)
        overrides = {
            **shared,
            **spec.overrides,
            **params,
            "seed": seed,
            "store": store,
            "run_id": run_id,
        }
        reference = overrides.get("policy.reference_run")
        if reference in labels:
            # A control that follows another policy of the grid follows its cell at the
            # same seed and parameters, and draws with that seed unless one is given.
            overrides["policy.reference_run"] = cell_run_id(reference, params, seed)
            overrides.setdefault("policy.seed", seed)
        config = _checked_config(path, base, overrides, f"policy {spec.label!r}: ")
        cells.append(Cell(run_id, spec.label, params_label(params), seed, config))
    return Experiment(Path(path), baseline, cells)


# Progress events a running cell sends: (run_id, kind, round, epoch) of each manifest.
Event = tuple[str, str, int, int]
EventSink = Callable[[Event], None]


def run_cell(config: RunConfig, events: Any = None) -> str:
    """Run (or resume, or skip when complete) one cell through the Prefect flow in this
    process, as `stm run` does; returns what happened: "complete", "resumed" or "new".
    `events` is a queue or a callable receiving `Event`s."""
    # Imported here: the flow pulls in Prefect and torch, which a grid check does not need.
    from flows.inputs import prepare_inputs
    from flows.stm_flow import StepReport, run_flow
    from pipeline.launch import plan_run
    from pipeline.resume import run_lock

    send = events.put if hasattr(events, "put") else (events or (lambda _: None))
    inputs = prepare_inputs(config)
    plan = plan_run(config, inputs.fingerprint, datetime.now(UTC))
    if plan.state == "complete":
        return "complete"

    def report(step: StepReport) -> None:
        record = step.record
        send((config.run_id or "", record["kind"], record["round"], record["epoch"]))

    with run_lock(plan.layout):
        run_flow(plan.config, inputs, report=report, resume=plan.state == "resume")
    return "resumed" if plan.state == "resume" else "new"


def _worker_prefect_home(out: Path) -> None:
    """Each worker process its own Prefect home (and database): in-process Prefect keeps
    its state in SQLite, which parallel writers would lock against each other."""
    if not os.environ.get("PREFECT_API_URL"):
        home = out / ".prefect" / f"worker-{os.getpid()}"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home)


def run_cells(
    cells: list[Cell],
    out: Path,
    jobs: int,
    on_event: EventSink,
    on_done: Callable[[Cell, str], None],
) -> None:
    """Run every cell: in this process one after another with `jobs == 1`, else each in
    a worker process of a pool of `jobs` (spawned: torch and Prefect do not survive a
    fork). The first failure stops the experiment with its error; finished runs stay.
    Cells that follow another cell of the grid (the `random` control's reference run)
    run in a second wave, after every cell they could follow."""
    ids = {cell.run_id for cell in cells}
    second = [cell for cell in cells if cell.config.policy.reference_run in ids]
    first = [cell for cell in cells if cell not in second]
    for wave in (first, second):
        if wave:
            _run_wave(wave, out, jobs, on_event, on_done)


def _run_wave(
    cells: list[Cell],
    out: Path,
    jobs: int,
    on_event: EventSink,
    on_done: Callable[[Cell, str], None],
) -> None:
    if jobs == 1:
        for cell in cells:
            on_done(cell, run_cell(cell.config, on_event))
        return
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        queue = manager.Queue()
        with ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_worker_prefect_home, initargs=(out,)
        ) as pool:
            pending: dict[Future[str], Cell] = {
                pool.submit(run_cell, cell.config, queue): cell for cell in cells
            }
            try:
                while pending:
                    finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    for event in _drain(queue):
                        on_event(event)
                    for future in finished:
                        on_done(pending.pop(future), future.result())
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
            for event in _drain(queue):
                on_event(event)


def _drain(queue: Any) -> Iterator[Event]:
    while True:
        try:
            yield queue.get_nowait()
        except Empty:
            return


def held_out_accuracy(metrics: dict[str, Any]) -> dict[str, float]:
    """A manifest's held-out accuracy per group (`_overall` for all groups): the built-in
    evaluation's `metrics.accuracy`, or else what an external trainer reported in its
    metrics.json as `held_out_accuracy` and `held_out_accuracy.<group>`."""
    if metrics.get("accuracy"):
        return {group: float(a) for group, a in metrics["accuracy"].items()}
    reported = metrics.get("trainer") or {}
    accuracy = {}
    for key, value in reported.items():
        if key == TRAINER_HELD_OUT:
            accuracy[OVERALL] = float(value)
        elif key.startswith(f"{TRAINER_HELD_OUT}."):
            accuracy[key.removeprefix(f"{TRAINER_HELD_OUT}.")] = float(value)
    return accuracy


def results_frame(cells: list[Cell]) -> pl.DataFrame:
    """One row per training step of every run (reset manifests carry no training): the
    cell, pool sizes, cumulative tokens, the step's recorded seconds and held-out accuracy,
    groups as `pool_size.<group>` and `accuracy.<group>` columns. When the runs' datasets
    mark flipped labels (a boolean `flipped` column), the label-noise columns of
    `experiment_results.label_noise` too."""
    rows = []
    noise_inputs = []
    for cell in cells:
        layout = RunLayout(Path(cell.config.store), cell.run_id)
        steps = [r for r in run_manifests(layout) if r["kind"] == "prune"]
        for step, record in enumerate(steps, start=1):
            metrics = record["metrics"]
            seconds = metrics.get("seconds", {})
            rows.append(
                {
                    "run_id": cell.run_id,
                    "policy": cell.policy,
                    "policy_name": cell.config.policy.name,
                    "params": cell.params,
                    "seed": cell.seed,
                    "round": record["round"],
                    "epoch": record["epoch"],
                    "step": step,
                    "pool_size": record["pool"]["size"],
                    **{f"pool_size.{g}": n for g, n in record["pool"]["by_group"].items()},
                    # a soft policy's next training set (weight > 0); else the pool
                    "trained_next": (record["pool"].get("weights") or {}).get(
                        "trained", record["pool"]["size"]
                    ),
                    # the pipeline's own label-noise estimate (null for an older run)
                    "noise_share": (record.get("noise") or {}).get("share"),
                    "noise_warning": (record.get("noise") or {}).get("warning"),
                    "tokens_trained": record["tokens"]["trained"],
                    "tokens_scored": record["tokens"]["scored"],
                    "tokens_trained_step": record["tokens"]["trained_step"],
                    "tokens_scored_step": record["tokens"]["scored_step"],
                    "train_seconds": float(seconds.get("train", 0.0)),
                    "score_seconds": float(seconds.get("score", 0.0)),
                    **{f"accuracy.{g}": a for g, a in held_out_accuracy(metrics).items()},
                    **{
                        f"accuracy_seen.{g}": float(a)
                        for g, a in metrics.get("accuracy_seen", {}).items()
                    },
                }
            )
        if steps and FLIPPED in pl.scan_parquet(layout.samples).collect_schema():
            noise_inputs.append(label_noise_inputs(layout, steps))
    # Every row's keys: a group first seen after row 100 would otherwise be dropped.
    frame = pl.DataFrame(rows, infer_schema_length=None)
    # A group absent from a pool after it was emptied has no key: its size is 0 there.
    pool_columns = [c for c in frame.columns if c.startswith("pool_size.")]
    frame = frame.with_columns(pl.col(pool_columns).fill_null(0))
    if not noise_inputs:
        return frame
    truth, pools, quarantined = (pl.concat(parts) for parts in zip(*noise_inputs, strict=True))
    return label_noise(frame.lazy(), pools, quarantined, truth).collect()


def label_noise_inputs(
    layout: RunLayout, steps: list[dict[str, Any]]
) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame]:
    """The ground truth of one run (`sample_id`, `flipped` of its sample table), its pool
    after each step and the samples each step quarantined as `suspect-label`, keyed by
    `run_id` and `step`, as `experiment_results.label_noise` takes them."""
    run = pl.lit(layout.run_id).alias("run_id")
    truth = pl.scan_parquet(layout.samples).select(run, "sample_id", FLIPPED)
    pools, quarantined = [], []
    for step, record in enumerate(steps, start=1):
        keys = (run, pl.lit(step, dtype=pl.Int64).alias("step"))
        pool = pl.scan_parquet(layout.resolve(record["pool"]["path"]))
        pools.append(pool.select(*keys, "sample_id"))
        decisions = pl.scan_parquet(layout.resolve(record["step"]["decisions"]["path"]))
        suspects = decisions.filter(pl.col("reason") == SUSPECT_LABEL)
        quarantined.append(suspects.select(*keys, "sample_id"))
    return truth, pl.concat(pools), pl.concat(quarantined)


@dataclass(frozen=True)
class ExperimentOutputs:
    files: dict[str, Path]
    scoring_cost: dict[str, Any]
    summary: pl.DataFrame
    noise_by_step: pl.DataFrame | None  # with label noise: the pool's noisy share per step


def write_outputs(experiment: Experiment, out: Path) -> ExperimentOutputs:
    """results.parquet, summary.md and the PNGs into the experiment directory, from the
    manifests of its runs (so they can be rebuilt from the store at any time)."""
    # Imported here: matplotlib is only needed once the runs are done.
    from pipeline import experiment_plots

    raw = results_frame(experiment.cells)
    cost = experiment_results.experiment_scoring_cost(
        experiment_results.scoring_cost(raw.lazy()).collect()
    )
    results = experiment_results.with_compute(
        raw.lazy(), cost["ratio"], experiment.baseline
    ).collect()
    summary = experiment_results.policy_summary(results.lazy(), experiment.baseline)
    noise_by_step = experiment_results.noisy_share_by_step(results.lazy())
    files = {
        "results": out / "results.parquet",
        "summary": out / "summary.md",
        "accuracy_plot": out / "accuracy_vs_compute.png",
        "pool_plot": out / "pool_per_group.png",
    }
    if noise_by_step is not None:
        files["noise_plot"] = out / "noisy_share.png"
    write_parquet_atomic(results.to_arrow(), files["results"])
    markdown = experiment_results.summary_markdown(
        summary, experiment.baseline, cost, experiment.path.stem, noise_by_step
    )
    write_text_atomic(files["summary"], markdown)
    write_bytes_atomic(files["accuracy_plot"], experiment_plots.accuracy_plot(results))
    write_bytes_atomic(files["pool_plot"], experiment_plots.pool_plot(results))
    if noise_by_step is not None:
        write_bytes_atomic(files["noise_plot"], experiment_plots.noisy_share_plot(results))
    return ExperimentOutputs(files, cost, summary, noise_by_step)
