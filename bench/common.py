"""What the data-path benchmarks share: one measurement per fresh subprocess (its wall
time, the seconds it reports for the work itself, and its peak RSS), the
synthetic data they run on (generated once under a data directory and reused), and the
results file with the machine's load when the benchmark started."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = Path("/tmp/stm-bench-data")
GROUPS = ("easy", "hard", "medium")
CHUNK_ROWS = 5_000_000


@dataclass(frozen=True)
class Measurement:
    """One child process: `seconds` is what the child timed around the work (no
    interpreter start-up or imports), `wall` the whole process, `peak_rss_mb` its peak
    resident memory (VmHWM, read by the child as it finishes)."""

    seconds: float
    wall: float
    peak_rss_mb: float
    detail: dict[str, Any]


def measure(script: Path, args: list[str]) -> Measurement:
    """Run `python script --child ...` in a fresh process and read its peak RSS from the
    kernel once it exits; the child prints one JSON object with `seconds` as its last line."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    out = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} exited with {child.returncode}")
    detail = json.loads(out.strip().splitlines()[-1])
    # ru_maxrss (KiB) is at least the parent's RSS when it forked, which Linux carries
    # across exec: the child's own high-water mark (VmHWM of its image) is the number.
    detail["ru_maxrss_mb"] = usage.ru_maxrss / 1024
    return Measurement(detail.pop("seconds"), wall, detail.pop("vm_hwm_mb"), detail)


def timed(work: Callable[[], dict[str, Any] | None]) -> None:
    """In a child: run `work`, print its seconds (and whatever it returns) as JSON."""
    started = time.perf_counter()
    extra = work() or {}
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "vm_hwm_mb": peak_rss_mb(), **extra}))


def peak_rss_mb() -> float:
    """This process's peak resident set since its exec, from /proc (kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def environment() -> dict[str, Any]:
    """Recorded with every result: the load other processes put on the machine matters
    on 2 shared cores."""
    return {
        "loadavg_at_start": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "polars": pl.__version__,
        "pyarrow": pa.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, result: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def sample_ids(start: int, stop: int) -> pl.Expr:
    """Unique ids in no particular order, 20 digits like a content hash: the row index
    times an odd constant modulo 2**64 (a bijection), so sorting by id is real work."""
    index = pl.int_range(start, stop, dtype=pl.UInt64)
    return (index * 0x9E3779B97F4A7C15).cast(pl.String).str.zfill(20)


def write_chunked(path: Path, rows: int, chunk: Callable[[int, int], pl.DataFrame]) -> Path:
    """Write `rows` rows made by `chunk(start, stop)` to one Parquet file in bounded
    memory, unless the file is already there (data is generated once and reused)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = None
    for start in range(0, rows, CHUNK_ROWS):
        table = chunk(start, min(rows, start + CHUNK_ROWS)).to_arrow()
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
        writer.write_table(table)
    if writer is not None:
        writer.close()
    os.replace(tmp, path)
    return path


def samples_chunk(start: int, stop: int, text_columns: bool = False) -> pl.DataFrame:
    """Rows of a sample table: sample_id, group and, for ingest/export, two text columns
    and a number, like a small instruction dataset."""
    frame = pl.select(sample_id=sample_ids(start, stop)).with_columns(
        group=pl.int_range(start, stop).mod(len(GROUPS)).replace_strict(range(3), GROUPS)
    )
    if not text_columns:
        return frame
    index = pl.int_range(start, stop)
    return frame.with_columns(
        prompt=pl.format("{} + {} =", index.mod(997), index.mod(89)),
        target=(index.mod(997) + index.mod(89)).cast(pl.String),
        quality=(index.mod(1000) / 1000.0),
    )


def rows_label(rows: int) -> str:
    for unit, size in (("B", 1_000_000_000), ("M", 1_000_000), ("k", 1_000)):
        if rows >= size and rows % size == 0:
            return f"{rows // size}{unit}"
    return str(rows)
