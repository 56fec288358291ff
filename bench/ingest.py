"""Ingest at scale: a Parquet dataset of N rows (8 files, an id column, a group column,
two text columns and a number) to the run's sample table, as an external trainer's run
does it (`flows.inputs.prepare_inputs`: `load_samples` and `dataset_fingerprint`, no
encoding) followed by writing `samples.parquet`. The built-in model's character encoding
(`--builtin`) is measured separately, on the same files. Baseline, in the same run: a
plain pyarrow read of the dataset and write of one zstd Parquet file.

    flock /tmp/stm-cpu.lock /tmp/venv/bin/python bench/ingest.py [--quick]
        [--sizes 1000000,3000000,10000000] [--builtin-sizes 100000,1000000]
"""

from __future__ import annotations

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

FILES = 8


def prepare(data: Path, rows: int) -> Path:
    directory = data / f"ingest-{rows_label(rows)}"
    per_file = -(-rows // FILES)
    for index in range(FILES):
        start, stop = index * per_file, min(rows, (index + 1) * per_file)
        write_chunked(
            directory / f"part-{index:02d}.parquet",
            stop - start,
            lambda a, b, s=start: samples_chunk(s + a, s + b, text_columns=True).rename(
                {"sample_id": "id", "group": "source"}
            ),
        )
    return directory


def child_ours(directory: Path, out: Path, builtin: bool) -> None:
    """An external trainer's ingest is `load_samples` then `dataset_fingerprint`
    (`flows.inputs.prepare_inputs`), timed apart here; the built-in model's adds the
    checks and the character encoding, timed as one `prepare_inputs`."""
    import time

    from flows.inputs import prepare_inputs
    from pipeline.config import DataConfig, RunConfig, TrainerConfig
    from pipeline.ingest import dataset_fingerprint, load_samples
    from pipeline.store import write_parquet_atomic

    data = DataConfig(path=str(directory), id_column="id", group_column="source")

    def work() -> dict[str, object]:
        laps = {}
        started = time.perf_counter()
        if builtin:
            samples = prepare_inputs(RunConfig(data=data, trainer=TrainerConfig())).samples
            laps["prepare_seconds"] = time.perf_counter() - started
        else:
            samples = load_samples(data, required_columns=())
            laps["load_seconds"] = time.perf_counter() - started
            dataset_fingerprint(samples)
            laps["fingerprint_seconds"] = time.perf_counter() - started - laps["load_seconds"]
        before_write = time.perf_counter()
        write_parquet_atomic(samples, out)
        laps["write_seconds"] = time.perf_counter() - before_write
        return {**laps, "rows": samples.num_rows}

    timed(work)


def child_baseline(directory: Path, out: Path) -> None:
    import pyarrow.parquet as pq

    def work() -> dict[str, object]:
        table = pq.read_table(directory)
        pq.write_table(table, out, compression="zstd")
        return {"rows": table.num_rows}

    timed(work)


@click.command()
@click.option("--quick", is_flag=True, help="100k rows: a smoke check in seconds.")
@click.option("--sizes", default="1000000,3000000,10000000", show_default=True)
@click.option("--builtin-sizes", default="100000,1000000", show_default=True)
@click.option("--data", type=click.Path(path_type=Path), default=DEFAULT_DATA, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--child", type=click.Choice(["ours", "builtin", "baseline"]), hidden=True)
@click.option("--source", type=click.Path(path_type=Path), hidden=True)
@click.option("--target", type=click.Path(path_type=Path), hidden=True)
def main(
    quick: bool,
    sizes: str,
    builtin_sizes: str,
    data: Path,
    out: Path | None,
    child: str | None,
    source: Path | None,
    target: Path | None,
) -> None:
    if child in ("ours", "builtin"):
        return child_ours(source, target, builtin=child == "builtin")
    if child == "baseline":
        return child_baseline(source, target)
    result = {"benchmark": "ingest", "environment": environment(), "sizes": []}
    counts = [100_000] if quick else [int(s) for s in sizes.split(",")]
    builtin = [100_000] if quick else [int(s) for s in builtin_sizes.split(",")]
    for count in sorted(set(counts) | set(builtin)):
        directory = prepare(data, count)
        target_file = data / "ingest-out.parquet"
        entry: dict[str, object] = {"rows": count}
        names = ["baseline"]
        names += ["ours"] if count in counts else []
        names += ["builtin"] if count in builtin else []
        for name in names:
            args = ["--child", name, "--source", str(directory), "--target", str(target_file)]
            m = measure(Path(__file__), args)
            entry[name] = {
                "seconds": m.seconds,
                "wall": m.wall,
                "peak_rss_mb": m.peak_rss_mb,
                **m.detail,
            }
            target_file.unlink(missing_ok=True)
        for name in ("ours", "builtin"):
            if name in entry:
                entry[f"{name}_ratio"] = entry[name]["seconds"] / entry["baseline"]["seconds"]
                entry[f"{name}_rows_per_second"] = count / entry[name]["seconds"]
        result["sizes"].append(entry)
        print(
            f"{rows_label(count):>5}: "
            + " | ".join(
                f"{n} {entry[n]['seconds']:.2f} s {entry[n]['peak_rss_mb']:.0f} MB" for n in names
            ),
            flush=True,
        )
    write_results("ingest-quick" if quick else "ingest", result, out)


if __name__ == "__main__":
    main()
