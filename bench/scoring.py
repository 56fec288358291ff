"""The scoring stage against its limit: `pipeline.scoring.score_pool` (read the pool's rows
from the sample table, pad, onnxruntime, write the raw scores) against a bare onnxruntime
loop over numpy batches built before the clock starts (the limit for this model and these
threads), and against torch eager on the same batches; each in a fresh process for its
time and peak RSS.

    flock /tmp/stm-cpu.lock /tmp/venv/bin/python bench/scoring.py [--quick]
        [--sizes 20000,100000,500000] [--grid-rows 100000] [--batch-sizes 64,256,1024,4096]
        [--threads 1,2] [--archs gru,transformer] [--data /tmp/stm-bench-data]

The scorer is the built-in model at its default size (GRU embed 32, hidden 128; the
transformer at hidden 64, 2 layers, as in bench/learnability.py) trained one epoch on the
built-in arithmetic data and exported as the flow exports it. Pools are that data
replicated with new ids and shuffled, generated once per size under --data and reused.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_DATA,
    environment,
    measure,
    rows_label,
    timed,
    write_results,
)
from pipeline.config import ModelConfig, RunConfig, ScoringConfig  # noqa: E402

MODELS = {
    "gru": ModelConfig(),
    "transformer": replace(ModelConfig(), arch="transformer", hidden_dim=64, layers=2),
}
VARIANTS = ("ours", "bare", "torch")
BEFORE_TREE = "STM_BENCH_BEFORE_TREE"


def prepare(data: Path, arch: str, rows: int) -> tuple[Path, Path]:
    """(trainer workdir holding checkpoint and scorer.onnx, sample table of `rows` rows)."""
    root = data / "scoring"
    workdir = root / f"model-{arch}"
    if not (workdir / "scorer.onnx").exists():
        _build_scorer(workdir, MODELS[arch])
    samples = root / f"samples-{rows_label(rows)}.parquet"
    if not samples.exists():
        _build_samples(samples, rows)
    return workdir, samples


def _encoded_arithmetic() -> tuple[Any, int]:
    from flows.inputs import prepare_inputs
    from models.charset import Vocabulary

    inputs = prepare_inputs(RunConfig())
    return inputs.samples, Vocabulary.from_json(inputs.vocabulary_json).size


def _build_scorer(workdir: Path, model: ModelConfig) -> None:
    from models.export import export_scorer
    from models.trainer import train_epoch

    encoded, vocab_size = _encoded_arithmetic()
    workdir.mkdir(parents=True, exist_ok=True)
    config = RunConfig()
    train_epoch(encoded, workdir, vocab_size, model, config.train, seed=0, shuffle_seed=0)
    export_scorer(workdir, workdir / "scorer.onnx")


def _build_samples(path: Path, rows: int) -> None:
    """The encoded arithmetic samples repeated with new ids up to `rows`, shuffled: the
    table order of an ingested dataset says nothing about lengths."""
    import numpy as np
    import pyarrow as pa

    from pipeline.store import write_parquet_atomic

    encoded, _ = _encoded_arithmetic()
    copies = -(-rows // encoded.num_rows)
    tiled = pa.concat_tables([encoded] * copies).slice(0, rows)
    copy_index = np.repeat(np.arange(copies), encoded.num_rows)[:rows].astype(str)
    ids = np.char.add(
        np.char.add(tiled.column("sample_id").to_numpy().astype(str), "~"), copy_index
    )
    tiled = tiled.set_column(0, "sample_id", pa.array(ids))
    order = np.random.default_rng(0).permutation(rows)
    write_parquet_atomic(tiled.take(order).combine_chunks(), path)


def _prebuilt_batches(samples: Path, batch_size: int) -> list[dict[str, Any]]:
    """The pool as padded numpy feeds, each padded to its own longest row as ours does."""
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.padding import pad_lists

    table = pq.read_table(samples, columns=["tokens", "loss_mask"]).combine_chunks()
    batches = []
    for start in range(0, table.num_rows, batch_size):
        batch = table.slice(start, batch_size)
        batches.append(
            {
                "tokens": pad_lists(batch.column("tokens"), 0).astype(np.int64),
                "loss_mask": pad_lists(batch.column("loss_mask"), 0).astype(np.float32),
            }
        )
    return batches


def child_ours(workdir: Path, samples: Path, batch_size: int, threads: int) -> None:
    import pyarrow.parquet as pq

    from pipeline.scoring import score_pool

    ids = pq.read_table(samples, columns=["sample_id"]).column("sample_id").combine_chunks()
    out = Path(tempfile.mkdtemp(prefix="stm-bench-scoring-")) / "raw.parquet"

    def work() -> dict[str, Any]:
        summary = score_pool(workdir / "scorer.onnx", samples, ids, out, batch_size, threads)
        return {"samples": summary.samples}

    timed(work)
    shutil.rmtree(out.parent)


def child_bare(workdir: Path, samples: Path, batch_size: int, threads: int) -> None:
    import onnxruntime as ort

    batches = _prebuilt_batches(samples, batch_size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(workdir / "scorer.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
    )
    session.run(["loss"], batches[0])

    def work() -> dict[str, Any]:
        for feed in batches:
            session.run(["loss"], feed)
        return {"samples": sum(len(b["tokens"]) for b in batches)}

    timed(work)


def child_torch(workdir: Path, samples: Path, batch_size: int, threads: int) -> None:
    import torch

    from models.checkpoint import load_model
    from models.loss import ScorerModule

    torch.set_num_threads(threads)
    scorer = ScorerModule(load_model(workdir)[0]).eval()
    batches = [
        (torch.from_numpy(b["tokens"]), torch.from_numpy(b["loss_mask"]))
        for b in _prebuilt_batches(samples, batch_size)
    ]
    with torch.inference_mode():
        scorer(*batches[0])

    def work() -> dict[str, Any]:
        with torch.inference_mode():
            for tokens, loss_mask in batches:
                scorer(tokens, loss_mask)
        return {"samples": sum(len(t) for t, _ in batches)}

    timed(work)


def child_before(workdir: Path, samples: Path, batch_size: int, threads: int) -> None:
    """`ours` with `pipeline` imported from the tree in BEFORE_TREE: the code before a
    change, measured in the same run as the code after it."""
    sys.path.insert(0, os.environ[BEFORE_TREE])
    for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
        del sys.modules[name]
    child_ours(workdir, samples, batch_size, threads)


CHILDREN = {"ours": child_ours, "before": child_before, "bare": child_bare, "torch": child_torch}


def run_variants(data: Path, arch: str, rows: int, batch_size: int, threads: int) -> dict[str, Any]:
    """One measurement of each variant at this point, ratios against the bare loop."""
    workdir, samples = prepare(data, arch, rows)
    point: dict[str, Any] = {
        "arch": arch,
        "rows": rows,
        "batch_size": batch_size,
        "threads": threads,
    }
    variants = VARIANTS + (("before",) if BEFORE_TREE in os.environ else ())
    for variant in variants:
        args = [
            "--child", variant, "--workdir", str(workdir), "--samples", str(samples),
            "--batch-size", str(batch_size), "--threads", str(threads),
        ]  # fmt: skip
        measured = measure(Path(__file__), args)
        if measured.detail["samples"] != rows:
            raise RuntimeError(f"{variant} scored {measured.detail['samples']} of {rows} rows")
        point[variant] = {
            "seconds": round(measured.seconds, 4),
            "rows_per_s": round(rows / measured.seconds),
            "peak_rss_mb": round(measured.peak_rss_mb, 1),
            "wall_seconds": round(measured.wall, 3),
        }
    point["ours_over_bare"] = round(point["bare"]["seconds"] / point["ours"]["seconds"], 3)
    point["ours_over_torch"] = round(point["torch"]["seconds"] / point["ours"]["seconds"], 3)
    if "before" in point:
        point["ours_over_before"] = round(point["before"]["seconds"] / point["ours"]["seconds"], 3)
    print(
        f"{arch:11} {rows_label(rows):>5} batch {batch_size:5} threads {threads}: "
        + "  ".join(f"{v} {point[v]['rows_per_s']:>8,} rows/s" for v in VARIANTS)
        + f"  ours/bare {point['ours_over_bare']:.2f}  ours/torch {point['ours_over_torch']:.2f}"
        + (f"  before {point['before']['rows_per_s']:,} rows/s" if "before" in point else ""),
        flush=True,
    )
    return point


def markdown(points: list[dict[str, Any]]) -> str:
    """The points as a BENCHMARKS.md table."""
    lines = [
        "| model | rows | batch | threads | ours rows/s | bare ORT rows/s | torch rows/s "
        "| ours/bare | ours/torch | peak RSS MB ours / bare / torch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        rss = " / ".join(f"{p[v]['peak_rss_mb']:.0f}" for v in VARIANTS)
        lines.append(
            f"| {p['arch']} | {rows_label(p['rows'])} | {p['batch_size']} | {p['threads']} | "
            + " | ".join(f"{p[v]['rows_per_s']:,}" for v in VARIANTS)
            + f" | {p['ours_over_bare']:.2f} | {p['ours_over_torch']:.2f} | {rss} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


@click.command()
@click.option("--quick", is_flag=True, help="5k rows, two batch sizes: a smoke check in seconds.")
@click.option("--sizes", default="20000,100000,500000", show_default=True)
@click.option("--grid-rows", default=100_000, show_default=True)
@click.option("--batch-sizes", default="64,256,1024,4096", show_default=True)
@click.option("--threads", "thread_counts", default="1,2", show_default=True)
@click.option("--archs", default="gru,transformer", show_default=True)
@click.option("--data", type=click.Path(path_type=Path), default=DEFAULT_DATA, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--before-tree",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="A tree holding `pipeline/` before a change (git archive COMMIT pipeline | tar -x "
    "-C DIR): its score_pool is measured too, as `before`.",
)
@click.option("--child", type=click.Choice(sorted(CHILDREN)), hidden=True)
@click.option("--workdir", type=click.Path(path_type=Path), hidden=True)
@click.option("--samples", type=click.Path(path_type=Path), hidden=True)
@click.option("--batch-size", type=int, hidden=True)
def main(
    quick: bool,
    sizes: str,
    grid_rows: int,
    batch_sizes: str,
    thread_counts: str,
    archs: str,
    data: Path,
    out: Path | None,
    before_tree: Path | None,
    child: str | None,
    workdir: Path | None,
    samples: Path | None,
    batch_size: int | None,
) -> None:
    if child is not None:
        assert workdir and samples and batch_size
        CHILDREN[child](workdir, samples, batch_size, _ints(thread_counts)[0])
        return
    result: dict[str, Any] = {"environment": environment(), "command": " ".join(sys.argv)}
    if before_tree is not None:
        os.environ[BEFORE_TREE] = str(before_tree.resolve())
    defaults = ScoringConfig()
    if quick:
        sizes, grid_rows, batch_sizes = "5000", 5000, f"256,{defaults.batch_size}"
    grid_batches = sorted(set(_ints(batch_sizes)))
    arch_names = archs.split(",")
    result["defaults"] = {"batch_size": defaults.batch_size, "threads": defaults.threads}
    result["grid"] = [
        run_variants(data, arch, grid_rows, size, threads)
        for arch in arch_names
        for threads in _ints(thread_counts)
        for size in grid_batches
    ]
    result["scaling"] = [
        run_variants(data, arch, rows, defaults.batch_size, defaults.threads)
        for arch in arch_names
        for rows in _ints(sizes)
    ]
    name = "scoring-quick" if quick else "scoring"
    print(markdown(result["grid"] + result["scaling"]))
    print(f"results: {write_results(name, result, out)}")


if __name__ == "__main__":
    main()
