"""`stm experiment`: grid expansion, the equal-compute analysis on hand-built frames,
paired seeds, and the harness end to end on a tiny grid (2 policies x 2 seeds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner, Result

from pipeline import experiment as experiment_module
from pipeline.cli import cli
from pipeline.errors import ConfigError
from pipeline.experiment import load_experiment, run_cells
from pipeline.experiment_results import (
    equal_compute,
    mean_interval,
    policy_summary,
    scoring_cost,
)

REPO = Path(__file__).resolve().parents[2]
TINY_GRID = REPO / "configs" / "experiments" / "tiny.toml"


def write_grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(f'base = "{REPO / "configs" / "tiny.toml"}"\n{text}')
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_grid_expands_to_policy_x_params_x_seed_with_run_ids_from_the_cell(tmp_path) -> None:
    grid = write_grid(
        tmp_path,
        """
seeds = [3, 7]
[config]
epochs = 2
[[policies]]
name = "standard"
[[policies]]
name = "stm"
label = "recursive-stm"
floor = 0.5
config = { rounds = 3 }
[grid]
"train.lr" = [0.01, 0.003]
""",
    )
    experiment = load_experiment(grid, tmp_path / "out")
    assert [cell.run_id for cell in experiment.cells] == [
        "standard__train.lr-0.01__s3",
        "standard__train.lr-0.01__s7",
        "recursive-stm__train.lr-0.01__s3",
        "recursive-stm__train.lr-0.01__s7",
        "standard__train.lr-0.003__s3",
        "standard__train.lr-0.003__s7",
        "recursive-stm__train.lr-0.003__s3",
        "recursive-stm__train.lr-0.003__s7",
    ]
    recursive = experiment.cells[2].config
    assert (recursive.policy.name, recursive.policy.floor, recursive.rounds) == ("stm", 0.5, 3)
    assert (recursive.epochs, recursive.train.lr, recursive.seed) == (2, 0.01, 3)
    assert experiment.cells[0].config.rounds == 2  # the base's (configs/tiny.toml)
    assert experiment.cells[0].config.store == str(tmp_path / "out" / "store")
    assert experiment.cells[0].params == "train.lr=0.01"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seeds = [0]\npolicy = 1\n", "unknown key policy, did you mean 'policies'?"),
        ('[[policies]]\nname = "stm"\nflor = 0.3\n', "unknown key policies[0].flor"),
        (
            '[[policies]]\nname = "standard"\n[[policies]]\nname = "no-such-policy"\n',
            "policy 'no-such-policy': config key policy.name: unknown policy \"no-such-policy\"",
        ),
        (
            '[[policies]]\nname = "standard"\n[grid]\n"train.rl" = [1]\n',
            "unknown config key grid.train.rl",
        ),
        ('[[policies]]\nname = "stm"\n', "baseline 'standard' is not one of the policies"),
    ],
)
def test_a_bad_grid_names_what_is_wrong(tmp_path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(write_grid(tmp_path, text), tmp_path / "out")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.toml", "missing.toml: grid file not found"), ("bad.toml", "unknown key policy")],
)
def test_the_cli_fails_in_one_line_on_a_bad_grid(tmp_path, name: str, message: str) -> None:
    (tmp_path / "bad.toml").write_text('policy = "stm"\n')
    result = invoke("experiment", str(tmp_path / name), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert "Traceback" not in result.output


def make_results(rows: list[tuple[str, int, int, float, float]]) -> pl.LazyFrame:
    """(policy, seed, step, compute, accuracy) rows, both compute measures equal."""
    return pl.LazyFrame(
        [
            {
                "run_id": f"{policy}__s{seed}",
                "policy": policy,
                "params": "",
                "seed": seed,
                "step": step,
                "pool_size": 10,
                "compute_train": compute,
                "compute_total": compute,
                "accuracy.hard": accuracy,
            }
            for policy, seed, step, compute, accuracy in rows
        ]
    )


BASELINE_CURVES = [
    ("standard", seed, step, 100.0 * step, acc)
    for seed, accs in ((0, (0.1, 0.5, 0.9)), (1, (0.2, 0.4, 0.8)), (2, (0.3, 0.3, 0.3)))
    for step, acc in zip((1, 2, 3), accs, strict=True)
]


def test_equal_compute_takes_the_last_baseline_epoch_within_the_runs_compute() -> None:
    results = make_results(
        [
            *BASELINE_CURVES,
            ("stm", 0, 1, 100.0, 0.0),
            ("stm", 0, 2, 250.0, 0.7),  # baseline step 2 (200 <= 250 < 300)
            ("stm", 1, 1, 300.0, 0.6),  # exactly step 3
            ("stm", 2, 1, 90.0, 0.5),  # cheaper than any baseline epoch
        ]
    )
    matched = equal_compute(results, "standard", "compute_total").collect()
    assert matched.get_column("baseline_step").to_list() == [2, 3, None]
    assert matched.get_column("diff.accuracy.hard").to_list() == pytest.approx([0.2, -0.2, None])
    assert matched.get_column("compute_ratio").to_list() == pytest.approx([0.8, 1.0, None])


def test_mean_interval_uses_the_t_quantile_of_the_seed_count() -> None:
    frame = pl.LazyFrame({"policy": ["a", "a", "a", "b"], "x": [1.0, 2.0, 3.0, 5.0]})
    out = mean_interval(frame, ["policy"], ["x"]).collect()
    assert out.get_column("x.mean").to_list() == [2.0, 5.0]
    # sd 1, n 3: t_0.975(2) = 4.303, half-width 4.303 / sqrt(3); one value: no interval.
    assert out.get_column("x.half").to_list() == pytest.approx([4.303 / 3**0.5, None])
    assert out.get_column("x.n").to_list() == [3, 1]


def test_paired_differences_over_seeds_in_the_summary() -> None:
    results = make_results(
        [
            *BASELINE_CURVES[:6],
            ("stm", 0, 1, 250.0, 0.7),  # vs 0.5: +0.2
            ("stm", 1, 1, 250.0, 0.8),  # vs 0.4: +0.4
        ]
    )
    summary = policy_summary(results, "standard").row(1, named=True)
    assert summary["policy"] == "stm"
    assert summary["diff@compute_total.accuracy.hard.mean"] == pytest.approx(0.3)
    # sd of (0.2, 0.4) = 0.1414; t_0.975(1) = 12.706; half = 12.706 * 0.1414 / sqrt(2)
    assert summary["diff@compute_total.accuracy.hard.half"] == pytest.approx(12.706 * 0.1)
    # saved: 1 - 250 / 300 for both seeds
    assert summary["saved.compute_train.mean"] == pytest.approx(1 / 6)


def test_scoring_cost_is_per_token_time_of_scoring_over_training() -> None:
    frame = pl.LazyFrame(
        {
            "run_id": ["a", "a", "a"],
            "step": [1, 2, 3],
            "train_seconds": [9.0, 2.0, 4.0],
            "score_seconds": [1.0, 0.5, 0.5],
            "tokens_trained_step": [100, 100, 100],
            "tokens_scored_step": [100, 100, 50],
        }
    )
    # step 1 (warm-up) left out; step 2: 0.5/2 = 0.25; step 3: (0.5/50)/(4/100) = 0.25
    assert scoring_cost(frame).collect().get_column("ratio").to_list() == [0.25, 0.25]


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("experiment")
    result = invoke("experiment", str(TINY_GRID), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_the_harness_writes_results_summary_and_figures(tiny_experiment) -> None:
    out, summary = tiny_experiment
    results = pl.read_parquet(out / "results.parquet")
    assert results.height == 4 * 2  # 4 runs x 2 epochs
    assert {"pool_size.easy", "accuracy.hard", "compute_train", "compute_total"} <= set(
        results.columns
    )
    markdown = (out / "summary.md").read_text()
    assert "## Paired difference to `standard` at equal compute" in markdown
    assert "## Final accuracy on seen training samples per group (retention)" in markdown
    for name in ("accuracy_vs_compute.png", "pool_per_group.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["scoring_cost"]["ratio"] > 0
    assert [run["status"] for run in summary["runs"]] == ["new"] * 4


def test_paired_seeds_start_from_the_same_model_and_data_order(tiny_experiment) -> None:
    """Epoch 1 trains every policy on the full pool: same seed, same bytes."""
    out, _ = tiny_experiment

    def first_scorer(run: str) -> bytes:
        return (out / "store" / "runs" / run / "scorers" / "r00-e001.onnx").read_bytes()

    assert first_scorer("standard__s0") == first_scorer("stm__s0")
    assert first_scorer("standard__s1") == first_scorer("stm__s1")
    assert first_scorer("standard__s0") != first_scorer("standard__s1")


def test_a_finished_experiment_is_skipped_when_run_again(tiny_experiment) -> None:
    out, _ = tiny_experiment
    result = invoke("experiment", str(TINY_GRID), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert [run["status"] for run in json.loads(result.stdout)["runs"]] == ["complete"] * 4


RANDOM_CONTROL = """
seeds = [3, 4]
[[policies]]
name = "standard"
[[policies]]
name = "stm"
[[policies]]
label = "random"
name = "random"
reference_run = "stm"
"""


def test_a_random_control_follows_the_cell_of_its_reference_at_the_same_seed(tmp_path) -> None:
    experiment = load_experiment(write_grid(tmp_path, RANDOM_CONTROL), tmp_path / "out")
    controls = {c.run_id: c.config.policy for c in experiment.cells if c.policy == "random"}
    assert {run: (p.reference_run, p.seed) for run, p in controls.items()} == {
        "random__s3": ("stm__s3", 3),
        "random__s4": ("stm__s4", 4),
    }


def test_cells_that_follow_another_cell_run_after_every_other_cell(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = load_experiment(write_grid(tmp_path, RANDOM_CONTROL), tmp_path / "out")
    order: list[str] = []

    def fake_run_cell(config, events=None) -> str:
        order.append(config.run_id)
        return "new"

    monkeypatch.setattr(experiment_module, "run_cell", fake_run_cell)
    run_cells(experiment.cells, tmp_path / "out", 1, lambda _: None, lambda *_: None)
    assert order[-2:] == ["random__s3", "random__s4"]
    assert sorted(order) == sorted(c.run_id for c in experiment.cells)
