"""Prune + manifest at scale: `pipeline.pruning.prune_step` (loss deltas against the
previous pass, the STM policy, decisions, surviving pool, hashes, manifest record) on a
synthetic run of N score rows, against the bare Polars computation of the same decisions
with no bookkeeping (scan raw and previous scores, join, STM condition, sink the sorted
surviving ids), each in a fresh process for its time and peak RSS.

    flock /tmp/stm-cpu.lock /tmp/venv/bin/python bench/manifests.py [--quick]
        [--sizes 1000000,10000000,50000000,100000000] [--data /tmp/stm-bench-data]

Synthetic data is generated once per size under --data and reused.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DEFAULT_DATA,
    environment,
    measure,
    rows_label,
    samples_chunk,
    timed,
    write_chunked,
    write_results,
)
from pipeline.sorted_sink import sort_to  # noqa: E402

RUN = "bench"
DELTA, FLOOR = 0.05, 1.0


def _losses(start: int, stop: int) -> pl.DataFrame:
    """Loss now and one pass ago, spread so that every STM reason occurs."""
    index = pl.int_range(start, stop, dtype=pl.Int64)
    loss = (index * 7919).mod(1000).cast(pl.Float32) / 300.0
    change = (index * 104729).mod(1000).cast(pl.Float32) / 1000.0 - 0.3
    return samples_chunk(start, stop).select(
        "sample_id",
        loss=loss,
        loss_prev=(loss + change).clip(lower_bound=0.0),
        n_tokens=(index.mod(13) + 4),
    )


def _previous_scores(start: int, stop: int) -> pl.DataFrame:
    losses = _losses(start, stop)
    return losses.select(
        "sample_id",
        round=pl.lit(0, pl.Int32),
        epoch=pl.lit(1, pl.Int32),
        loss=pl.col("loss_prev"),
        loss_prev=pl.lit(None, pl.Float32),
        delta=pl.lit(None, pl.Float32),
        rel_delta=pl.lit(None, pl.Float32),
        n_tokens="n_tokens",
    )


def prepare(data: Path, rows: int) -> Path:
    """A store holding one run: samples (sample_id, group), the parent's pool (every
    sample, sorted by id as pools are stored), the scores of (0, 1) and the raw losses of
    (0, 2), the input of the pruning step that is measured."""
    root = data / f"manifests-{rows_label(rows)}"
    run = root / "runs" / RUN
    write_chunked(run / "samples.parquet", rows, samples_chunk)
    parent_pool = run / "parent-pool.parquet"
    if not parent_pool.exists():
        samples = pl.scan_parquet(run / "samples.parquet").select("sample_id", "group")
        sort_to(samples, parent_pool, rows)
    write_chunked(run / "scores" / "r00-e001.parquet", rows, _previous_scores)
    write_chunked(root / "raw-r00-e002.parquet", rows, lambda a, b: _losses(a, b).drop("loss_prev"))
    return root


def _clean(root: Path) -> None:
    """Remove what a measured step wrote, so each measurement writes everything anew."""
    run = root / "runs" / RUN
    for path in (run / "decisions", run / "manifests", root / "pools", run / "raw"):
        shutil.rmtree(path, ignore_errors=True)
    (run / "scores" / "r00-e002.parquet").unlink(missing_ok=True)
    (run / "raw").mkdir()
    shutil.copy(root / "raw-r00-e002.parquet", run / "raw" / "r00-e002.parquet")


def child_ours(root: Path, rows: int) -> None:
    import time

    from pipeline.config import PolicyConfig
    from pipeline.pruning import StepInputs, _scored_with_deltas, record_pruning
    from pipeline.store import RunLayout

    layout = RunLayout(root, RUN)
    parent = {
        "id": "0" * 64,
        "pool": {"path": f"runs/{RUN}/parent-pool.parquet", "size": rows},
        "dataset": {"fingerprint": "bench", "samples": rows},
        "tokens": {"trained": 0, "scored": 0},
    }
    step = StepInputs(0, 2, layout.run_dir / "raw" / "r00-e002.parquet", None, None, 0, 0, {})
    policy = PolicyConfig(name="stm", delta=DELTA, floor=FLOOR)

    def work() -> dict[str, object]:
        started = time.perf_counter()
        scores = _scored_with_deltas(layout, step)
        deltas = time.perf_counter() - started
        record = record_pruning(layout, parent, scores, step, policy)
        return {
            "deltas_seconds": deltas,
            "decide_and_manifest_seconds": time.perf_counter() - started - deltas,
            "pool_size": record["pool"]["size"],
            "pool_sha256": record["pool"]["sha256"],
            "manifest_id": record["id"],
        }

    timed(work)


def child_baseline(root: Path) -> None:
    run = root / "runs" / RUN

    def work() -> dict[str, object]:
        raw = pl.scan_parquet(run / "raw" / "r00-e002.parquet")
        prior = pl.scan_parquet(run / "scores" / "r00-e001.parquet").select(
            "sample_id", loss_prev="loss"
        )
        delta = pl.col("loss_prev") - pl.col("loss")
        mastered = (delta >= DELTA) & (pl.col("loss") <= FLOOR)
        out = root / "baseline-pool.parquet"
        (
            raw.join(prior, on="sample_id", how="left")
            .filter(~mastered.fill_null(False))
            .select("sample_id")
            .sort("sample_id")
            .sink_parquet(out)
        )
        size = pl.scan_parquet(out).select(pl.len()).collect().item()
        out.unlink()
        return {"pool_size": size}

    timed(work)


@click.command()
@click.option("--quick", is_flag=True, help="100k rows: a smoke check in seconds.")
@click.option("--sizes", default="1000000,10000000,50000000,100000000", show_default=True)
@click.option("--repeat", default=1, show_default=True, help="Measurements per size; best kept.")
@click.option("--data", type=click.Path(path_type=Path), default=DEFAULT_DATA, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--child", type=click.Choice(["ours", "baseline"]), hidden=True)
@click.option("--root", type=click.Path(path_type=Path), hidden=True)
@click.option("--rows", type=int, hidden=True)
def main(
    quick: bool,
    sizes: str,
    repeat: int,
    data: Path,
    out: Path | None,
    child: str | None,
    root: Path | None,
    rows: int | None,
) -> None:
    if child == "ours":
        return child_ours(root, rows)
    if child == "baseline":
        return child_baseline(root)
    result = {"benchmark": "manifests", "environment": environment(), "sizes": []}
    row_counts = [100_000] if quick else [int(s) for s in sizes.split(",")]
    for count in row_counts:
        store = prepare(data, count)
        best: dict[str, object] = {}
        for _ in range(repeat):
            for name, args in (
                ("ours", ["--child", "ours", "--root", str(store), "--rows", str(count)]),
                ("baseline", ["--child", "baseline", "--root", str(store)]),
            ):
                _clean(store)
                m = measure(Path(__file__), args)
                if name not in best or m.seconds < best[name]["seconds"]:
                    best[name] = {
                        "seconds": m.seconds,
                        "wall": m.wall,
                        "peak_rss_mb": m.peak_rss_mb,
                        **m.detail,
                    }
        ours, base = best["ours"], best["baseline"]
        assert ours["pool_size"] == base["pool_size"], (ours, base)
        entry = {
            "rows": count,
            "ours": ours,
            "baseline": base,
            "ratio_seconds": ours["seconds"] / base["seconds"],
            "rows_per_second": count / ours["seconds"],
        }
        result["sizes"].append(entry)
        print(
            f"{rows_label(count):>5}: ours {ours['seconds']:.2f} s "
            f"(deltas {ours['deltas_seconds']:.2f}, decide+manifest "
            f"{ours['decide_and_manifest_seconds']:.2f}) {ours['peak_rss_mb']:.0f} MB | "
            f"baseline {base['seconds']:.2f} s {base['peak_rss_mb']:.0f} MB | "
            f"ratio {entry['ratio_seconds']:.2f}",
            flush=True,
        )
        _clean(store)
        # After every size: a later size that fails (memory, a killed run) keeps these.
        write_results("manifests-quick" if quick else "manifests", result, out)


if __name__ == "__main__":
    main()
