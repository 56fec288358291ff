"""Check an ONNX scorer against a dataset before it scores anything: every violation of the
scorer contract (see `pipeline.scoring`) at once, each as one line naming the file and the
input, output or sample at fault. Any trainer's export can be vetted this way, and the
flow vets an external trainer's scorer with it before the epoch writes a file.

Beyond the declared interface, the scorer is run on the first samples twice, in batches
of two sizes: the loss must come out as `[batch]` for each, finite for every sample, and
the same for a sample whatever the batch and padding around it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.errors import DatasetError, ScorerContractError
from pipeline.scoring import ScorerInput, batch_losses, interface_problems, open_scorer

if TYPE_CHECKING:  # onnxruntime is used in pipeline.scoring only
    import onnxruntime as ort

SECOND_TRIAL_ROWS = 3
# A sample's loss computed in two batches may differ by float rounding, not by more.
LOSS_RTOL = 1e-4
LOSS_ATOL = 1e-5


def check_scorer(onnx_path: Path, samples: Path, sample_rows: int = 8) -> list[str]:
    """Every problem of the scorer at `onnx_path` for the Parquet sample table (a file or
    a directory of shards) at `samples`; an empty list means it meets the contract."""
    try:
        dataset = ds.dataset(samples, format="parquet")
        head = dataset.head(sample_rows)
    except (OSError, pa.ArrowException) as err:
        raise DatasetError(f"{samples}: cannot read as Parquet: {err}") from err
    return check_scorer_table(onnx_path, head, str(samples), sample_rows)


def check_scorer_table(
    onnx_path: Path, samples: pa.Table, source: str, sample_rows: int = 8
) -> list[str]:
    """`check_scorer` on a table already in memory (an ingested dataset, say); `source`
    names it in the messages. Samples are named by `sample_id`, or by row without one."""
    try:
        session = open_scorer(onnx_path, threads=1)
    except ScorerContractError as err:
        return [str(err)]
    inputs, problems = interface_problems(session, samples.schema, onnx_path, source)
    if problems:
        return problems
    return _trial_problems(session, inputs, samples.slice(0, sample_rows), onnx_path)


def raise_if_invalid(problems: list[str]) -> None:
    """Stop with every problem on one line, as the check reports them."""
    if problems:
        raise ScorerContractError("; ".join(problems))


def trial_batch_sizes(rows: int) -> list[int]:
    """All the rows at once, then fewer, so a batch size baked into the graph shows."""
    if rows <= 1:
        return [rows] if rows else []
    return [rows, SECOND_TRIAL_ROWS if rows > SECOND_TRIAL_ROWS else rows - 1]


def _trial_problems(
    session: ort.InferenceSession, inputs: list[ScorerInput], head: pa.Table, onnx_path: Path
) -> list[str]:
    describe = _sample_names(head)
    problems: list[str] = []
    runs: list[np.ndarray] = []
    for size in trial_batch_sizes(head.num_rows):
        loss, found = batch_losses(session, inputs, head.slice(0, size), onnx_path, describe)
        problems += found
        runs.append(loss)
    if problems:
        # A non-finite loss shows in both runs with the same message: name it once.
        return list(dict.fromkeys(problems))
    return _batch_dependence(runs, onnx_path, describe)


def _batch_dependence(
    runs: list[np.ndarray], onnx_path: Path, describe: Callable[[int], str]
) -> list[str]:
    if len(runs) < 2:
        return []
    first, second = runs
    rows = len(second)
    differs = ~np.isclose(first[:rows], second, rtol=LOSS_RTOL, atol=LOSS_ATOL)
    return [
        f"{onnx_path}: loss of {describe(i)} is {first[i]:.6g} in a batch of {len(first)} but "
        f"{second[i]:.6g} in a batch of {rows}; a sample's loss must not depend on the other "
        "samples of its batch or their padding"
        for i in np.flatnonzero(differs)
    ]


def _sample_names(table: pa.Table) -> Callable[[int], str]:
    if "sample_id" in table.column_names:
        ids = table.column("sample_id")
        return lambda row: f"sample '{ids[row]}'"
    return lambda row: f"row {row}"
