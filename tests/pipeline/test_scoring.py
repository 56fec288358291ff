from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import TrainConfig
from pipeline.errors import ScorerContractError
from pipeline.padding import pad_lists
from pipeline.scoring import score_pool
from tests.builders import make_sample_table, make_sum_scorer
from tests.models.builders import ARCHITECTURES, make_pool, tiny_config


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    path = tmp_path / "samples.parquet"
    pq.write_table(make_sample_table(n=7), path)
    return path


def run_scoring(tmp_path: Path, scorer: Path, samples: Path, ids: list[str], batch_size: int = 3):
    out = tmp_path / "raw.parquet"
    summary = score_pool(scorer, samples, pa.array(ids), out, batch_size=batch_size, threads=1)
    return summary, pq.read_table(out)


def test_scores_exactly_the_pool_streaming_in_batches(tmp_path: Path, samples: Path) -> None:
    scorer = make_sum_scorer(tmp_path / "sum.onnx")
    ids = ["s000", "s001", "s002", "s003", "s005", "s006"]
    summary, table = run_scoring(tmp_path, scorer, samples, ids, batch_size=2)
    losses = dict(zip(table["sample_id"].to_pylist(), table["loss"].to_pylist(), strict=True))
    # loss = sum of the unpadded values: padding with zeros must not change it
    assert losses == {"s000": 0.0, "s001": 1.5, "s002": 2.0, "s003": 3.5, "s005": 5.5, "s006": 6.0}
    assert summary.samples == 6
    assert summary.tokens_scored == 1 + 2 + 1 + 2 + 2 + 1
    assert table.schema.field("loss").type == pa.float32()


def test_progress_is_reported_per_batch(tmp_path: Path, samples: Path) -> None:
    scorer = make_sum_scorer(tmp_path / "sum.onnx")
    batches: list[int] = []
    ids = pa.array(["s000", "s001", "s002", "s003", "s005"])
    score_pool(scorer, samples, ids, tmp_path / "raw.parquet", 2, 1, on_progress=batches.append)
    assert batches == [2, 2, 1]


def test_input_without_matching_column_is_named(tmp_path: Path, samples: Path) -> None:
    scorer = make_sum_scorer(tmp_path / "s.onnx", input_name="tokens")
    with pytest.raises(
        ScorerContractError, match=r"input 'tokens' has no column of that name in .*samples.parquet"
    ):
        run_scoring(tmp_path, scorer, samples, ["s000"])


def test_missing_loss_output_is_named(tmp_path: Path, samples: Path) -> None:
    scorer = make_sum_scorer(tmp_path / "s.onnx", output_name="nll")
    with pytest.raises(ScorerContractError, match=r"no output named 'loss' \(outputs: nll\)"):
        run_scoring(tmp_path, scorer, samples, ["s000"])


def test_loss_of_wrong_rank_is_rejected(tmp_path: Path, samples: Path) -> None:
    scorer = make_sum_scorer(tmp_path / "s.onnx", keep_rank=True)
    with pytest.raises(ScorerContractError, match=r"output 'loss' must be float32 \[batch\]"):
        run_scoring(tmp_path, scorer, samples, ["s000"])


def test_unloadable_model_is_named(tmp_path: Path, samples: Path) -> None:
    scorer = tmp_path / "broken.onnx"
    scorer.write_bytes(b"not a model")
    with pytest.raises(ScorerContractError, match=r"broken.onnx: not a loadable ONNX model"):
        run_scoring(tmp_path, scorer, samples, ["s000"])


def test_failed_scoring_leaves_no_output(tmp_path: Path, samples: Path) -> None:
    bad = samples.with_name("bad.parquet")
    table = make_sample_table(n=3)
    values = pa.array([[1.0], [float("nan")], [2.0]], type=pa.list_(pa.float32()))
    pq.write_table(table.set_column(2, "values", values), bad)
    scorer = make_sum_scorer(tmp_path / "s.onnx")
    with pytest.raises(ScorerContractError, match=r"non-finite loss nan for sample 's001'"):
        run_scoring(tmp_path, scorer, bad, ["s000", "s001", "s002"])
    assert list(tmp_path.glob("*raw*")) == []


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_length_sorted_batches_score_as_each_sample_alone(tmp_path: Path, arch: str) -> None:
    """Scoring regroups rows by length; every loss must still be the sample's own, as
    scored unpadded in a batch of one."""
    from models.export import export_scorer
    from models.trainer import train_epoch

    pool, vocab = make_pool(n=40)
    pool = pool.append_column("sample_id", pa.array([f"p{i:02d}" for i in range(40)]))
    train_epoch(pool, tmp_path, vocab.size, tiny_config(arch), TrainConfig(8, 1e-2), 0, 0)
    scorer = tmp_path / "scorer.onnx"
    export_scorer(tmp_path, scorer)
    samples = tmp_path / "samples.parquet"
    pq.write_table(pool, samples)
    _, table = run_scoring(tmp_path, scorer, samples, pool.column("sample_id").to_pylist(), 4)
    session = ort.InferenceSession(str(scorer), providers=["CPUExecutionProvider"])
    alone = [
        session.run(
            ["loss"],
            {name: pad_lists(pool.column(name)[i : i + 1], 0) for name in ("tokens", "loss_mask")},
        )[0][0]
        for i in range(40)
    ]
    scored = dict(zip(table["sample_id"].to_pylist(), table["loss"].to_pylist(), strict=True))
    in_pool_order = [scored[f"p{i:02d}"] for i in range(40)]
    assert table["sample_id"].to_pylist() != pool.column("sample_id").to_pylist()
    np.testing.assert_allclose(in_pool_order, alone, rtol=0, atol=1e-6)
