"""Score a pool with an ONNX scorer: Arrow record batches stream from the sample table
through onnxruntime into a Parquet file of per-sample losses, never the whole dataset as
Python objects.

The scorer contract: every graph input is named after a numeric column of the sample table
(list columns are padded per batch with zeros into a rank-2 input, scalar columns fed as
they are into a rank-1 one, both cast to the input's type unless floats would be truncated)
and the output `loss` is float32 `[batch]`, one finite loss per sample. The batch dimension
of inputs and `loss` is dynamic. `n_tokens` is taken from the sample table's column of
that name, or 1 per sample when it has none. `pipeline.scorer_check` reports every
violation at once; scoring raises the first it meets.

Rows are scored in batches sorted by length (`length_sorted_batches`), so the raw scores
file is not in pool order; it is deterministic, and read only joined on sample_id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import ScorerContractError
from pipeline.padding import pad_lists
from pipeline.store import atomic_path, iter_samples_subset

RAW_SCORE_SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("loss", pa.float32()), ("n_tokens", pa.int64())]
)

# Rows are sorted by length within windows of this many batches (length_sorted_batches).
SORT_WINDOW_BATCHES = 16
# Raw scores are written in row groups of about this many rows, not one per batch.
WRITE_ROWS = 65_536

log = logging.getLogger("stm.scoring")

_ORT_TO_NUMPY = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class ScorerInput:
    name: str
    dtype: type
    is_sequence: bool


@dataclass(frozen=True)
class ScoreSummary:
    samples: int
    tokens_scored: int
    seconds: float


def open_scorer(onnx_path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Spinning worker threads would keep both cores busy after each batch and slow the
    # training stage that runs next in the same process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise ScorerContractError(
            f"{onnx_path}: not a loadable ONNX model: {_one_line(err)}"
        ) from err


def interface_problems(
    session: ort.InferenceSession, schema: pa.Schema, onnx_path: Path, samples: Path | str
) -> tuple[list[ScorerInput], list[str]]:
    """Every way the graph's inputs and `loss` output do not fit the sample table, each
    saying exactly what is wrong instead of failing inside onnxruntime; and the inputs
    that do fit, ready to feed."""
    problems = _loss_output_problems(session, onnx_path)
    inputs = []
    for node in session.get_inputs():
        found = _input_problems(node, schema, onnx_path, samples)
        if found:
            problems += found
        else:
            column_type = schema.field(node.name).type
            inputs.append(ScorerInput(node.name, _ORT_TO_NUMPY[node.type], _is_list(column_type)))
    return inputs, problems


def scorer_inputs(
    session: ort.InferenceSession, schema: pa.Schema, onnx_path: Path, samples: Path
) -> list[ScorerInput]:
    """The graph's inputs matched to the sample table; the first problem is raised."""
    inputs, problems = interface_problems(session, schema, onnx_path, samples)
    if problems:
        raise ScorerContractError(problems[0])
    return inputs


def _loss_output_problems(session: ort.InferenceSession, onnx_path: Path) -> list[str]:
    outputs = {o.name: o for o in session.get_outputs()}
    if "loss" not in outputs:
        return [f"{onnx_path}: no output named 'loss' (outputs: {', '.join(outputs)})"]
    loss = outputs["loss"]
    if loss.type != "tensor(float)" or len(loss.shape) != 1:
        return [f"{onnx_path}: output 'loss' must be float32 [batch], got {loss.type} {loss.shape}"]
    if isinstance(loss.shape[0], int):
        return [_fixed_batch_problem(onnx_path, "output 'loss'", loss.shape[0])]
    return []


def _input_problems(
    node: ort.NodeArg, schema: pa.Schema, onnx_path: Path, samples: Path | str
) -> list[str]:
    if node.name not in schema.names:
        return [f"{onnx_path}: input '{node.name}' has no column of that name in {samples}"]
    problems = []
    column_type = schema.field(node.name).type
    is_sequence = _is_list(column_type)
    if node.type not in _ORT_TO_NUMPY:
        problems.append(f"{onnx_path}: input '{node.name}' has unsupported type {node.type}")
    else:
        value_type = column_type.value_type if is_sequence else column_type
        reason = _cast_problem(value_type, node.type)
        if reason:
            problems.append(
                f"{onnx_path}: input '{node.name}' is {node.type} but column '{node.name}' "
                f"of {samples} is {column_type}: {reason}"
            )
    if len(node.shape) != 1 + int(is_sequence):
        kind = "a list" if is_sequence else "a scalar"
        problems.append(
            f"{onnx_path}: input '{node.name}' has rank {len(node.shape)} but column "
            f"'{node.name}' of {samples} is {kind} column"
        )
    if node.shape and isinstance(node.shape[0], int):
        problems.append(_fixed_batch_problem(onnx_path, f"input '{node.name}'", node.shape[0]))
    return problems


def _is_list(column_type: pa.DataType) -> bool:
    return pa.types.is_list(column_type) or pa.types.is_large_list(column_type)


def _cast_problem(value_type: pa.DataType, ort_type: str) -> str | None:
    """Numbers cast to any numeric input, except floats to an integer or bool input,
    which would silently truncate them; anything else (text, nested lists) cannot."""
    numeric = (
        pa.types.is_integer(value_type)
        or pa.types.is_floating(value_type)
        or pa.types.is_boolean(value_type)
    )
    if not numeric:
        return "not numbers"
    if pa.types.is_floating(value_type) and ort_type not in ("tensor(float)", "tensor(double)"):
        return "floats would be truncated"
    return None


def _fixed_batch_problem(onnx_path: Path, what: str, size: int) -> str:
    return (
        f"{onnx_path}: {what} has a fixed batch size {size}; its first dimension must be "
        "dynamic (symbolic) to score batches of any size"
    )


