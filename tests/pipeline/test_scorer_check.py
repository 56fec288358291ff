"""The scorer check: every contract violation of a hand-built ONNX graph, each with its
exact message, and the same contract code raising the first problem during scoring."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto

from pipeline.errors import DatasetError, ScorerContractError
from pipeline.scorer_check import (
    check_scorer,
    check_scorer_table,
    raise_if_invalid,
    trial_batch_sizes,
)
from pipeline.scoring import score_pool
from tests.builders import make_sample_table, make_sum_scorer

FIXED = "first dimension must be dynamic (symbolic) to score batches of any size"


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    path = tmp_path / "samples.parquet"
    pq.write_table(make_sample_table(n=10), path)
    return path


def with_values(values: list[list[float] | None]) -> pa.Table:
    table = make_sample_table(n=len(values))
    return table.set_column(2, "values", pa.array(values, type=pa.list_(pa.float32())))


def test_a_scorer_that_meets_the_contract_has_no_problem(tmp_path: Path, samples: Path) -> None:
    assert check_scorer(make_sum_scorer(tmp_path / "s.onnx"), samples) == []
    scalar = make_sum_scorer(
        tmp_path / "n.onnx", "n_tokens", input_rank=1, input_type=TensorProto.INT64
    )
    assert check_scorer(scalar, samples) == []


@pytest.mark.parametrize(
    ("options", "problems"),
    [
        (
            {"input_name": "tokens"},
            ["{onnx}: input 'tokens' has no column of that name in {samples}"],
        ),
        (
            {"input_type": TensorProto.UINT8},
            ["{onnx}: input 'values' has unsupported type tensor(uint8)"],
        ),
        (
            {"input_type": TensorProto.INT64},
            [
                "{onnx}: input 'values' is tensor(int64) but column 'values' of {samples} is "
                "list<element: float>: floats would be truncated"
            ],
        ),
        (
            {"input_name": "group", "input_rank": 1},
            [
                "{onnx}: input 'group' is tensor(float) but column 'group' of {samples} is "
                "string: not numbers"
            ],
        ),
        (
            {"input_rank": 1},
            ["{onnx}: input 'values' has rank 1 but column 'values' of {samples} is a list column"],
        ),
        (
            {"input_name": "n_tokens", "input_type": TensorProto.INT64},
            [
                "{onnx}: input 'n_tokens' has rank 2 but column 'n_tokens' of {samples} is "
                "a scalar column"
            ],
        ),
        (
            {"output_batch": 8},
            ["{onnx}: output 'loss' has a fixed batch size 8; its " + FIXED],
        ),
        (
            # onnxruntime infers the loss's batch from the input's: both are named
            {"input_batch": 8},
            [
                "{onnx}: output 'loss' has a fixed batch size 8; its " + FIXED,
                "{onnx}: input 'values' has a fixed batch size 8; its " + FIXED,
            ],
        ),
        ({"output_name": "nll"}, ["{onnx}: no output named 'loss' (outputs: nll)"]),
        (
            {"loss_type": TensorProto.DOUBLE},
            ["{onnx}: output 'loss' must be float32 [batch], got tensor(double) ['batch']"],
        ),
        (
            {"keep_rank": True},
            ["{onnx}: output 'loss' must be float32 [batch], got tensor(float) ['batch', 1]"],
        ),
        (
            {"output_name": "nll", "input_name": "tokens"},
            [
                "{onnx}: no output named 'loss' (outputs: nll)",
                "{onnx}: input 'tokens' has no column of that name in {samples}",
            ],
        ),
        (
            {"flatten": True},
            [
                "{onnx}: output 'loss' has shape [16] for a batch of 8 samples; expected [8]",
                "{onnx}: output 'loss' has shape [6] for a batch of 3 samples; expected [3]",
            ],
        ),
    ],
)
def test_each_defect_is_named(
    tmp_path: Path, samples: Path, options: dict, problems: list[str]
) -> None:
    onnx = make_sum_scorer(tmp_path / "s.onnx", **options)
    expected = [p.format(onnx=onnx, samples=samples) for p in problems]
    assert check_scorer(onnx, samples) == expected


def test_unloadable_model(tmp_path: Path, samples: Path) -> None:
    onnx = tmp_path / "broken.onnx"
    onnx.write_bytes(b"not a model")
    (problem,) = check_scorer(onnx, samples)
    assert problem.startswith(f"{onnx}: not a loadable ONNX model: ")
    assert "\n" not in problem


def test_every_non_finite_loss_is_named_once(tmp_path: Path) -> None:
    table = with_values([[1.0], [float("nan")], [2.0], [float("inf"), 1.0], [3.0]])
    onnx = make_sum_scorer(tmp_path / "s.onnx")
    assert check_scorer_table(onnx, table, "mem", sample_rows=4) == [
        f"{onnx}: non-finite loss nan for sample 's001'",
        f"{onnx}: non-finite loss inf for sample 's003'",
    ]


def test_samples_are_named_by_row_without_a_sample_id(tmp_path: Path) -> None:
    table = with_values([[1.0], [float("nan")]]).drop_columns(["sample_id"])
    onnx = make_sum_scorer(tmp_path / "s.onnx")
    assert check_scorer_table(onnx, table, "mem") == [f"{onnx}: non-finite loss nan for row 1"]


def test_a_loss_that_depends_on_its_batch_is_named(tmp_path: Path, samples: Path) -> None:
    onnx = make_sum_scorer(tmp_path / "s.onnx", centered=True)
    problems = check_scorer(onnx, samples)
    assert len(problems) == 3  # the samples of the smaller batch
    assert problems[0] == (
        f"{onnx}: loss of sample 's000' is -3.75 in a batch of 8 but -1.16667 in a batch of "
        "3; a sample's loss must not depend on the other samples of its batch or their padding"
    )


def test_a_failing_run_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    onnx = make_sum_scorer(tmp_path / "s.onnx")
    problems = check_scorer_table(onnx, with_values([[1.0], None, [2.0]]), "mem")
    assert problems[0] == (
        f"{onnx}: failed on a batch of 3 samples from sample 's000': "
        "pad_lists: 1 null list(s), lists expected"
    )


@pytest.mark.parametrize(
    ("rows", "sizes"), [(0, []), (1, [1]), (2, [2, 1]), (3, [3, 2]), (8, [8, 3])]
)
def test_trial_runs_use_two_batch_sizes(rows: int, sizes: list[int]) -> None:
    assert trial_batch_sizes(rows) == sizes


def test_a_scorer_is_checked_against_a_directory_of_shards(tmp_path: Path) -> None:
    shards = tmp_path / "pool"
    shards.mkdir()
    table = make_sample_table(n=6)
    pq.write_table(table.slice(0, 3), shards / "part-0.parquet")
    pq.write_table(table.slice(3), shards / "part-1.parquet")
    assert check_scorer(make_sum_scorer(tmp_path / "s.onnx"), shards) == []


def test_unreadable_samples_are_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope.parquet: cannot read as Parquet"):
        check_scorer(make_sum_scorer(tmp_path / "s.onnx"), tmp_path / "nope.parquet")


def test_problems_are_raised_on_one_line(tmp_path: Path) -> None:
    raise_if_invalid([])
    with pytest.raises(ScorerContractError) as raised:
        raise_if_invalid(["a.onnx: first", "a.onnx: second"])
    assert str(raised.value) == "a.onnx: first; a.onnx: second"


def test_scoring_raises_the_first_problem_of_the_same_contract(
    tmp_path: Path, samples: Path
) -> None:
    onnx = make_sum_scorer(tmp_path / "s.onnx", input_name="tokens", output_name="nll")
    first = check_scorer(onnx, samples)[0]
    with pytest.raises(ScorerContractError) as raised:
        score_pool(onnx, samples, pa.array(["s000"]), tmp_path / "raw.parquet", 4, 1)
    assert str(raised.value) == first
    fixed = make_sum_scorer(tmp_path / "fixed.onnx", output_batch=8)
    with pytest.raises(ScorerContractError, match="has a fixed batch size 8"):
        score_pool(fixed, samples, pa.array(["s000"]), tmp_path / "raw.parquet", 4, 1)
