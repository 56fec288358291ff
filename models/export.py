"""Export a checkpoint as the ONNX scorer: `(tokens, loss_mask) -> loss [batch]`, with
bytes that depend only on the weights, so the scorer's hash can go into a manifest."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import onnx
import torch

from models.checkpoint import load_model
from models.loss import ScorerModule
from pipeline.store import write_bytes_atomic

OPSET_VERSION = 17
_SEQUENCE_AXES = {0: "batch", 1: "seq"}
# Expected and harmless here: the legacy exporter is deprecated (it says so, and so do its
# internals) but is the one we pin; the GRU's initial state is built from the runtime batch
# size since none is passed in; and the GRU's traced checks compare fixed sizes (feature
# and hidden widths), not batch or length.
_EXPECTED_WARNINGS = (
    (DeprecationWarning, "", ""),
    (UserWarning, "Exporting a model to ONNX with a batch_size other than 1", ""),
    (torch.jit.TracerWarning, "Converting a tensor to a Python bool", r"torch\.nn\.modules\.rnn"),
)


def export_scorer(workdir: Path, onnx_path: Path) -> str:
    """Write the scorer of `workdir`'s checkpoint to `onnx_path` atomically and return the
    sha256 hex of the bytes written."""
    model, _ = load_model(workdir)
    scorer = ScorerModule(model).eval()
    # Two samples of five tokens: any shape works, the axes are declared dynamic below.
    example = (torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2, 5, dtype=torch.float32))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        for category, message, module in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        torch.onnx.export(
            scorer,
            example,
            buffer,
            dynamo=False,
            opset_version=OPSET_VERSION,
            input_names=["tokens", "loss_mask"],
            output_names=["loss"],
            dynamic_axes={
                "tokens": _SEQUENCE_AXES,
                "loss_mask": _SEQUENCE_AXES,
                "loss": {0: "batch"},
            },
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _strip_machine_dependent(proto)
    data = proto.SerializeToString(deterministic=True)
    write_bytes_atomic(Path(onnx_path), data)
    return hashlib.sha256(data).hexdigest()


def _strip_machine_dependent(proto: onnx.ModelProto) -> None:
    """Drop doc strings and metadata, where exporters put stack traces with absolute file
    paths; what remains (graph, weights, producer version) is the same on every machine.
    Our graphs have no subgraphs (no If/Loop), so the top-level nodes are all the nodes."""
    proto.doc_string = ""
    del proto.metadata_props[:]
    proto.graph.doc_string = ""
    for node in proto.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
