"""Score a pool with an ONNX scorer: Arrow record batches stream from the sample table
through onnxruntime into a Parquet file of per-sample losses, never the whole dataset as
Python objects.

The scorer contract: every graph input is named after a column of the sample table (list
columns are padded per batch with zeros, scalar columns passed as they are) and the output
`loss` is float32 `[batch]`, one loss per sample. `n_tokens` is taken from the sample
table's column of that name, or 1 per sample when it has none.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
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
        raise ScorerContractError(f"{onnx_path}: not a loadable ONNX model: {err}") from err


def scorer_inputs(
    session: ort.InferenceSession, schema: pa.Schema, onnx_path: Path, samples: Path
) -> list[ScorerInput]:
    """Match the graph's inputs and outputs to the sample table, saying exactly what does
    not fit instead of failing inside onnxruntime."""
    outputs = {o.name: o for o in session.get_outputs()}
    if "loss" not in outputs:
        raise ScorerContractError(
            f"{onnx_path}: no output named 'loss' (outputs: {', '.join(outputs)})"
        )
    loss = outputs["loss"]
    if loss.type != "tensor(float)" or len(loss.shape) != 1:
        raise ScorerContractError(
            f"{onnx_path}: output 'loss' must be float32 [batch], got {loss.type} {loss.shape}"
        )
    inputs = []
    for node in session.get_inputs():
        if node.name not in schema.names:
            raise ScorerContractError(
                f"{onnx_path}: input '{node.name}' has no column of that name in {samples}"
            )
        if node.type not in _ORT_TO_NUMPY:
            raise ScorerContractError(
                f"{onnx_path}: input '{node.name}' has unsupported type {node.type}"
            )
        column_type = schema.field(node.name).type
        is_sequence = pa.types.is_list(column_type) or pa.types.is_large_list(column_type)
        if len(node.shape) != 1 + int(is_sequence):
            kind = "a list" if is_sequence else "a scalar"
            raise ScorerContractError(
                f"{onnx_path}: input '{node.name}' has rank {len(node.shape)} but column "
                f"'{node.name}' of {samples} is {kind} column"
            )
        inputs.append(ScorerInput(node.name, _ORT_TO_NUMPY[node.type], is_sequence))
    return inputs


def batch_feed(batch: pa.RecordBatch, inputs: list[ScorerInput]) -> dict[str, np.ndarray]:
    feed = {}
    for spec in inputs:
        column = batch.column(spec.name)
        if spec.is_sequence:
            feed[spec.name] = pad_lists(column, 0).astype(spec.dtype, copy=False)
        else:
            feed[spec.name] = column.to_numpy(zero_copy_only=False).astype(spec.dtype)
    return feed


def score_batches(
    session: ort.InferenceSession,
    inputs: list[ScorerInput],
    batches: Iterable[pa.RecordBatch],
    onnx_path: Path,
) -> Iterator[pa.RecordBatch]:
    """Per-sample losses for each batch, checked against the contract as they come."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        (loss,) = session.run(["loss"], batch_feed(batch, inputs))
        if loss.shape != (batch.num_rows,):
            raise ScorerContractError(
                f"{onnx_path}: output 'loss' has shape {list(loss.shape)} for a batch of "
                f"{batch.num_rows} samples; expected [{batch.num_rows}]"
            )
        ids = batch.column("sample_id")
        finite = np.isfinite(loss)
        if not finite.all():
            bad = ids[int(np.argmin(finite))]
            raise ScorerContractError(
                f"{onnx_path}: non-finite loss {loss[~finite][0]} for sample '{bad}'"
            )
        if "n_tokens" in batch.schema.names:
            n_tokens = batch.column("n_tokens").cast(pa.int64())
        else:
            n_tokens = pa.array(np.ones(batch.num_rows, dtype=np.int64))
        yield pa.RecordBatch.from_arrays(
            [ids, pa.array(loss.astype(np.float32)), n_tokens], schema=RAW_SCORE_SCHEMA
        )


def score_pool(
    onnx_path: Path,
    samples: Path,
    pool_ids: pa.Array,
    out_path: Path,
    batch_size: int,
    threads: int,
) -> ScoreSummary:
    """Score every sample of the pool and write (sample_id, loss, n_tokens) atomically."""
    started = time.perf_counter()
    session = open_scorer(onnx_path, threads)
    schema = pq.read_schema(samples)
    inputs = scorer_inputs(session, schema, onnx_path, samples)
    columns = ["sample_id"] + [i.name for i in inputs]
    if "n_tokens" in schema.names and "n_tokens" not in columns:
        columns.append("n_tokens")
    scanner = iter_samples_subset(samples, pool_ids, columns, batch_size)
    rows = tokens = 0
    with (
        atomic_path(out_path) as tmp,
        pq.ParquetWriter(tmp, RAW_SCORE_SCHEMA, compression="zstd") as writer,
    ):
        for scored in score_batches(session, inputs, scanner.to_batches(), onnx_path):
            writer.write_batch(scored)
            rows += scored.num_rows
            tokens += pc.sum(scored.column("n_tokens")).as_py() or 0
    return ScoreSummary(rows, tokens, time.perf_counter() - started)
