"""Every file the pipeline writes goes through here: the documented store layout (see
manifests/README.md), atomic writes (temp file + rename) and content hashing."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.errors import ManifestIntegrityError, StoreError

STEP_FORMAT = "r{round:02d}-e{epoch:03d}"


def step_name(round_index: int, epoch: int) -> str:
    """The file stem of one (round, epoch) step; epoch 0 is the pool a round starts from."""
    return STEP_FORMAT.format(round=round_index, epoch=epoch)


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run inside a store. Records keep paths relative to the store root, so
    a store copied elsewhere still reads and verifies."""

    root: Path
    run_id: str

    @property
    def run_dir(self) -> Path:
        return self.root / "runs" / self.run_id

    @property
    def run_record(self) -> Path:
        return self.run_dir / "run.json"

    @property
    def lock(self) -> Path:
        return self.run_dir / ".lock"

    def trainer_snapshot(self, round_index: int, epoch: int) -> Path:
        """The trainer's directory as it was after training (round, epoch), for resume."""
        return self.run_dir / "trainer-snapshots" / step_name(round_index, epoch)

    @property
    def completion_marker(self) -> Path:
        return self.run_dir / "complete.json"

    @property
    def config(self) -> Path:
        return self.run_dir / "config.toml"

    @property
    def samples(self) -> Path:
        return self.run_dir / "samples.parquet"

    @property
    def eval_samples(self) -> Path:
        return self.run_dir / "eval.parquet"

    @property
    def vocabulary(self) -> Path:
        return self.run_dir / "vocab.json"

    @property
    def trainer_dir(self) -> Path:
        return self.run_dir / "trainer"

    @property
    def trainer_pool(self) -> Path:
        """The pool an external trainer trains on next, as Parquet shards."""
        return self.run_dir / "trainer-pool"

    def trainer_log(self, round_index: int, epoch: int, stream: str) -> Path:
        """What an external trainer printed on `stream` (stdout, stderr) in one epoch."""
        return self.run_dir / "logs" / f"{step_name(round_index, epoch)}.{stream}"

    def scorer(self, round_index: int, epoch: int) -> Path:
        return self.run_dir / "scorers" / f"{step_name(round_index, epoch)}.onnx"

    def scores(self, round_index: int, epoch: int) -> Path:
        return self.run_dir / "scores" / f"{step_name(round_index, epoch)}.parquet"

    def decisions(self, round_index: int, epoch: int) -> Path:
        return self.run_dir / "decisions" / f"{step_name(round_index, epoch)}.parquet"

    def weights(self, round_index: int, epoch: int) -> Path:
        """A soft policy's training weights for the epoch after (round, epoch)."""
        return self.run_dir / "weights" / f"{step_name(round_index, epoch)}.parquet"

    def manifest(self, round_index: int, epoch: int) -> Path:
        return self.run_dir / "manifests" / f"{step_name(round_index, epoch)}.json"

    @property
    def manifest_dir(self) -> Path:
        return self.run_dir / "manifests"

    def pool(self, pool_hash: str) -> Path:
        return pool_path(self.root, pool_hash)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        return self.root / relative


def pool_path(root: Path, pool_hash: str) -> Path:
    """Pools are content-addressed and shared by every run of a store: identical surviving
    pools are stored once."""
    return root / "pools" / f"{pool_hash}.parquet"


def list_runs(root: Path) -> list[str]:
    runs_dir = root / "runs"
    if not root.is_dir():
        raise StoreError(f"{root}: store not found")
    if not runs_dir.is_dir():
        return []
    return sorted(p.name for p in runs_dir.iterdir() if (p / "run.json").is_file())


def _current_umask() -> int:
    """Read, not set-and-restore: setting it, even briefly, would change the mode of
    files other threads create meanwhile."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc (not Linux): the classic way, once, at import
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def temporary_sibling(path: Path) -> Path:
    """A new temp file next to `path` (same filesystem, so a rename onto `path` is atomic),
    hidden and suffixed `.tmp` so no reader mistakes it for the real file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp makes the file owner-only; the store's files get the mode any new file
    # would (the umask's), so auditors and other readers of a shared store can read them.
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it is renamed onto `path`, on any error it is
    removed. A reader sees the old file or the whole new one, never half of it, even if the
    process dies mid-write."""
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_immutable(path: Path, data: bytes) -> None:
    """Write a file that must never change: writing identical bytes again is a no-op,
    different bytes are an integrity error."""
    if path.exists():
        if path.read_bytes() != data:
            raise ManifestIntegrityError(f"{path}: already exists with different content")
        return
    write_bytes_atomic(path, data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_samples_subset(samples: Path, ids: pa.Array, columns: list[str] | None = None) -> pa.Table:
    """The rows of a sample table whose sample_id is in `ids`, read with a pushed-down
    filter so the rest of the table never leaves disk."""
    dataset = ds.dataset(samples, format="parquet")
    return dataset.to_table(columns=columns, filter=ds.field("sample_id").isin(ids))


def iter_samples_subset(
    samples: Path, ids: pa.Array, columns: list[str], batch_size: int
) -> ds.Scanner:
    """A scanner over the rows in `ids`, yielding bounded record batches."""
    dataset = ds.dataset(samples, format="parquet")
    return dataset.scanner(
        columns=columns, filter=ds.field("sample_id").isin(ids), batch_size=batch_size
    )
