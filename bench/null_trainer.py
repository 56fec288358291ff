"""An external trainer that trains nothing, for measuring the loop's own cost on a large
pool (`epoch_overhead.py --pool-size`): each call writes a scorer whose loss is the
sample's `quality` column divided by the epoch, so losses fall and STM prunes.

    python bench/null_trainer.py --scorer {scorer} --epoch {epoch}
"""

from __future__ import annotations

from pathlib import Path

import click
import onnx
from onnx import TensorProto, helper


def scorer(epoch: int) -> onnx.ModelProto:
    """loss = float32(quality / epoch), batch dimension symbolic (the scorer contract)."""
    quality = helper.make_tensor_value_info("quality", TensorProto.DOUBLE, ["batch"])
    loss = helper.make_tensor_value_info("loss", TensorProto.FLOAT, ["batch"])
    scale = helper.make_tensor("scale", TensorProto.DOUBLE, [], [1.0 / epoch])
    nodes = [
        helper.make_node("Mul", ["quality", "scale"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["loss"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(nodes, "null_trainer", [quality], [loss], [scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@click.command()
@click.option("--scorer", "scorer_path", type=click.Path(path_type=Path), required=True)
@click.option("--epoch", type=int, required=True)
def main(scorer_path: Path, epoch: int) -> None:
    onnx.save(scorer(epoch), scorer_path)


if __name__ == "__main__":
    main()