def batch_feed(
    batch: pa.RecordBatch | pa.Table, inputs: list[ScorerInput]
) -> dict[str, np.ndarray]:
    feed = {}
    for spec in inputs:
        column = batch.column(spec.name)
        if spec.is_sequence:
            feed[spec.name] = pad_lists(column, 0).astype(spec.dtype, copy=False)
        else:
            feed[spec.name] = column.to_numpy(zero_copy_only=False).astype(spec.dtype)
    return feed


def batch_losses(
    session: ort.InferenceSession,
    inputs: list[ScorerInput],
    batch: pa.RecordBatch | pa.Table,
    onnx_path: Path,
    describe: Callable[[int], str],
) -> tuple[np.ndarray, list[str]]:
    """A batch's losses and every way they break the contract: the run fails, the shape
    is not [batch], or the loss of a sample (named by `describe(row)`) is not finite."""
    rows = batch.num_rows
    try:
        (loss,) = session.run(["loss"], batch_feed(batch, inputs))
    # onnxruntime raises its own untyped errors; pad_lists a ValueError on a null list
    except Exception as err:
        return np.empty(0, np.float32), [
            f"{onnx_path}: failed on a batch of {rows} samples from {describe(0)}: {_one_line(err)}"
        ]
    if loss.shape != (rows,):
        return loss, [
            f"{onnx_path}: output 'loss' has shape {list(loss.shape)} for a batch of "
            f"{rows} samples; expected [{rows}]"
        ]
    bad = np.flatnonzero(~np.isfinite(loss))
    return loss, [f"{onnx_path}: non-finite loss {loss[i]} for {describe(i)}" for i in bad]


def score_batches(
    session: ort.InferenceSession,
    inputs: list[ScorerInput],
    batches: Iterable[pa.RecordBatch | pa.Table],
    onnx_path: Path,
) -> Iterator[pa.RecordBatch]:
    """Per-sample losses for each batch, checked against the contract as they come; the
    first problem is raised."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        ids = batch.column("sample_id")
        loss, problems = batch_losses(
            session, inputs, batch, onnx_path, lambda row, ids=ids: f"sample '{ids[row]}'"
        )
        if problems:
            raise ScorerContractError(problems[0])
        if "n_tokens" in batch.schema.names:
            n_tokens = batch.column("n_tokens").cast(pa.int64())
        else:
            n_tokens = pa.array(np.ones(batch.num_rows, dtype=np.int64))
        yield pa.RecordBatch.from_arrays(
            [_one_chunk(ids), pa.array(loss.astype(np.float32)), _one_chunk(n_tokens)],
            schema=RAW_SCORE_SCHEMA,
        )


def _one_chunk(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def length_sorted_batches(
    batches: Iterable[pa.RecordBatch], inputs: list[ScorerInput], batch_size: int
) -> Iterator[pa.Table]:
    """The rows of `batches` in batches of exactly `batch_size` (the last may be smaller),
    sorted by length within each window of SORT_WINDOW_BATCHES batches, so that a batch
    is padded to about its own rows' length rather than to the longest row of a random
    mix. A filtered scan yields batches of any size; regrouping also keeps a small pool's
    batches full. The order of the rows changes, deterministically: scores are joined on
    sample_id and sorted by it before anything reads them."""
    sequences = [spec.name for spec in inputs if spec.is_sequence]
    for window in _windows(batches, batch_size * SORT_WINDOW_BATCHES):
        if sequences:
            lengths = np.max(
                # A null list sorts first; padding then names it as a contract problem.
                [
                    pc.list_value_length(window.column(name)).fill_null(0).to_numpy()
                    for name in sequences
                ],
                axis=0,
            )
            window = window.take(np.argsort(lengths, kind="stable"))
        for start in range(0, window.num_rows, batch_size):
            yield window.slice(start, batch_size)


def _windows(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows from batches of any size, the last one smaller."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            pending = table.slice(rows).to_batches()
            pending_rows -= rows
    if pending_rows:
        yield pa.Table.from_batches(pending)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def score_pool(
    onnx_path: Path,
    samples: Path,
    pool_ids: pa.Array,
    out_path: Path,
    batch_size: int,
    threads: int,
    on_progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score every sample of the pool and write (sample_id, loss, n_tokens) atomically;
    `on_progress` is told how many samples each batch scored."""
    started = time.perf_counter()
    session = open_scorer(onnx_path, threads)
    schema = pq.read_schema(samples)
    inputs = scorer_inputs(session, schema, onnx_path, samples)
    columns = ["sample_id"] + [i.name for i in inputs]
    if "n_tokens" in schema.names and "n_tokens" not in columns:
        columns.append("n_tokens")
    scanner = iter_samples_subset(samples, pool_ids, columns, batch_size)
    batches = length_sorted_batches(scanner.to_batches(), inputs, batch_size)
    rows = tokens = written = 0
    pending: list[pa.RecordBatch] = []
    with (
        atomic_path(out_path) as tmp,
        pq.ParquetWriter(tmp, RAW_SCORE_SCHEMA, compression="zstd") as writer,
    ):
        for scored in score_batches(session, inputs, batches, onnx_path):
            pending.append(scored)
            rows += scored.num_rows
            tokens += int(scored.column("n_tokens").to_numpy().sum())
            if on_progress is not None:
                on_progress(scored.num_rows)
            if rows - written >= WRITE_ROWS:
                writer.write_table(pa.Table.from_batches(pending))
                pending, written = [], rows
        if pending:
            writer.write_table(pa.Table.from_batches(pending))
    seconds = time.perf_counter() - started
    log.debug("%s: scored %s samples in %.2f s", onnx_path, f"{rows:,}", seconds)
    return ScoreSummary(rows, tokens, seconds)
