from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w

from pipeline.config import (
    POLICY_KEYS_ADDED_LATER,
    PolicyConfig,
    RunConfig,
    from_dict,
    load_config,
    to_dict,
)
from pipeline.errors import ConfigError
from pipeline.policies import (
    DECISION_SCHEMA,
    POLICIES,
    STREAK,
    PolicyParams,
    anti_stm,
    delta_only,
    dual_stm,
    floor_only,
    get_policy,
    is_row_local,
    policy_parameters,
    random_control,
    repetition_target,
    selective_repetition,
    standard,
    stm,
    stm_streak,
)
from pipeline.pruning import StepInputs, prune_step, reset_pool
from pipeline.runs import config_fingerprint
from pipeline.store import RunLayout
from tests.builders import make_sample_table, make_scores


def decisions(frame: pl.LazyFrame) -> dict[str, tuple[bool, str]]:
    out = frame.collect()
    return {r["sample_id"]: (r["keep"], r["reason"]) for r in out.iter_rows(named=True)}


def dropped(frame: pl.LazyFrame) -> list[str]:
    return sorted(frame.filter(~pl.col("keep")).collect()["sample_id"])


ABSOLUTE = PolicyParams(delta=0.25, delta_mode="absolute", floor=0.5)
# Losses and previous losses that tell the delta-based policies apart (floor 0.5,
# ceiling 1.0, delta 0.25): mastered, sharp drop above the floor, slow at the floor,
# stuck high, rising high, baseline.
MIXED_LOSS = [0.25, 1.5, 0.5, 3.0, 2.0, 0.125]
MIXED_PREV = [1.0, 2.0, 0.625, 3.0, 1.0, None]


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


def at_epoch(scores: pl.LazyFrame, epoch: int) -> pl.LazyFrame:
    return scores.with_columns(epoch=pl.lit(epoch, dtype=pl.Int32))


@pytest.mark.parametrize(
    ("warmup", "epoch", "mastered"),
    [(0, 2, (False, "mastered")), (2, 2, (True, "warmup")), (2, 3, (False, "mastered"))],
)
def test_stm_drops_nothing_during_warmup(
    warmup: int, epoch: int, mastered: tuple[bool, str]
) -> None:
    scores = at_epoch(make_scores(loss=[0.25, 1.0, 0.5], loss_prev=[1.0, 1.0, None]), epoch)
    params = replace(ABSOLUTE, warmup=warmup)
    expected_learning = (True, "warmup") if epoch <= warmup else (True, "learning")
    assert decisions(stm(scores, params)) == {
        "s0": mastered,
        "s1": expected_learning,
        "s2": (True, "baseline"),  # no history: the baseline, warm-up or not
    }


def test_stm_patience_needs_the_condition_on_consecutive_passes() -> None:
    scores = make_scores(loss=[0.25, 0.25, 0.25, 1.0], loss_prev=[1.0, 1.0, 1.0, 1.0])
    # Sorted first: make_scores' join does not promise the ids' order.
    scores = scores.sort("sample_id").with_columns(pl.Series(STREAK, [0, 1, 2, 2], pl.Int32))
    params = replace(ABSOLUTE, patience=3)
    assert decisions(stm(scores, params)) == {
        "s0": (True, "patience"),  # first pass meeting it
        "s1": (True, "patience"),  # second in a row
        "s2": (False, "mastered"),  # third in a row
        "s3": (True, "learning"),  # a streak counts only with the condition now
    }


def pass_scores(loss: list[float], loss_prev: list[float | None]) -> pl.LazyFrame:
    return make_scores(loss=loss, loss_prev=loss_prev, ids=["a", "b", "c", "d"]).sort("sample_id")


