"""Scoring on Dask: the scoring stage plus the per-shard part of pruning (loss deltas and
decisions, then the merge, pool and manifest), single-process against a local Dask
cluster of 1 and of 2 single-threaded workers, on the same pool and scorer.

    flock /tmp/stm-cpu.lock /tmp/venv/bin/python bench/dask_scaling.py            # 300k samples
    flock /tmp/stm-cpu.lock /tmp/venv/bin/python bench/dask_scaling.py --quick    # 20k, seconds

The scorer is the default GRU (configs' defaults) exported by models/export.py after one
training pass over a few samples: its weights do not change its cost. Every variant scores
epoch 1 (the round's baseline) and epoch 2 (joined to epoch 1's losses) of its own copy
of the run, through the flow's own functions (`flows.stm_flow.score_and_prune*`) in a
Prefect flow; onnxruntime uses 1 thread per task everywhere. Reported per variant: the
seconds of each epoch's scoring stage (split, shards, merge, decisions, manifest), and the
whole flow's wall time, which adds the cluster's start-up and Prefect's flow run (its API
is started before any variant). Not part of the test suite. (Not named distributed.py:
the script's directory comes first on sys.path, and the name would shadow Dask's
`distributed` package.)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import (  # noqa: E402
    ArithmeticConfig,
    DataConfig,
    RunConfig,
    ScaleConfig,
    ScoringConfig,
)

VARIANTS = {
    "local (1 process)": ScaleConfig(engine="local"),
    "dask, 1 worker": ScaleConfig(engine="dask", dask_workers=1, shards=4),
    "dask, 2 workers": ScaleConfig(engine="dask", dask_workers=2, shards=4),
}


@click.command()
@click.option("--samples", type=int, default=300_000, show_default=True)
@click.option("--quick", is_flag=True, help="20k samples, for a smoke check.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(__file__).parent / "results" / "distributed.json",
)
def main(samples: int, quick: bool, out: Path) -> None:
    if quick:
        samples = 20_000
        out = out.with_name("distributed-quick.json")
    loadavg = os.getloadavg()
    sandbox = Path(tempfile.mkdtemp(prefix="stm-bench-dask-"))
    os.environ.setdefault("PREFECT_HOME", str(sandbox / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    from flows.inputs import prepare_inputs

    config = RunConfig(
        store=str(sandbox / "store"),
        rounds=1,
        epochs=2,
        data=DataConfig(
            arithmetic=ArithmeticConfig(
                n_easy=samples // 2,
                n_hard=samples - samples // 2,
                hard_min_digits=3,
                hard_max_digits=6,
            )
        ),
        scoring=ScoringConfig(batch_size=256, threads=1),
    )
    started = time.perf_counter()
    inputs = prepare_inputs(config)
    prepare_seconds = time.perf_counter() - started
    _start_prefect()
    results = {}
    ids = {}
    for name, scale in VARIANTS.items():
        run_config = replace(config, run_id=f"bench-{len(results)}", scale=scale)
        results[name], ids[name] = _measure(run_config, inputs)
        print(name, json.dumps(results[name]), flush=True)
    local = results["local (1 process)"]
    one, two = results["dask, 1 worker"], results["dask, 2 workers"]
    result = {
        "samples": samples,
        "loadavg_at_start": loadavg,
        "loadavg_at_end": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "prepare_seconds": prepare_seconds,
        "variants": results,
        "same_pools": len({tuple(v) for v in ids.values()}) == 1,
        "speedup_2_over_1_workers": one["stage_seconds"] / two["stage_seconds"],
        "speedup_2_workers_over_local": local["stage_seconds"] / two["stage_seconds"],
        "speedup_2_workers_over_local_wall": local["flow_seconds"] / two["flow_seconds"],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "variants"}, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def _start_prefect() -> None:
    """Start Prefect's in-process API with an empty flow, so that no variant's wall time
    includes it."""
    from prefect import flow

    flow(name="bench-warm-up")(lambda: None)()


def _measure(config: RunConfig, inputs) -> tuple[dict, list[str]]:
    """Score epochs 1 and 2 of a fresh copy of the run on `config.scale`'s engine."""
    from prefect import flow

    from flows import stm_flow as flows
    from flows.tasks import RunContext, export
    from models.charset import Vocabulary
    from models.trainer import train_epoch
    from pipeline.pruning import reset_pool
    from pipeline.runs import create_run
    from pipeline.store import read_samples_subset

    layout = create_run(config, inputs)
    vocabulary = Vocabulary.from_json(inputs.vocabulary_json)
    ctx = RunContext(config, layout, inputs.fingerprint, vocabulary, False)
    few = read_samples_subset(
        layout.samples,
        inputs.samples.column("sample_id").slice(0, 64).combine_chunks(),
        ["sample_id", "tokens", "loss_mask", "n_tokens"],
    )
    train_epoch(few, layout.trainer_dir, vocabulary.size, config.model, config.train, 0, 0)
    parent = reset_pool(layout, 0, None, config.policy, inputs.fingerprint)

    @flow(name="bench-scoring", validate_parameters=False)
    def scoring_stage(parent: dict) -> tuple[list[float], list[str]]:
        stage = flows.score_and_prune
        if config.scale.engine == "dask":
            stage = flows.score_and_prune_in_shards
        seconds, ids = [], []
        for epoch in (1, 2):
            scorer, digest, _ = export.fn(ctx, 0, epoch)
            trained = flows.TrainedScorer(scorer, digest, 0, {}, {})
            started = time.perf_counter()
            parent, _ = stage(ctx, trained, parent, 0, epoch)
            seconds.append(time.perf_counter() - started)
            ids.append(parent["pool"]["sha256"])
        return seconds, ids

    runner_flow = scoring_stage
    if config.scale.engine == "dask":
        runner_flow = scoring_stage.with_options(task_runner=flows.flow_for(config).task_runner)
    started = time.perf_counter()
    seconds, ids = runner_flow(parent)
    flow_seconds = time.perf_counter() - started
    return {
        "epoch_seconds": seconds,
        "stage_seconds": sum(seconds),
        "flow_seconds": flow_seconds,
        "scale": {
            "engine": config.scale.engine,
            "workers": config.scale.dask_workers if config.scale.engine == "dask" else None,
            "shards": config.scale.shards if config.scale.engine == "dask" else None,
        },
    }, ids


if __name__ == "__main__":
    main()
