from __future__ import annotations

from dataclasses import replace

from flows.inputs import prepare_inputs
from pipeline.config import ArithmeticConfig, DataConfig, RunConfig


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
