"""Small builders for frames, tables and ONNX scorers used across the tests."""

from __future__ import annotations

from pathlib import Path

import onnx
import polars as pl
import pyarrow as pa
from onnx import TensorProto, helper


def make_scores(
    loss: list[float],
    loss_prev: list[float | None] | None = None,
    ids: list[str] | None = None,
    n_tokens: int = 2,
) -> pl.LazyFrame:
    """A scores frame with the delta columns, as `with_loss_deltas` would produce."""
    from pipeline.deltas import with_loss_deltas

    ids = ids or [f"s{i}" for i in range(len(loss))]
    current = pl.LazyFrame({"sample_id": ids, "loss": loss, "n_tokens": [n_tokens] * len(loss)})
    previous = None
    if loss_prev is not None:
        previous = pl.LazyFrame(
            {"sample_id": ids, "loss": loss_prev},
            schema={"sample_id": pl.String, "loss": pl.Float64},
        )
    return with_loss_deltas(current, previous, round_index=0, epoch=2)


def make_sample_table(n: int = 6, groups: tuple[str, ...] = ("easy", "hard")) -> pa.Table:
    """Samples with a list column `values` whose sum is the sample's loss under
    `make_sum_scorer`, so expected losses are known exactly."""
    values = [[float(i), 0.5] if i % 2 else [float(i)] for i in range(n)]
    return pa.table(
        {
            "sample_id": [f"s{i:03d}" for i in range(n)],
            "group": [groups[i % len(groups)] for i in range(n)],
            "values": pa.array(values, type=pa.list_(pa.float32())),
            "n_tokens": pa.array([len(v) for v in values], type=pa.int64()),
        }
    )


def make_sum_scorer(
    path: Path,
    input_name: str = "values",
    output_name: str = "loss",
    keep_rank: bool = False,
) -> Path:
    """An ONNX scorer whose loss is the row sum of a padded list input: independent of
    torch, so scoring is tested on its own contract."""
    inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", "seq"])
    out_shape = ["batch", 1] if keep_rank else ["batch"]
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node(
        "ReduceSum", [input_name, "axes"], [output_name], keepdims=int(keep_rank)
    )
    graph = helper.make_graph([node], "sum_scorer", [inp], [out], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
