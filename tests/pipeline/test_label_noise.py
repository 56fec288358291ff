from __future__ import annotations

import math

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.deltas import with_loss_deltas
from pipeline.errors import ConfigError
from pipeline.label_noise import (
    SUSPECT_LABEL,
    NoiseEstimate,
    NoiseParams,
    likely_mislabeled,
    noise_counts,
    noise_estimate,
    noise_growth,
    noise_warning,
    suspect_column,
    with_noise_guard,
)
from pipeline.policies import Policy, PolicyParams, anti_stm, standard, stm

STM = PolicyParams(delta=0.5, delta_mode="absolute", floor=0.3)
GUARD = NoiseParams(guard=True)

# Losses per pass of one round (epochs 1, 2, ...), with warmup 2 and high_loss ln 2.
HISTORIES = {
    "noisy": [2.5, 2.5, 2.5, 2.5, 2.5],  # a label the model cannot fit: flat and high
    "rising": [1.0, 1.5, 2.0, 2.5, 3.0],  # pushed up as the clean samples are fitted
    "hard": [2.5, 1.8, 0.6, 0.05, 0.05],  # clean: under ln 2 at pass 3, mastered at 4
    "dip": [2.5, 0.6, 1.5, 2.0, 2.5],  # under ln 2 once: the model can fit its label
    "slow": [3.0, 2.5, 2.0, 1.5, 1.0],  # still falling fast: being learnt, spared
    "stalled": [3.0, 2.5, 2.0, 2.0, 2.0],  # a hard clean sample that stalls: suspect too
    "easy": [0.9, 0.2, 0.2, 0.2, 0.2],  # mastered at pass 2
}


def decide_round(
    histories: dict[str, list[float]],
    noise: NoiseParams | None,
    policy: Policy = stm,
    params: PolicyParams = STM,
) -> list[pl.DataFrame]:
    """Each pass of round 0 scored with the real delta code (sorted by id, as a scores
    file is), decided by `policy` and then by the guard unless `noise` is None; a sample
    dropped at a pass is not scored at the later ones, as in a run."""
    decided: list[pl.DataFrame] = []
    pool = set(histories)
    previous = None
    for epoch in range(1, len(next(iter(histories.values()))) + 1):
        ids = sorted(pool)
        current = pl.LazyFrame(
            {"sample_id": ids, "loss": [histories[i][epoch - 1] for i in ids], "n_tokens": 1},
            schema={"sample_id": pl.String, "loss": pl.Float32, "n_tokens": pl.Int64},
        )
        scores = with_loss_deltas(current, previous, 0, epoch).sort("sample_id").collect()
        decisions = policy(scores.lazy(), params)
        if noise is not None:
            decisions = with_noise_guard(decisions, noise)
        # the criterion's column, as `pipeline.pruning.decide` adds it
        step = decisions.with_columns(suspect_column(noise or NoiseParams())).collect()
        decided.append(step)
        pool = set(step.filter("keep")["sample_id"])
        previous = scores.lazy()
    return decided


def reasons(step: pl.DataFrame) -> dict[str, str]:
    return dict(zip(step["sample_id"], step["reason"], strict=True))


def test_the_guard_quarantines_the_samples_whose_loss_stays_high() -> None:
    steps = decide_round(HISTORIES, GUARD)
    assert [reasons(step) for step in steps[2:]] == [
        {
            "noisy": SUSPECT_LABEL,
            "rising": SUSPECT_LABEL,
            "hard": "above_floor",
            "dip": "learning",
            "slow": "above_floor",
            "stalled": "above_floor",
        },
        {"hard": "mastered", "dip": "learning", "slow": "above_floor", "stalled": SUSPECT_LABEL},
        {"dip": "learning", "slow": "above_floor"},
    ]
    quarantined = steps[2].filter(pl.col("reason") == SUSPECT_LABEL)
    assert not quarantined["keep"].any()


def test_nothing_is_judged_during_the_warm_up() -> None:
    for warmup in (2, 4):
        steps = decide_round(HISTORIES, NoiseParams(warmup=warmup, guard=True))
        first_quarantine = next(
            epoch for epoch, step in enumerate(steps, 1) if SUSPECT_LABEL in step["reason"]
        )
        assert first_quarantine == warmup + 1