def test_stm_streak_counts_the_latest_unbroken_run_of_passes() -> None:
    met, missed = (0.25, 1.0), (1.0, 1.0)  # (loss, loss_prev): meets / misses the condition
    passes = [  # oldest first; per sample a, b, c, d
        [met, met, met, missed],
        [met, missed, met, met],
        [met, met, missed, met],
    ]
    history = [pass_scores([p[0] for p in one], [p[1] for p in one]) for one in passes]
    streak = stm_streak(history, ABSOLUTE).collect()
    assert dict(zip(streak["sample_id"], streak[STREAK], strict=True)) == {
        "a": 3,
        "b": 1,
        "c": 0,
        "d": 2,
    }


def test_standard_keeps_everything() -> None:
    scores = make_scores(loss=[0.0, 0.1], loss_prev=[5.0, 5.0])
    assert decisions(standard(scores, ABSOLUTE)) == {"s0": (True, "kept"), "s1": (True, "kept")}


MIXED = replace(ABSOLUTE, ceiling=1.0)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            floor_only,
            ["at_floor", "above_floor", "at_floor", "above_floor", "above_floor", "baseline"],
        ),
        (delta_only, ["sharp_drop", "sharp_drop", "learning", "learning", "learning", "baseline"]),
        (
            anti_stm,
            ["below_ceiling", "improving", "below_ceiling", "hopeless", "hopeless", "baseline"],
        ),
        (dual_stm, ["mastered", "above_floor", "learning", "hopeless", "hopeless", "baseline"]),
    ],
)
def test_delta_and_level_policies_decide_each_sample_from_its_row(
    policy: Any, expected: list[str]
) -> None:
    scores = make_scores(loss=MIXED_LOSS, loss_prev=MIXED_PREV)
    dropped_reasons = {"at_floor", "sharp_drop", "hopeless", "mastered"}
    assert decisions(policy(scores, MIXED)) == {
        f"s{i}": (reason not in dropped_reasons, reason) for i, reason in enumerate(expected)
    }


def test_anti_stm_with_relative_delta_spares_a_high_loss_that_halved() -> None:
    scores = make_scores(loss=[1.5, 1.5], loss_prev=[3.0, 1.6])
    params = replace(MIXED, delta=0.5, delta_mode="relative")
    assert decisions(anti_stm(scores, params)) == {
        "s0": (True, "improving"),
        "s1": (False, "hopeless"),
    }


def many_scores(n: int, epoch: int = 2, round_index: int = 0) -> pl.LazyFrame:
    ids = [f"id{i:03d}" for i in range(n)]
    return make_scores(loss=[1.0] * n, loss_prev=[1.0] * n, ids=ids).with_columns(
        epoch=pl.lit(epoch, dtype=pl.Int32), round=pl.lit(round_index, dtype=pl.Int32)
    )


def test_random_keeps_exactly_the_target_and_says_why() -> None:
    out = random_control(many_scores(50), replace(ABSOLUTE, pool_target=20)).collect()
    assert out["keep"].sum() == 20
    assert dict(out.group_by("reason").len().iter_rows()) == {"kept": 20, "random": 30}


def test_random_is_reproducible_from_seed_round_and_epoch_whatever_the_row_order() -> None:
    params = replace(ABSOLUTE, pool_target=20, seed=7)
    first = dropped(random_control(many_scores(50), params))
    shuffled = many_scores(50).collect().sample(fraction=1.0, shuffle=True, seed=3).lazy()
    assert dropped(random_control(shuffled, params)) == first
    assert dropped(random_control(many_scores(50), replace(params, seed=8))) != first
    assert dropped(random_control(many_scores(50, epoch=3), params)) != first
    assert dropped(random_control(many_scores(50, round_index=1), params)) != first


def test_random_draws_with_numpy_over_the_sorted_ids() -> None:
    """Pinned to numpy's Generator: the choice of the 3 of 8 sorted ids to drop."""
    chosen = np.random.default_rng([5, 0, 2]).choice(8, size=3, replace=False)
    expected = sorted(f"id{i:03d}" for i in chosen)
    params = replace(ABSOLUTE, pool_target=5, seed=5)
    assert dropped(random_control(many_scores(8), params)) == expected


