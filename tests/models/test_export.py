from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from models.checkpoint import checkpoint_path, load_model
from models.export import export_scorer
from models.loss import ScorerModule
from models.trainer import train_epoch
from pipeline.config import TrainConfig
from pipeline.errors import StoreError
from pipeline.padding import pad_lists
from tests.models.builders import ARCHITECTURES, make_pool, tiny_config

# Rows 0-2 are the shortest samples, rows 20-39 include the longest: two batch sizes and
# two padded lengths.
ROW_SETS = (slice(0, 3), slice(20, 40))


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(params=ARCHITECTURES)
def trained(request: pytest.FixtureRequest, tmp_path: Path):
    pool, vocab = make_pool(n=40)
    workdir = tmp_path / request.param
    train_epoch(pool, workdir, vocab.size, tiny_config(request.param), TrainConfig(8, 1e-2), 0, 0)
    return workdir, pool


def test_onnx_matches_torch_per_sample_at_any_batch_and_length(trained, tmp_path: Path) -> None:
    workdir, pool = trained
    onnx_path = tmp_path / "scorer.onnx"
    export_scorer(workdir, onnx_path)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scorer = ScorerModule(load_model(workdir)[0])
    for rows in ROW_SETS:
        tokens = pad_lists(pool.column("tokens")[rows], 0)
        loss_mask = pad_lists(pool.column("loss_mask")[rows], 0.0)
        (onnx_loss,) = session.run(None, {"tokens": tokens, "loss_mask": loss_mask})
        with torch.no_grad():
            torch_loss = scorer(torch.from_numpy(tokens), torch.from_numpy(loss_mask)).numpy()
        assert onnx_loss.shape == (len(tokens),)
        assert np.abs(onnx_loss - torch_loss).max() < 1e-5
    short, long = (pad_lists(pool.column("tokens")[rows], 0).shape for rows in ROW_SETS)
    assert short[0] != long[0] and short[1] != long[1]


def test_export_is_byte_identical_and_returns_the_file_hash(trained, tmp_path: Path) -> None:
    workdir, _ = trained
    elsewhere = tmp_path / "elsewhere" / "workdir"
    elsewhere.mkdir(parents=True)
    shutil.copy(checkpoint_path(workdir), checkpoint_path(elsewhere))
    first = export_scorer(workdir, tmp_path / "a.onnx")
    second = export_scorer(elsewhere, tmp_path / "b.onnx")
    assert first == second == hashlib.sha256((tmp_path / "a.onnx").read_bytes()).hexdigest()
    assert not (tmp_path / "a.onnx.tmp").exists()


def test_the_exported_contract(trained, tmp_path: Path) -> None:
    workdir, _ = trained
    export_scorer(workdir, tmp_path / "scorer.onnx")
    proto = onnx.load(tmp_path / "scorer.onnx")
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    (loss,) = inferred.graph.output
    assert loss.name == "loss"
    assert loss.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param for d in loss.type.tensor_type.shape.dim] == ["batch"]
    inputs = {i.name: i.type.tensor_type for i in proto.graph.input}
    assert inputs["tokens"].elem_type == onnx.TensorProto.INT64
    assert inputs["loss_mask"].elem_type == onnx.TensorProto.FLOAT
    assert all([d.dim_param for d in t.shape.dim] == ["batch", "seq"] for t in inputs.values())
    assert not any(node.doc_string or node.metadata_props for node in proto.graph.node)


def test_exporting_without_a_checkpoint_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="checkpoint.pt: no checkpoint"):
        export_scorer(tmp_path, tmp_path / "scorer.onnx")
