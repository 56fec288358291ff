"""Audit and hand-off at scale: `stm manifests diff` between the reset pool of a round
(all N samples) and its pool two pruning steps later, and `stm export` of the N-row pool
to Parquet shards, each in a fresh process for its time and peak RSS.

Baselines, measured in the same run: for diff, the bare Polars anti-joins of the two pool
files both ways (no lineage, no explanations); for export, a plain pyarrow copy of the
same rows (dataset scan of the sample table filtered to the pool ids, `write_dataset`
with the same rows per file).

    flock /tmp/stm-cpu.lock /tmp/venv/bin/python bench/diff_export.py [--quick]
        [--sizes 1000000,3000000,10000000] [--data /tmp/stm-bench-data]
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
from pathlib import Path

import click

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
from bench.manifests import RUN, _losses, _previous_scores  # noqa: E402

SHARDS = 8


def prepare(data: Path, rows: int) -> Path:
    """A store with one run of three manifests: the reset (r0 e0, all rows), a baseline
    pass that keeps everything (e1), and a pruning step (e2), made by the pipeline's own
    functions. The sample table has text columns, as a real dataset would."""
    root = data / f"diff-{rows_label(rows)}"
    if (root / "ready").exists():
        return root
    from pipeline.config import PolicyConfig
    from pipeline.pruning import StepInputs, prune_step, reset_pool
    from pipeline.store import RunLayout

    shutil.rmtree(root, ignore_errors=True)
    layout = RunLayout(root, RUN)
    write_chunked(layout.samples, rows, lambda a, b: samples_chunk(a, b, text_columns=True))
    layout.run_record.write_text('{"run": "bench", "provenance": {}}\n')
    policy = PolicyConfig(name="stm", delta=0.05, floor=1.0)
    record = reset_pool(layout, 0, None, policy, "bench")
    raw = {1: root / "raw-1.parquet", 2: root / "raw-2.parquet"}
    write_chunked(
        raw[1], rows, lambda a, b: _previous_scores(a, b).select("sample_id", "loss", "n_tokens")
    )
    write_chunked(raw[2], rows, lambda a, b: _losses(a, b).drop("loss_prev"))
    for epoch in (1, 2):
        step = StepInputs(0, epoch, raw[epoch], None, None, 0, 0, {})
        record = prune_step(layout, record, step, policy)
    (root / "ready").touch()
    return root


def child_diff(root: Path) -> None:
    from pipeline.cli import cli

    def work() -> dict[str, object]:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            cli(
                ["manifests", "diff", f"{RUN}:0:0", f"{RUN}:0:2", "--store", str(root)],
                standalone_mode=False,
            )
        return {"printed_lines": printed.getvalue().count("\n")}

    timed(work)


def child_diff_baseline(root: Path) -> None:
    import json

    import polars as pl

    records = [
        json.loads((root / "runs" / RUN / "manifests" / f"r00-e00{e}.json").read_text())
        for e in (0, 2)
    ]
    pools = [
        pl.scan_parquet(root / r["pool"]["path"]).select("sample_id", "group") for r in records
    ]

    def work() -> dict[str, object]:
        removed, added = pl.collect_all(
            [
                pools[0].join(pools[1], on="sample_id", how="anti").sort("sample_id"),
                pools[1].join(pools[0], on="sample_id", how="anti").sort("sample_id"),
            ]
        )
        return {"removed": removed.height, "added": added.height}

    timed(work)


def child_export(root: Path, out: Path) -> None:
    from pipeline.cli import cli

    def work() -> None:
        cli(
            [
                "export",
                f"{RUN}:0:0",
                "--out",
                str(out),
                "--shards",
                str(SHARDS),
                "--store",
                str(root),
            ],
            standalone_mode=False,
        )

    timed(work)


def child_export_baseline(root: Path, out: Path) -> None:
    import json

    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    def work() -> dict[str, object]:
        reset = json.loads((root / "runs" / RUN / "manifests" / "r00-e000.json").read_text())
        ids = pq.read_table(root / reset["pool"]["path"], columns=["sample_id"])["sample_id"]
        samples = ds.dataset(root / "runs" / RUN / "samples.parquet", format="parquet")
        scanner = samples.scanner(filter=ds.field("sample_id").isin(ids))
        rows = ids.length()
        per_file = -(-rows // SHARDS)
        ds.write_dataset(
            scanner,
            out,
            format="parquet",
            max_rows_per_file=per_file,
            max_rows_per_group=min(per_file, 1 << 20),
            file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
        )
        return {"rows": rows}

    timed(work)


@click.command()
@click.option("--quick", is_flag=True, help="100k rows: a smoke check in seconds.")
@click.option("--sizes", default="1000000,3000000,10000000", show_default=True)
@click.option("--data", type=click.Path(path_type=Path), default=DEFAULT_DATA, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--child",
    type=click.Choice(["diff", "diff-baseline", "export", "export-baseline"]),
    hidden=True,
)
@click.option("--root", type=click.Path(path_type=Path), hidden=True)
@click.option("--target", type=click.Path(path_type=Path), hidden=True)
def main(
    quick: bool,
    sizes: str,
    data: Path,
    out: Path | None,
    child: str | None,
    root: Path | None,
    target: Path | None,
) -> None:
    children = {
        "diff": lambda: child_diff(root),
        "diff-baseline": lambda: child_diff_baseline(root),
        "export": lambda: child_export(root, target),
        "export-baseline": lambda: child_export_baseline(root, target),
    }
    if child:
        return children[child]()
    result = {"benchmark": "diff_export", "environment": environment(), "sizes": []}
    for count in [100_000] if quick else [int(s) for s in sizes.split(",")]:
        store = prepare(data, count)
        entry: dict[str, object] = {"rows": count}
        for name in ("diff", "diff-baseline", "export", "export-baseline"):
            target_dir = store / "export-out"
            shutil.rmtree(target_dir, ignore_errors=True)
            m = measure(
                Path(__file__),
                ["--child", name, "--root", str(store), "--target", str(target_dir)],
            )
            entry[name] = {
                "seconds": m.seconds,
                "wall": m.wall,
                "peak_rss_mb": m.peak_rss_mb,
                **m.detail,
            }
            shutil.rmtree(target_dir, ignore_errors=True)
        for name in ("diff", "export"):
            entry[f"{name}_ratio"] = entry[name]["seconds"] / entry[f"{name}-baseline"]["seconds"]
            entry[f"{name}_rows_per_second"] = count / entry[name]["seconds"]
        result["sizes"].append(entry)
        print(
            f"{rows_label(count):>5}: "
            + " | ".join(
                f"{n} {entry[n]['seconds']:.2f} s {entry[n]['peak_rss_mb']:.0f} MB"
                for n in ("diff", "diff-baseline", "export", "export-baseline")
            )
            + f" | ratios diff {entry['diff_ratio']:.2f} export {entry['export_ratio']:.2f}",
            flush=True,
        )
    write_results("diff_export-quick" if quick else "diff_export", result, out)


if __name__ == "__main__":
    main()