def test_random_drops_nothing_when_the_pool_is_at_or_under_the_target() -> None:
    out = random_control(many_scores(5), replace(ABSOLUTE, pool_target=9)).collect()
    assert out["keep"].all() and set(out["reason"]) == {"kept"}


def test_selective_repetition_keeps_the_lowest_losses_ties_by_id() -> None:
    scores = make_scores(loss=[0.5, 0.1, 0.9, 0.1, 0.3])
    params = replace(ABSOLUTE, pool_target=3)
    assert decisions(selective_repetition(scores, params)) == {
        "s0": (False, "below_quantile"),
        "s1": (True, "kept"),
        "s2": (False, "below_quantile"),
        "s3": (True, "kept"),
        "s4": (True, "kept"),
    }


def test_selective_repetition_ranks_by_a_rank_score_high_first_missing_last() -> None:
    scores = make_scores(loss=[0.1, 0.2, 0.3, 0.4]).sort("sample_id")
    scores = scores.with_columns(rank_score=pl.Series([0.9, None, 0.2, 0.7]))
    params = replace(ABSOLUTE, pool_target=3, rank_order="high_first")
    assert dropped(selective_repetition(scores, params)) == ["s1"]
    params = replace(params, pool_target=2, rank_order="low_first")
    assert dropped(selective_repetition(scores, params)) == ["s0", "s1"]


def test_repetition_target_follows_the_schedule_then_its_last_fraction() -> None:
    schedule = (1.0, 1.0, 0.5, 0.3, 0.1)
    assert [repetition_target(schedule, e, 10) for e in range(1, 8)] == [10, 10, 5, 3, 1, 1, 1]
    assert repetition_target((0.25,), 1, 9) == 3  # rounded up: never an empty pool
    # Float error must not round up an exact product: 0.07 * 100 is 7.000000000000001.
    assert [repetition_target((f,), 1, n) for f, n in [(0.07, 100), (0.14, 200)]] == [7, 28]


def test_selective_repetition_ranks_a_nan_score_last_as_a_missing_one() -> None:
    scores = make_scores(loss=[0.1, 0.2, 0.3]).sort("sample_id")
    scores = scores.with_columns(rank_score=pl.Series([0.5, float("nan"), 0.9]))
    params = replace(ABSOLUTE, pool_target=1, rank_order="high_first")
    assert dropped(selective_repetition(scores, params)) == ["s0", "s1"]


def params_for(name: str) -> PolicyParams:
    return replace(ABSOLUTE, pool_target=None if is_row_local(name) else 2, last_soft_epoch=5)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_returns_the_decision_schema_one_row_per_sample_in_order(
    name: str,
) -> None:
    scores = make_scores(loss=[0.1, 0.2, 0.3], loss_prev=[1.0, None, 0.3]).sort("sample_id")
    scores = scores.with_columns(pl.lit(0, dtype=pl.Int32).alias(STREAK))
    out = get_policy(name)(scores, params_for(name)).collect()
    assert out.select(DECISION_SCHEMA.names()).schema == DECISION_SCHEMA
    assert set(scores.collect_schema()) <= set(out.schema)  # the scores travel along
    assert out["sample_id"].to_list() == ["s0", "s1", "s2"]


def test_only_pool_size_and_pool_mean_policies_need_the_whole_pool() -> None:
    assert sorted(name for name in POLICIES if not is_row_local(name)) == [
        "infobatch",
        "random",
        "selective-repetition",
    ]


def test_unknown_policy_names_the_key_and_known_policies() -> None:
    with pytest.raises(
        ConfigError,
        match=r"policy.name: unknown policy 'stn' \(known: anti-stm, delta-only, dual-stm, "
        r"floor-only, infobatch, random, selective-repetition, standard, stm\)",
    ):
        get_policy("stn")


