"""`stm experiment`: grid expansion, the equal-compute analysis and the label-noise
measures on hand-built frames, paired seeds, and the harness end to end on a tiny grid
(2 policies x 2 seeds)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner, Result

from pipeline import experiment as experiment_module
from pipeline.cli import cli
from pipeline.errors import ConfigError
from pipeline.experiment import (
    held_out_accuracy,
    label_noise_inputs,
    load_experiment,
    run_cells,
)
from pipeline.experiment_results import (
    equal_compute,
    label_noise,
    mean_interval,
    noisy_share_by_step,
    policy_summary,
    scoring_cost,
    summary_markdown,
)
from pipeline.store import RunLayout

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


def test_nested_config_tables_override_per_policy_and_in_the_grid(tmp_path) -> None:
    grid = write_grid(
        tmp_path,
        """
[[policies]]
name = "standard"
[[policies]]
label = "stm-small-batches"
name = "stm"
config = { scoring = { batch_size = 7 } }
[grid]
"scoring.threads" = [1, 2]
""",
    )
    cells = load_experiment(grid, tmp_path / "out").cells
    scoring = {c.run_id: (c.config.scoring.batch_size, c.config.scoring.threads) for c in cells}
    assert scoring["standard__scoring.threads-2__s0"] == (32, 2)  # configs/tiny.toml's
    assert scoring["stm-small-batches__scoring.threads-1__s0"] == (7, 1)


DATA_GRID = """
[data]
path = "{path}"
id_column = "id"
group_column = "source"
[config]
trainer.command = "python train.py --pool {{pool}}"
[[policies]]
name = "standard"
"""


@pytest.mark.parametrize("absolute", [False, True])
def test_the_grid_names_its_dataset_relative_to_the_grid_file(tmp_path, absolute: bool) -> None:
    data = tmp_path / "data" / "noisy.parquet"
    grid = write_grid(tmp_path, DATA_GRID.format(path=data if absolute else "data/noisy.parquet"))
    config = load_experiment(grid, tmp_path / "out").cells[0].config
    assert (config.data.path, config.data.id_column, config.data.group_column) == (
        str(data),
        "id",
        "source",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[data]\npth = 'x'\n", "unknown config key data.pth, did you mean 'data.path'?"),
        ("data = 'x.parquet'\n", "data: expected a table [data]"),
        (
            "[data]\npath = 'x'\n[config]\ndata.path = 'y'\n",
            "data.path is set in both [data] and [config]; keep one",
        ),
    ],
)
def test_a_bad_data_table_names_what_is_wrong(tmp_path, text: str, message: str) -> None:
    grid = write_grid(tmp_path, f'{text}[[policies]]\nname = "standard"\n')
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(grid, tmp_path / "out")


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


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"accuracy": {"hard": 0.5, "_overall": 0.6}}, {"hard": 0.5, "_overall": 0.6}),
        (
            {"trainer": {"held_out_accuracy": 0.9, "held_out_accuracy.digit-3": 1, "epochs": 2}},
            {"_overall": 0.9, "digit-3": 1.0},
        ),
        (
            {"accuracy": {"hard": 0.5}, "trainer": {"held_out_accuracy": 0.9}},
            {"hard": 0.5},  # the pipeline's own evaluation wins
        ),
        ({"accuracy": {}, "trainer": {"train_accuracy": 0.9}}, {}),
        ({"train_loss": None}, {}),
    ],
)
def test_held_out_accuracy_comes_from_the_pipeline_or_else_the_trainer(
    metrics: dict[str, Any], expected: dict[str, float]
) -> None:
    assert held_out_accuracy(metrics) == expected


def id_rows(run: str, rows: dict[int, list[str]]) -> pl.LazyFrame:
    """(run_id, step, sample_id) rows from {step: [ids]}."""
    return pl.LazyFrame(
        [{"run_id": run, "step": step, "sample_id": i} for step, ids in rows.items() for i in ids],
        schema={"run_id": pl.String, "step": pl.Int64, "sample_id": pl.String},
    )


def make_truth(run: str, flipped: str) -> pl.LazyFrame:
    """One sample per character of `flipped`: "f" flipped, "c" clean; ids a, b, c, ..."""
    return pl.LazyFrame(
        {
            "run_id": run,
            "sample_id": [chr(ord("a") + i) for i in range(len(flipped))],
            "flipped": [mark == "f" for mark in flipped],
        }
    )


def test_label_noise_counts_the_noisy_pool_and_the_quarantine_against_the_flips() -> None:
    # a, b, c flipped; d..h clean. The guard quarantines b and d at step 2, then a and e
    # at step 3 (a also at step 4 of another round: it counts once).
    truth = make_truth("guard", "fffccccc")
    pools = id_rows("guard", {1: list("abcdefgh"), 2: list("acefgh"), 3: list("cfgh"), 4: []})
    quarantined = id_rows("guard", {2: ["b", "d"], 3: ["a", "e"], 4: ["a"]})
    results = pl.LazyFrame(
        {"run_id": "guard", "step": [1, 2, 3, 4], "pool_size": [8, 6, 4, 0], "x": [1, 2, 3, 4]}
    )
    out = label_noise(results, pools, quarantined, truth).collect()
    assert out.get_column("x").to_list() == [1, 2, 3, 4]  # the results' rows, in order
    assert out.get_column("flipped_in_pool").to_list() == [3, 2, 1, 0]
    assert out.get_column("noisy_share").to_list() == [3 / 8, 2 / 6, 1 / 4, None]
    assert out.get_column("quarantined").to_list() == [0, 2, 4, 4]
    assert out.get_column("quarantined_flipped").to_list() == [0, 1, 2, 2]
    assert out.get_column("suspect_precision").to_list() == [None, 0.5, 0.5, 0.5]
    assert out.get_column("suspect_recall").to_list() == [0.0, 1 / 3, 2 / 3, 2 / 3]


def test_label_noise_per_run_and_without_flipped_labels_or_truth() -> None:
    truth = pl.concat([make_truth("noisy", "fc"), make_truth("clean", "cc")])
    pools = pl.concat([id_rows(run, {1: ["b"]}) for run in ("noisy", "clean", "unknown")])
    quarantined = pl.concat([id_rows(run, {1: ["a"]}) for run in ("noisy", "clean", "unknown")])
    results = pl.LazyFrame({"run_id": ["noisy", "clean", "unknown"], "step": 1, "pool_size": 1})
    out = label_noise(results, pools, quarantined, truth).collect()
    columns = ["run_id", "noisy_share", "quarantined", "suspect_precision", "suspect_recall"]
    assert out.select(columns).rows() == [
        ("noisy", 0.0, 1, 1.0, 1.0),
        ("clean", 0.0, 1, 0.0, None),  # no flipped label: no recall
        ("unknown", None, None, None, None),  # its dataset has no `flipped` column
    ]


def test_label_noise_inputs_read_a_runs_truth_pools_and_suspect_label_decisions(
    tmp_path,
) -> None:
    layout = RunLayout(tmp_path, "guard")
    layout.run_dir.mkdir(parents=True)
    samples = {"sample_id": ["a", "b", "c"], "label": 3, "flipped": [True, False, False]}
    pl.DataFrame(samples).write_parquet(layout.samples)
    pool = tmp_path / "pools" / "p1.parquet"
    pool.parent.mkdir()
    pl.DataFrame({"sample_id": ["b", "c"], "group": "all"}).write_parquet(pool)
    decisions = layout.decisions(0, 1)
    decisions.parent.mkdir()
    reasons = ["suspect-label", "kept", "kept"]
    pl.DataFrame({"sample_id": ["a", "b", "c"], "reason": reasons}).write_parquet(decisions)
    record = {
        "pool": {"path": layout.relative(pool)},
        "step": {"decisions": {"path": layout.relative(decisions)}},
    }
    truth, pools, quarantined = label_noise_inputs(layout, [record])
    assert truth.collect().rows() == [
        ("guard", "a", True),
        ("guard", "b", False),
        ("guard", "c", False),
    ]
    assert pools.collect().rows() == [("guard", 1, "b"), ("guard", 1, "c")]
    assert quarantined.collect().rows() == [("guard", 1, "a")]


def noisy_results() -> pl.LazyFrame:
    """Two policies x 2 seeds x 2 steps with the label-noise columns, compute = 100/step."""
    rows = []
    for policy, seed, share, precision in (
        ("standard", 0, 0.10, None),
        ("standard", 1, 0.10, None),
        ("guard", 0, 0.05, 0.8),
        ("guard", 1, 0.03, 0.6),
    ):
        for step in (1, 2):
            rows.append(
                {
                    "run_id": f"{policy}__s{seed}",
                    "policy": policy,
                    "params": "",
                    "seed": seed,
                    "step": step,
                    "pool_size": 10,
                    "compute_train": 100.0 * step,
                    "compute_total": 100.0 * step,
                    "accuracy._overall": 0.5,
                    "noisy_share": 0.1 if step == 1 else share,
                    "quarantined": 0 if precision is None else 5,
                    "suspect_precision": precision,
                    "suspect_recall": 0.0 if precision is None else precision / 2,
                }
            )
    return pl.LazyFrame(rows)


def test_the_summary_shows_the_noisy_share_per_epoch_and_the_quarantine_quality() -> None:
    results = noisy_results()
    summary = policy_summary(results, "standard")
    guard = summary.row(0, named=True)
    assert guard["policy"] == "guard"
    assert guard["suspect_precision.mean"] == pytest.approx(0.7)
    assert guard["suspect_recall.mean"] == pytest.approx(0.35)
    by_step = noisy_share_by_step(results)
    assert by_step is not None
    cost = {"ratio": 0.1, "q25": 0.1, "q75": 0.1, "steps": 2, "method": "fixed"}
    markdown = summary_markdown(summary, "standard", cost, "noisy", by_step)
    assert "| policy | params | epoch 1 | epoch 2 |\n" in markdown
    assert "| guard | - | 10.0% ± 0.0 | 4.0% ± 12.7 |\n" in markdown
    assert "| guard | - | 5.0 ± 0.0 | 70.0% ± 127.1 | 35.0% ± 63.5 |\n" in markdown
    assert "| standard | - | 0.0 ± 0.0 | - | 0.0% ± 0.0 |\n" in markdown
    assert noisy_share_by_step(results.drop("noisy_share")) is None


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


def test_parallel_jobs_give_the_runs_of_one_process(tiny_experiment, tmp_path) -> None:
    """`--jobs 2` runs cells in spawned worker processes: the same runs, manifest for
    manifest, as the serial experiment's cells of the same grid and seed."""
    serial, _ = tiny_experiment
    grid = TINY_GRID.read_text().replace("seeds = [0, 1]", "seeds = [0]")
    grid = grid.replace('base = "../tiny.toml"\n', "")  # write_grid names the base
    out = tmp_path / "parallel"
    result = invoke("experiment", str(write_grid(tmp_path, grid)), "--out", str(out), "--jobs", "2")
    assert result.exit_code == 0, result.output
    for run in ("standard__s0", "stm__s0"):
        ids = [
            {
                path.name: json.loads(path.read_text())["id"]
                for path in RunLayout(root / "store", run).manifest_dir.glob("*.json")
            }
            for root in (serial, out)
        ]
        assert len(ids[0]) == 3 and ids[1] == ids[0]  # reset + 2 epochs, id for id
    assert pl.read_parquet(out / "results.parquet").height == 2 * 2


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
