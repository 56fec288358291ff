from __future__ import annotations

import polars as pl
import pytest

from pipeline.config import PolicyConfig
from pipeline.errors import ConfigError
from pipeline.policies import (
    DECISION_SCHEMA,
    POLICIES,
    PolicyParams,
    get_policy,
    policy_parameters,
    standard,
    stm,
)
from tests.builders import make_scores


def decisions(frame: pl.LazyFrame) -> dict[str, tuple[bool, str]]:
    out = frame.collect()
    return {r["sample_id"]: (r["keep"], r["reason"]) for r in out.iter_rows(named=True)}


ABSOLUTE = PolicyParams(delta=0.25, delta_mode="absolute", floor=0.5)


def test_stm_drops_only_sharp_drop_at_or_below_floor() -> None:
    scores = make_scores(
        loss=[0.25, 1.0, 0.5, 0.125, 0.5],
        loss_prev=[1.0, 2.0, 0.625, 0.25, 0.75],
    )
    assert decisions(stm(scores, ABSOLUTE)) == {
        "s0": (False, "mastered"),  # fell 0.75, at 0.25 <= floor
        "s1": (True, "above_floor"),  # fell 1.0 but still at 1.0: premature ejection guard
        "s2": (True, "learning"),  # at the floor but fell only 0.125
        "s3": (True, "learning"),  # low loss, slow decrease: kept
        "s4": (False, "mastered"),  # fell exactly delta, exactly at the floor
    }


def test_stm_relative_delta_uses_fraction_of_previous_loss() -> None:
    scores = make_scores(loss=[0.25, 0.375, 0.125], loss_prev=[0.5, 0.5, 0.25])
    params = PolicyParams(delta=0.5, delta_mode="relative", floor=0.5)
    assert decisions(stm(scores, params)) == {
        "s0": (False, "mastered"),  # halved
        "s1": (True, "learning"),  # fell by a quarter
        "s2": (False, "mastered"),  # halved, small absolute drop
    }


def test_stm_keeps_everything_at_baseline_pass() -> None:
    scores = make_scores(loss=[0.0, 0.1, 3.0])
    assert set(decisions(stm(scores, ABSOLUTE)).values()) == {(True, "baseline")}


def test_stm_keeps_samples_whose_loss_rose() -> None:
    scores = make_scores(loss=[0.5], loss_prev=[0.25])
    assert decisions(stm(scores, ABSOLUTE)) == {"s0": (True, "learning")}


def test_standard_keeps_everything() -> None:
    scores = make_scores(loss=[0.0, 0.1], loss_prev=[5.0, 5.0])
    assert decisions(standard(scores, ABSOLUTE)) == {"s0": (True, "kept"), "s1": (True, "kept")}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_returns_the_decision_schema_one_row_per_sample(name: str) -> None:
    scores = make_scores(loss=[0.1, 0.2, 0.3], loss_prev=[1.0, None, 0.3])
    out = get_policy(name)(scores, ABSOLUTE).collect()
    assert out.select(DECISION_SCHEMA.names()).schema == DECISION_SCHEMA
    assert set(scores.collect_schema()) <= set(out.schema)  # the scores travel along
    assert sorted(out["sample_id"]) == ["s0", "s1", "s2"]


def test_unknown_policy_names_the_key_and_known_policies() -> None:
    with pytest.raises(
        ConfigError, match=r"policy.name: unknown policy 'stn' \(known: standard, stm\)"
    ):
        get_policy("stn")


def test_floor_tightens_per_round() -> None:
    config = PolicyConfig(floor=0.4, tighten=0.5)
    assert [PolicyParams.for_round(config, r).floor for r in range(3)] == [0.4, 0.2, 0.1]


def test_standard_records_no_parameters() -> None:
    assert policy_parameters("standard", ABSOLUTE) == {}
    assert policy_parameters("stm", ABSOLUTE) == {
        "delta": 0.25,
        "delta_mode": "absolute",
        "floor": 0.5,
    }