def test_floor_tightens_per_round() -> None:
    config = PolicyConfig(floor=0.4, tighten=0.5)
    assert [PolicyParams.for_round(config, r).floor for r in range(3)] == [0.4, 0.2, 0.1]


def test_manifest_params_are_the_policys_own_and_new_keys_only_when_set() -> None:
    config = PolicyConfig(delta=0.25, floor=0.5, reference_run="ref")
    assert policy_parameters("standard", config, 0) == {}
    stm_params = {"delta": 0.25, "delta_mode": "absolute", "floor": 0.5}
    assert policy_parameters("stm", config, 0) == stm_params  # ids of existing runs hold
    assert policy_parameters("stm", replace(config, warmup=2, patience=3), 1) == {
        **stm_params,
        "floor": 0.25,
        "warmup": 2,
        "patience": 3,
    }
    assert policy_parameters("floor-only", config, 0) == {"floor": 0.5}
    assert policy_parameters("anti-stm", config, 0) == {
        "delta": 0.25,
        "delta_mode": "absolute",
        "ceiling": 1.0,
    }
    assert policy_parameters("random", config, 0) == {"reference_run": "ref", "seed": 0}
    assert policy_parameters("selective-repetition", config, 0) == {
        "schedule": [1.0, 1.0, 0.5, 0.3, 0.1],
        "rank_order": "low_first",
    }
    assert policy_parameters("infobatch", config, 0) == {
        "prune_ratio": 0.5,
        "anneal_epochs": 1,
        "seed": 0,
    }
    ranked = replace(config, rank_column="quality")
    assert policy_parameters("selective-repetition", ranked, 0) == {
        "schedule": [1.0, 1.0, 0.5, 0.3, 0.1],
        "rank_column": "quality",
        "rank_order": "high_first",
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"warmup": -1}, "policy.warmup: must be at least 0, got -1"),
        ({"patience": 0}, "policy.patience: must be at least 1, got 0"),
        ({"ceiling": 0.0}, "policy.ceiling: must be positive"),
        ({"seed": -1}, "policy.seed: must be between 0 and 2\\*\\*63 - 1"),
        ({"name": "random"}, 'policy.reference_run: must be set with policy.name = "random"'),
        ({"reference_run": "../x"}, "policy.reference_run: '../x' is not a run id"),
        ({"reference_run": "me"}, "policy.reference_run: must be another run than this one"),
        ({"schedule": []}, "policy.schedule: must not be empty"),
        ({"schedule": [1.0, 0.0]}, "policy.schedule: every fraction must be in \\(0, 1\\]"),
        ({"schedule": [0.5, 0.6]}, "policy.schedule: must not increase"),
        ({"schedule": 0.5}, "policy.schedule: expected an array, got 0.5"),
        ({"schedule": ["a"]}, 'policy.schedule: expected a number, got "a"'),
        ({"rank_column": " "}, "policy.rank_column: must not be empty"),
        ({"rank_order": "high"}, 'policy.rank_order: "high" is not one of'),
        ({"prune_ratio": 1.0}, "policy.prune_ratio: must be in \\[0, 1\\)"),
        ({"prune_ratio": -0.1}, "policy.prune_ratio: must be in \\[0, 1\\)"),
        ({"anneal_epochs": -1}, "policy.anneal_epochs: must be at least 0, got -1"),
    ],
)
def test_bad_policy_values_name_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(RunConfig, {"run_id": "me", "policy": values}).validate()


def test_a_schedule_from_toml_is_a_tuple_of_floats() -> None:
    config = from_dict(RunConfig, {"policy": {"schedule": [1, 0.5]}}).validate()
    assert config.policy.schedule == (1.0, 0.5)


