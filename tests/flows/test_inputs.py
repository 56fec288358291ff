from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flows.inputs import prepare_inputs
from pipeline.config import ArithmeticConfig, DataConfig, RunConfig, TrainerConfig


def small_config(**arithmetic: int) -> RunConfig:
    data = ArithmeticConfig(n_easy=10, n_hard=10, eval_easy=10, eval_hard=10, **arithmetic)
    return replace(RunConfig(), data=DataConfig(arithmetic=data))


def test_builtin_inputs_are_encoded_and_fingerprinted() -> None:
    inputs = prepare_inputs(small_config())
    assert inputs.samples.num_rows == 20
    assert {"tokens", "loss_mask", "n_tokens"} <= set(inputs.samples.column_names)
    assert inputs.eval_samples is not None and inputs.eval_samples.num_rows == 20
    assert inputs.fingerprint == prepare_inputs(small_config()).fingerprint


def test_an_empty_held_out_set_means_no_evaluation() -> None:
    config = replace(
        small_config(),
        data=DataConfig(
            arithmetic=ArithmeticConfig(n_easy=10, n_hard=10, eval_easy=0, eval_hard=0)
        ),
    )
    assert prepare_inputs(config).eval_samples is None


def test_an_external_trainer_gets_the_dataset_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [1, 2], "x": [[0.5], [1.5]]}), path)
    config = replace(
        RunConfig(),
        data=DataConfig(path=str(path), id_column="id"),
        trainer=TrainerConfig("train {pool}"),
    )
    inputs = prepare_inputs(config)
    assert inputs.samples.column_names == ["sample_id", "group", "id", "x"]
    assert inputs.vocabulary_json is None and inputs.eval_samples is None
