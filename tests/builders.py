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
    *,
    input_type: int = TensorProto.FLOAT,
    input_rank: int = 2,
    loss_type: int = TensorProto.FLOAT,
    input_batch: str | int = "batch",
    output_batch: str | int = "batch",
    flatten: bool = False,
    centered: bool = False,
) -> Path:
    """An ONNX scorer whose loss is the row sum of a padded list input (or the value of a
    scalar input with `input_rank=1`): independent of torch, so scoring is tested on its
    own contract. The keyword options each break one part of the contract: the input's
    type, a loss of another type, a fixed batch size (an int `input_batch` or
    `output_batch`), `flatten`: every padded value as a loss (declared `[batch]`, so only
    a run shows it), or `centered`: a loss minus its batch mean, so that a sample's loss
    depends on its batch."""
    seq = ["seq"] if input_rank == 2 else []
    inp = helper.make_tensor_value_info(input_name, input_type, [input_batch, *seq])
    out_shape = [output_batch, 1] if keep_rank else [output_batch]
    out = helper.make_tensor_value_info(output_name, loss_type, out_shape)
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [-1])
    loss = "centered_input" if centered else output_name
    nodes = [helper.make_node("Cast", [input_name], ["as_float"], to=TensorProto.FLOAT)]
    if flatten:
        nodes.append(helper.make_node("Reshape", ["as_float", "flat"], ["row_sum"]))
    elif input_rank == 2:
        nodes.append(
            helper.make_node(
                "ReduceSum", ["as_float", "axes"], ["row_sum"], keepdims=int(keep_rank)
            )
        )
    else:
        nodes.append(helper.make_node("Identity", ["as_float"], ["row_sum"]))
    nodes.append(helper.make_node("Cast", ["row_sum"], [loss], to=loss_type))
    if centered:
        nodes.append(helper.make_node("ReduceMean", [loss], ["batch_mean"], keepdims=0))
        nodes.append(helper.make_node("Sub", [loss, "batch_mean"], [output_name]))
    graph = helper.make_graph(nodes, "sum_scorer", [inp], [out], initializer=[axes, flat])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