def test_policy_keys_at_their_defaults_leave_a_runs_config_fingerprint_as_before() -> None:
    """Runs recorded before these keys existed still resume: their fingerprint is that of
    a config without them."""
    config = RunConfig()
    before = to_dict(replace(config, store=".", run_id=None))
    before.pop("scale")
    for key in POLICY_KEYS_ADDED_LATER:
        del before["policy"][key]
    assert config_fingerprint(config) == hashlib.sha256(tomli_w.dumps(before).encode()).hexdigest()
    # As computed by the code of ae72ddb, before any of these keys: a key added later and
    # not left out at its default would change these, and refuse to resume older runs.
    assert config_fingerprint(config) == (
        "4b83c1859f8291e7e55200d223c5c46b26f516e93dc4796c86bca301be192459"
    )
    tiny = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.toml")
    assert config_fingerprint(tiny) == (
        "ae1a5d44dcd664569aadee53a79692985839746d12a19480d63eff56c5520edd"
    )
    patient = replace(config, policy=replace(config.policy, patience=2))
    assert config_fingerprint(patient) != config_fingerprint(config)


# The I/O edge: what a policy needs from the store, resolved in pipeline.pruning.

IDS = [f"s{i:03d}" for i in range(8)]


def make_run(root: Path, run_id: str, quality: list[float] | None = None) -> RunLayout:
    layout = RunLayout(root, run_id)
    layout.run_dir.mkdir(parents=True)
    table = make_sample_table(n=len(IDS))
    if quality is not None:
        table = table.append_column("quality", pa.array(quality))
    pq.write_table(table, layout.samples)
    return layout


def step_inputs(layout: RunLayout, round_index: int, epoch: int, losses: dict[str, float]):
    raw = layout.run_dir / "scores" / ".raw.parquet"
    raw.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {"sample_id": list(losses), "loss": list(losses.values()), "n_tokens": [2] * len(losses)}
    ).write_parquet(raw)
    return StepInputs(round_index, epoch, raw, None, None, 10, 2 * len(losses), {})


def run_epochs(
    layout: RunLayout, policy: PolicyConfig, losses: list[dict[str, float]]
) -> list[dict[str, Any]]:
    """Reset round 0, then one pruning step per epoch with each sample's loss from
    `losses[epoch - 1]` (samples already dropped are not scored)."""
    records = [reset_pool(layout, 0, None, policy, "fp")]
    for epoch, epoch_losses in enumerate(losses, start=1):
        pool = set(pl.read_parquet(layout.resolve(records[-1]["pool"]["path"]))["sample_id"])
        scored = {k: v for k, v in epoch_losses.items() if k in pool}
        records.append(
            prune_step(layout, records[-1], step_inputs(layout, 0, epoch, scored), policy)
        )
    return records


def reasons(layout: RunLayout, epoch: int) -> dict[str, str]:
    frame = pl.read_parquet(layout.decisions(0, epoch))
    return dict(zip(frame["sample_id"], frame["reason"], strict=True))


def test_patience_reads_the_earlier_passes_of_the_round(tmp_path: Path) -> None:
    layout = make_run(tmp_path, "patient")
    policy = PolicyConfig(delta=0.25, floor=0.5, patience=2)
    falling = [dict.fromkeys(IDS, 2.0), dict.fromkeys(IDS, 1.0), dict.fromkeys(IDS, 1.0)]
    falling[1] |= {"s000": 0.25, "s001": 0.25}  # s000, s001 meet the condition at epoch 2
    falling[2] |= {"s000": 0.0, "s001": 0.25, "s002": 0.25}  # s000 again; s002 first time
    run_epochs(layout, policy, falling)
    assert {k: v for k, v in reasons(layout, 2).items() if k in ("s000", "s001")} == {
        "s000": "patience",
        "s001": "patience",
    }
    assert {k: reasons(layout, 3)[k] for k in ("s000", "s001", "s002", "s003")} == {
        "s000": "mastered",
        "s001": "learning",  # flat at 0.25: the streak broke
        "s002": "patience",  # its first pass meeting the condition
        "s003": "learning",
    }


