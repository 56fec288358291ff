"""The noise estimate and guard inside a pruning step: a round where STM masters the
clean samples and two mislabeled ones keep a high loss, with the guard off (the share
grows and the step warns) and on (they are quarantined, with their own reason)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.config import PolicyConfig, RunConfig, dumps_toml
from pipeline.manifest import verify_manifest
from pipeline.policies import policy_parameters
from pipeline.pruning import StepInputs, prune_step, reset_pool
from pipeline.store import RunLayout
from pipeline.summaries import run_markdown, step_markdown
from pipeline.verify import verify_store
from tests.builders import make_sample_table

IDS = [f"s{i:03d}" for i in range(8)]
NOISY = ["s006", "s007"]
# Per epoch: s000-s001 are mastered at epoch 3, s002-s005 at epoch 4 (a sharp drop to
# 0.2); the two noisy samples stay at 2.5 nats throughout.
LOSSES = [
    dict.fromkeys(IDS, 2.0) | dict.fromkeys(NOISY, 2.5),
    dict.fromkeys(IDS, 1.0) | dict.fromkeys(NOISY, 2.5),
    dict.fromkeys(IDS[:2], 0.2) | dict.fromkeys(IDS[2:6], 0.9) | dict.fromkeys(NOISY, 2.5),
    dict.fromkeys(IDS[2:6], 0.2) | dict.fromkeys(NOISY, 2.5),
]


def run_round(
    root: Path, policy: PolicyConfig, passes: list[dict[str, float]] = LOSSES
) -> tuple[RunLayout, list[dict[str, Any]]]:
    layout = RunLayout(root, "noisy")
    layout.run_dir.mkdir(parents=True)
    pq.write_table(make_sample_table(n=8), layout.samples)
    config = RunConfig(epochs=len(passes), rounds=1, policy=policy)
    layout.config.write_text(dumps_toml(config))
    records = [reset_pool(layout, 0, None, policy, "fp")]
    for epoch, losses in enumerate(passes, start=1):
        pool = set(pl.read_parquet(layout.resolve(records[-1]["pool"]["path"]))["sample_id"])
        if not pool:
            break
        scored = {k: v for k, v in losses.items() if k in pool}
        raw = layout.run_dir / "scores" / ".raw.parquet"
        raw.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(
            {"sample_id": list(scored), "loss": list(scored.values()), "n_tokens": 2}
        ).write_parquet(raw)
        step = StepInputs(0, epoch, raw, None, None, 10, 2 * len(scored), {})
        records.append(prune_step(layout, records[-1], step, policy))
    return layout, records


def reasons(layout: RunLayout, epoch: int) -> dict[str, str]:
    frame = pl.read_parquet(layout.decisions(0, epoch))
    return dict(zip(frame["sample_id"], frame["reason"], strict=True))


def test_without_the_guard_the_noisy_share_grows_and_the_step_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="stm.pruning"):
        layout, records = run_round(tmp_path, PolicyConfig(delta=0.1, floor=0.3))
    noise = [r["noise"] for r in records[1:]]
    assert [n["share"] for n in noise] == [None, None, pytest.approx(2 / 6), 1.0]
    assert [n["pool_suspects"] for n in noise] == [0, 0, 2, 2]
    assert noise[3]["round_start_epoch"] == 3 and noise[3]["growth"] == pytest.approx(3.0)
    assert noise[2]["warning"] is None
    warning = (
        "round 0 epoch 4: likely-mislabeled share of the pool grew 3.0x since epoch 3 "
        "(33.3% -> 100.0%, threshold 2.0x); consider policy.noise_guard = true "
        "(docs/label-noise.md)"
    )
    assert noise[3]["warning"] == warning
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [warning]
    # the criterion is in the decisions: null before the warm-up ends
    decisions = pl.read_parquet(layout.decisions(0, 3)).sort("sample_id")
    assert decisions["likely_mislabeled"].to_list() == [False] * 6 + [True, True]
    assert pl.read_parquet(layout.decisions(0, 2))["likely_mislabeled"].null_count() == 8
    assert "noise_guard" not in records[-1]["policy"]["params"]  # ids as without the keys
    assert verify_store(layout.root, sorted(layout.manifest_dir.glob("*.json")))[1] == []


def test_the_guard_quarantines_the_noisy_samples_with_their_own_reason(tmp_path: Path) -> None:
    policy = PolicyConfig(delta=0.1, floor=0.3, noise_guard=True)
    layout, records = run_round(tmp_path, policy)
    assert reasons(layout, 3) == {
        "s000": "mastered",
        "s001": "mastered",
        **dict.fromkeys(IDS[2:6], "above_floor"),
        "s006": "suspect-label",
        "s007": "suspect-label",
    }
    assert records[3]["step"]["by_reason"]["suspect-label"] == 2
    assert records[3]["noise"]["quarantined"] == 2 and records[3]["noise"]["share"] == 0.0
    assert all(r["noise"]["warning"] is None for r in records[1:])
    assert "s006" not in set(
        pl.read_parquet(layout.resolve(records[3]["pool"]["path"]))["sample_id"]
    )
    assert records[3]["policy"]["params"] == policy_parameters("stm", policy, 0)
    assert records[3]["policy"]["params"]["noise_guard"] is True
    for record in records:
        verify_manifest(layout.root, layout.manifest(0, record["epoch"]))
    assert verify_store(layout.root, sorted(layout.manifest_dir.glob("*.json")))[1] == []


def test_a_changed_noise_count_fails_verification(tmp_path: Path) -> None:
    layout, records = run_round(tmp_path, PolicyConfig(delta=0.1, floor=0.3))
    path = layout.manifest(0, 3)
    record = records[3]
    tampered = {**record, "noise": {**record["noise"], "pool_suspects": 0}}
    path.chmod(0o644)
    path.write_text(json.dumps(tampered))
    problems = verify_store(layout.root, sorted(layout.manifest_dir.glob("*.json")))[1]
    assert problems == [f"{path}: noise.pool_suspects 0 but the decisions give 2"]


def test_the_warning_heads_the_steps_artifact_and_the_runs_summary(tmp_path: Path) -> None:
    layout, records = run_round(tmp_path, PolicyConfig(delta=0.1, floor=0.3))
    markdown = step_markdown(records[4], layout.manifest(0, 4))
    lines = markdown.splitlines()
    assert lines[2] == f"> **Warning:** {records[4]['noise']['warning']}"
    assert "- likely mislabeled: 2 in the pool (100.0%, 3.0x the round's start)" in lines
    assert "- likely mislabeled: not judged yet (warm-up)" in step_markdown(
        records[1], layout.manifest(0, 1)
    )
    summary = run_markdown(records, layout.run_dir).splitlines()
    assert summary[2] == f"> **Warning:** {records[4]['noise']['warning']}"
    assert "Warning" not in step_markdown(records[3], layout.manifest(0, 3))


# The noisy samples still fall by 0.2 at the first judged pass (epoch 3), so the pool's
# share is 0 there; they stall from epoch 4 while the clean samples leave.
SLOW_START = [
    dict.fromkeys(IDS, 2.0) | {"s006": 3.0, "s007": 3.0},
    dict.fromkeys(IDS, 1.0) | {"s006": 2.8, "s007": 2.8},
    dict.fromkeys(IDS, 0.9) | {"s006": 2.6, "s007": 2.6},
    dict.fromkeys(IDS[:2], 0.2) | dict.fromkeys(IDS[2:6], 0.8) | {"s006": 2.6, "s007": 2.6},
    dict.fromkeys(IDS[2:6], 0.2) | {"s006": 2.6, "s007": 2.6},
]


def test_a_round_whose_first_judged_share_is_zero_starts_at_its_first_suspect(
    tmp_path: Path,
) -> None:
    layout, records = run_round(tmp_path, PolicyConfig(delta=0.1, floor=0.3), SLOW_START)
    noise = [r["noise"] for r in records[1:]]
    assert [n["share"] for n in noise] == [None, None, 0.0, pytest.approx(2 / 6), 1.0]
    assert [n["round_start_epoch"] for n in noise] == [None, None, None, 4, 4]
    assert noise[4]["growth"] == pytest.approx(3.0)
    assert noise[4]["warning"].startswith("round 0 epoch 5: likely-mislabeled share")
    assert verify_store(layout.root, sorted(layout.manifest_dir.glob("*.json")))[1] == []


def test_verify_recomputes_the_share_growth_and_warning(tmp_path: Path) -> None:
    layout, records = run_round(tmp_path, PolicyConfig(delta=0.1, floor=0.3))
    path = layout.manifest(0, 4)
    record = records[4]
    quiet = {**record["noise"], "share": 0.01, "growth": 0.03, "warning": None}
    path.chmod(0o644)
    path.write_text(json.dumps({**record, "noise": quiet}))
    problems = verify_store(layout.root, sorted(layout.manifest_dir.glob("*.json")))[1]
    assert [problem.split(": ", 1)[1].split(" ", 1)[0] for problem in problems] == [
        "noise.share",
        "noise.growth",
        "noise.warning",
    ]