def test_the_guard_keeps_the_reason_of_a_sample_the_policy_dropped() -> None:
    """A suspect the policy drops anyway left for the policy's reason."""
    histories = {"noisy": [2.5, 1.9, 1.9], "clean": [2.5, 1.9, 0.5]}
    third = decide_round(histories, GUARD, anti_stm, STM)[2]
    assert reasons(third) == {"clean": "below_ceiling", "noisy": "hopeless"}
    scores = decide_round(histories, NoiseParams())[2]
    mastered = scores.with_columns(keep=pl.lit(False), reason=pl.lit("mastered"))
    assert_frame_equal(with_noise_guard(mastered.lazy(), GUARD).collect(), mastered)


@pytest.mark.parametrize("policy", [stm, standard, anti_stm])
def test_without_the_guard_the_policy_decides_alone(policy: Policy) -> None:
    guarded_off = decide_round(HISTORIES, NoiseParams(guard=False), policy)
    alone = decide_round(HISTORIES, None, policy)
    for off, reference in zip(guarded_off, alone, strict=True):
        assert_frame_equal(off, reference)
    assert all(SUSPECT_LABEL not in step["reason"] for step in guarded_off)


def test_the_guard_keeps_rows_order_and_columns() -> None:
    scores = decide_round(HISTORIES, NoiseParams())[2]
    shuffled = scores.sample(fraction=1.0, shuffle=True, seed=3).with_columns(extra=pl.lit(7))
    guarded = with_noise_guard(shuffled.lazy(), GUARD).collect()
    assert guarded.columns == shuffled.columns
    assert guarded["sample_id"].to_list() == shuffled["sample_id"].to_list()
    changed = guarded.filter(pl.col("reason") != shuffled["reason"])
    assert sorted(changed["sample_id"]) == ["noisy", "rising"]


def test_missing_diagnostics_are_null_safe_and_missing_columns_refused() -> None:
    rows = pl.DataFrame(
        {"passes": [None, 5, 5], "min_loss": [3.0, None, 3.0], "delta": [0.0, 0.0, None]},
        schema={"passes": pl.Int32, "min_loss": pl.Float32, "delta": pl.Float32},
    )
    assert rows.select(likely_mislabeled(NoiseParams()))[:, 0].to_list() == [False] * 3
    decided = pl.LazyFrame({"sample_id": ["a"], "keep": [True], "reason": ["kept"]})
    with pytest.raises(ValueError, match="missing: passes, min_loss, delta"):
        with_noise_guard(decided, GUARD)
    with pytest.raises(ValueError, match="the noise estimate needs"):
        noise_estimate(decided)
    assert with_noise_guard(decided, NoiseParams()) is decided  # guard off: not even read


def test_noise_estimate_counts() -> None:
    steps = decide_round(HISTORIES, NoiseParams())
    third = noise_estimate(steps[2].lazy())
    # easy was mastered at pass 2; noisy and rising are suspects the stm policy keeps
    assert third == NoiseEstimate(
        scored=6, judged=6, suspects=2, suspects_in_pool=2, pool=6, quarantined=0
    )
    assert third.share == pytest.approx(2 / 6)
    guarded = noise_estimate(decide_round(HISTORIES, GUARD)[2].lazy())
    assert guarded == NoiseEstimate(
        scored=6, judged=6, suspects=2, suspects_in_pool=0, pool=4, quarantined=2
    )
    assert guarded.share == 0.0
    second = noise_estimate(steps[1].lazy())
    assert (second.judged, second.suspects, second.share) == (0, 0, None)  # warm-up
    empty = noise_estimate(steps[2].lazy().head(0))
    assert empty == NoiseEstimate(0, 0, 0, 0, 0, 0) and empty.share is None


def test_noise_estimates_of_slices_add_up() -> None:
    step = decide_round(HISTORIES, GUARD)[2]
    whole = noise_estimate(step.lazy())
    parts = [
        NoiseEstimate.from_counts(piece.select(noise_counts()).row(0, named=True))
        for piece in step.iter_slices(2)
    ]
    assert sum(parts[1:], parts[0]) == whole