def reference_losses() -> list[dict[str, float]]:
    """An STM run dropping 0, 3, then 2 samples."""
    first = dict.fromkeys(IDS, 2.0)
    second = first | {"s001": 0.25, "s004": 0.25, "s006": 0.25}
    third = second | {"s000": 0.25, "s007": 0.25}
    return [first, second, third, third]


def test_random_follows_the_reference_runs_pool_sizes_reproducibly(tmp_path: Path) -> None:
    reference = run_epochs(
        make_run(tmp_path, "ref"), PolicyConfig(delta=0.25, floor=0.5), reference_losses()
    )
    policy = PolicyConfig(name="random", reference_run="ref", seed=3)
    flat = [dict.fromkeys(IDS, 1.0)] * 4
    first = run_epochs(make_run(tmp_path, "rand-1"), policy, flat)
    again = run_epochs(make_run(tmp_path, "rand-2"), policy, flat)
    sizes = [r["pool"]["size"] for r in reference]
    assert sizes == [8, 8, 5, 3, 3]
    assert [r["pool"]["size"] for r in first] == sizes
    assert [r["pool"]["sha256"] for r in again] == [r["pool"]["sha256"] for r in first]
    assert first[2]["step"]["by_reason"] == {"kept": 5, "random": 3}
    assert first[-1]["policy"] == {"name": "random", "params": {"reference_run": "ref", "seed": 3}}
    other_seed = run_epochs(make_run(tmp_path, "rand-3"), replace(policy, seed=4), flat)
    assert [r["pool"]["sha256"] for r in other_seed][2:] != [r["pool"]["sha256"] for r in first][2:]


def test_random_refuses_a_reference_without_the_step(tmp_path: Path) -> None:
    run_epochs(make_run(tmp_path, "ref"), PolicyConfig(), reference_losses()[:1])
    policy = PolicyConfig(name="random", reference_run="ref")
    with pytest.raises(
        ConfigError, match="policy.reference_run: run 'ref' has no manifest for round 0 epoch 2"
    ):
        run_epochs(make_run(tmp_path, "rand"), policy, [dict.fromkeys(IDS, 1.0)] * 2)


def test_random_refuses_a_reference_of_another_dataset(tmp_path: Path) -> None:
    layout = make_run(tmp_path, "ref")
    records = [reset_pool(layout, 0, None, PolicyConfig(), "other")]
    prune_step(
        layout, records[0], step_inputs(layout, 0, 1, dict.fromkeys(IDS, 1.0)), PolicyConfig()
    )
    policy = PolicyConfig(name="random", reference_run="ref")
    with pytest.raises(
        ConfigError, match="policy.reference_run: run 'ref' curated another dataset"
    ):
        run_epochs(make_run(tmp_path, "rand"), policy, [dict.fromkeys(IDS, 1.0)])


def test_selective_repetition_keeps_the_schedule_of_the_best_by_rank_column(
    tmp_path: Path,
) -> None:
    quality = [0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6]
    layout = make_run(tmp_path, "rep", quality)
    policy = PolicyConfig(
        name="selective-repetition", schedule=(1.0, 0.5, 0.25), rank_column="quality"
    )
    records = run_epochs(layout, policy, [dict.fromkeys(IDS, 1.0)] * 4)
    assert [r["pool"]["size"] for r in records] == [8, 8, 4, 2, 2]
    final = pl.read_parquet(layout.resolve(records[-1]["pool"]["path"]))["sample_id"]
    assert final.to_list() == ["s001", "s005"]
    assert records[2]["step"]["by_reason"] == {"below_quantile": 4, "kept": 4}


def test_a_missing_rank_column_names_the_file_and_column(tmp_path: Path) -> None:
    layout = make_run(tmp_path, "rep")
    policy = PolicyConfig(name="selective-repetition", rank_column="quality")
    with pytest.raises(
        ConfigError, match=r"policy.rank_column: .*samples.parquet has no column 'quality'"
    ):
        run_epochs(layout, policy, [dict.fromkeys(IDS, 1.0)])