def stm_pool_histories() -> dict[str, list[float]]:
    """10 noisy samples flat at 2.5 and 90 clean ones under ln 2 from pass 3, a third of
    them mastered at each of passes 4, 5 and 6: STM empties the pool of clean samples."""
    histories = {f"noisy{i}": [2.5] * 6 for i in range(10)}
    for i in range(90):
        mastered_at = 4 + i % 3
        trail = [2.0, 1.0] + [0.6] * (mastered_at - 3) + [0.05] * (7 - mastered_at)
        histories[f"clean{i:02d}"] = trail
    return histories


def shares(policy: Policy, noise: NoiseParams) -> list[tuple[int, int, float | None]]:
    steps = decide_round(stm_pool_histories(), noise, policy)
    return [(0, epoch, noise_estimate(step.lazy()).share) for epoch, step in enumerate(steps, 1)]


def test_the_warning_fires_when_stm_concentrates_the_noise() -> None:
    history = shares(stm, NoiseParams())
    assert [share for _, _, share in history] == [
        None,
        None,
        pytest.approx(0.1),
        pytest.approx(10 / 70),
        pytest.approx(0.25),
        1.0,
    ]
    warnings = [noise_warning(history[:end], NoiseParams()) for end in range(1, 7)]
    assert warnings[:4] == [None] * 4  # 1.4x at epoch 4 is under the threshold
    assert warnings[4] == (
        "round 0 epoch 5: likely-mislabeled share of the pool grew 2.5x since epoch 3 "
        "(10.0% -> 25.0%, threshold 2.0x); consider policy.noise_guard = true "
        "(docs/label-noise.md)"
    )
    assert warnings[5] is not None and "grew 10.0x" in warnings[5]
    assert noise_warning(history, NoiseParams(growth=20.0)) is None


@pytest.mark.parametrize(
    ("policy", "noise"), [(standard, NoiseParams()), (stm, GUARD)], ids=["flat", "guarded"]
)
def test_no_warning_when_the_share_does_not_grow(policy: Policy, noise: NoiseParams) -> None:
    history = shares(policy, noise)
    assert all(noise_warning(history[:end], noise) is None for end in range(1, 7))


def test_the_warning_compares_with_the_first_judged_step_of_the_latest_round() -> None:
    history = [(0, 3, 0.01), (0, 4, 0.5), (1, 1, None), (1, 3, 0.2), (1, 4, 0.3)]
    assert noise_warning(history, NoiseParams()) is None  # 1.5x since round 1's epoch 3
    assert noise_warning(list(reversed(history)), NoiseParams()) is None
    grown = [*history, (1, 5, 0.5)]
    assert "round 1 epoch 5" in noise_warning(grown[::-1], NoiseParams())
    assert noise_warning([], NoiseParams()) is None
    assert noise_warning([(0, 3, 0.0), (0, 4, 0.5)], NoiseParams()) is None
    assert noise_warning([(0, 3, 0.1), (0, 4, None)], NoiseParams()) is None


@pytest.mark.parametrize(
    ("first", "share", "growth"),
    [(0.1, 0.25, 2.5), (0.2, 0.1, 0.5), (0.0, 0.1, None), (None, 0.1, None), (0.1, None, None)],
)
def test_noise_growth(first: float | None, share: float | None, growth: float | None) -> None:
    assert noise_growth(first, share) == (growth if growth is None else pytest.approx(growth))


@pytest.mark.parametrize(
    ("values", "key", "message"),
    [
        ({"high_loss": 0.0}, "high_loss", "must be a positive finite number"),
        ({"high_loss": -1.0}, "high_loss", "must be a positive finite number"),
        ({"high_loss": math.nan}, "high_loss", "must be a positive finite number"),
        ({"high_loss": math.inf}, "high_loss", "must be a positive finite number"),
        ({"warmup": 0}, "warmup", "must be at least 1, got 0"),
        ({"growth": 1.0}, "growth", "must be greater than 1, got 1.0"),
        ({"growth": math.nan}, "growth", "must be greater than 1"),
    ],
)
def test_noise_params_are_validated(values: dict[str, float], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^config key policy.noise_{key}: {message}") as err:
        NoiseParams(**values)
    assert err.value.key == f"policy.noise_{key}"


def test_noise_params_defaults() -> None:
    assert NoiseParams() == NoiseParams(high_loss=0.693, warmup=2, growth=2.0, guard=False)
    assert NoiseParams().high_loss == pytest.approx(math.log(2), abs=1e-3)
