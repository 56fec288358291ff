"""The label-noise evidence on scikit-learn's digits: make_dataset.py's flipped labels and
clean held-out split, train.py's sample weights and held-out accuracy, and the shipped
grids (examples/digits/noise-*.toml)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.datasets import load_digits

from pipeline.experiment import load_experiment
from pipeline.external_trainer import read_trainer_metrics

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits"
FRACTIONS = {"noise-0.toml": 0.0, "noise-10.toml": 0.1, "noise-30.toml": 0.3}
NOISE_DATA = "/tmp/stm-digits-noise"  # where examples/digits/noise.sh writes the datasets


def load_example(name: str) -> ModuleType:
    """An example script as a module (it is not a package of this project)."""
    spec = importlib.util.spec_from_file_location(f"digits_{name}", DIGITS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_dataset() -> ModuleType:
    return load_example("make_dataset")


@pytest.fixture(scope="module")
def train() -> ModuleType:
    return load_example("train")


def write_dataset(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch, path: Path, *flags: str
) -> pl.DataFrame:
    monkeypatch.setattr(sys, "argv", ["make_dataset.py", str(path), *flags])
    module.main()
    return pl.read_parquet(path)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 1.0])
def test_exactly_the_fraction_of_labels_is_flipped_to_another_digit(
    make_dataset: ModuleType, fraction: float
) -> None:
    labels = np.arange(1437) % 10
    noisy, flipped = make_dataset.flip_labels(labels, fraction, seed=3)
    assert flipped.sum() == round(fraction * 1437)
    assert np.array_equal(noisy != labels, flipped)
    assert set(noisy) <= set(range(10))
    again, _ = make_dataset.flip_labels(labels, fraction, seed=3)
    assert np.array_equal(noisy, again)


def test_a_flipped_label_is_any_of_the_nine_others(make_dataset: ModuleType) -> None:
    labels = np.zeros(9000, dtype=np.int64)
    noisy, _ = make_dataset.flip_labels(labels, 1.0, seed=0)
    counts = np.bincount(noisy, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 850  # 1000 each expected


def test_the_held_out_split_is_clean_stratified_and_left_out_of_training(
    make_dataset: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    digits = load_digits()
    held_out_path = tmp_path / "held-out.parquet"
    train = write_dataset(
        make_dataset,
        monkeypatch,
        tmp_path / "noise-30.parquet",
        *("--flip", "0.3", "--held-out", str(held_out_path), "--group-by", "noise"),
    )
    held_out = pl.read_parquet(held_out_path)
    assert held_out.columns == ["id", "label", "pixels"]
    assert held_out.get_column("label").to_list() == digits.target[held_out["id"]].tolist()
    per_digit = held_out.get_column("label").value_counts().sort("label")["count"].to_list()
    assert per_digit == [round(0.2 * n) for n in np.bincount(digits.target)]
    assert set(train["id"]).isdisjoint(held_out["id"])
    assert train.height + held_out.height == len(digits.target)

    assert train.columns == ["id", "label", "pixels", "group", "true_label", "flipped"]
    assert train.get_column("true_label").to_list() == digits.target[train["id"]].tolist()
    assert train.get_column("flipped").sum() == round(0.3 * train.height)
    flipped = train.get_column("flipped")
    assert (train.get_column("label") != train.get_column("true_label")).equals(flipped)
    assert train.get_column("group").to_list() == ["flipped" if f else "clean" for f in flipped]

    # Every noise level and flip seed holds out the same digits.
    other = tmp_path / "held-out-other.parquet"
    flags = ("--flip", "0.1", "--flip-seed", "5", "--held-out", str(other), "--group-by", "noise")
    write_dataset(make_dataset, monkeypatch, tmp_path / "noise-10.parquet", *flags)
    assert pl.read_parquet(other).equals(held_out)


def test_without_the_new_flags_the_dataset_is_as_before(
    make_dataset: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    digits = load_digits()
    table = write_dataset(make_dataset, monkeypatch, tmp_path / "d.parquet", "--limit", "200")
    assert table.schema == pl.Schema(
        {"id": pl.Int64, "label": pl.Int64, "pixels": pl.List(pl.Float32), "group": pl.String}
    )
    assert table.get_column("id").to_list() == list(range(200))
    assert table.get_column("label").to_list() == digits.target[:200].tolist()
    assert table.get_column("group").to_list() == [f"digit-{d}" for d in digits.target[:200]]
    pixels = np.array(table.get_column("pixels").to_list(), dtype=np.float32)
    assert np.array_equal(pixels, (digits.data[:200] / 16.0).astype(np.float32))


def test_the_batch_loss_weighs_each_digit(train: ModuleType) -> None:
    losses = torch.tensor([1.0, 2.0, 4.0])
    assert train.batch_loss(losses, None).item() == pytest.approx(7 / 3)
    weights = torch.tensor([1.0, 0.0, 0.5])
    assert train.batch_loss(losses, weights).item() == pytest.approx((1 + 0 + 2) / 3)


def trained_parameters(
    train: ModuleType, workdir: Path, weights: list[float] | None
) -> list[torch.Tensor]:
    """The parameters after one epoch on 40 random digits from a fresh model of seed 0,
    every digit weighted `weights[0]` (or no weights at all)."""
    model, optimizer, _ = train.load_state(workdir, seed=0)
    pixels = torch.rand(40, train.PIXELS, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(40) % train.CLASSES
    tensor = None if weights is None else torch.tensor(weights * 40)
    train.train_epoch(model, optimizer, pixels, labels, shuffle_seed=0, weights=tensor)
    return [p.detach().clone() for p in model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_weights_of_one_train_as_no_weights_and_weights_of_zero_not_at_all(
    train: ModuleType, tmp_path: Path
) -> None:
    model, _, _ = train.load_state(tmp_path, seed=0)
    initial = [p.detach().clone() for p in model.parameters()]
    unweighted = trained_parameters(train, tmp_path, None)
    assert not same(unweighted, initial)
    assert same(trained_parameters(train, tmp_path, [1.0]), unweighted)
    assert same(trained_parameters(train, tmp_path, [0.0]), initial)


def test_the_trainer_reports_held_out_accuracy_overall_and_per_group(
    make_dataset: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One real call of train.py, as the pipeline makes it, on a pool with weights."""
    held_out = tmp_path / "held-out.parquet"
    data = write_dataset(
        make_dataset,
        monkeypatch,
        tmp_path / "data.parquet",
        *("--limit", "300", "--flip", "0.1", "--held-out", str(held_out)),
    )
    pool = tmp_path / "pool"
    pool.mkdir()
    data.with_columns(sample_id=pl.col("id").cast(pl.String), weight=1.0).write_parquet(
        pool / "part-00000.parquet"
    )
    workdir = tmp_path / "work"
    scorer = tmp_path / "scorer.onnx"
    command = [sys.executable, str(DIGITS / "train.py"), "--pool", str(pool)]
    command += ["--workdir", str(workdir), "--scorer", str(scorer), "--eval", str(held_out)]
    subprocess.run(command, check=True, capture_output=True)
    metrics = read_trainer_metrics(workdir / "metrics.json")  # the pipeline's check
    groups = sorted(set(pl.read_parquet(held_out)["group"]))
    assert set(metrics) == {
        "train_accuracy",
        "train_loss",
        "epochs",
        "held_out_accuracy",
        *(f"held_out_accuracy.{g}" for g in groups),
    }
    assert 0.0 <= metrics["held_out_accuracy"] <= 1.0
    assert metrics["epochs"] == 1 and scorer.is_file()


def test_held_out_accuracy_per_group_is_accuracy_on_the_groups_rows(
    train: ModuleType, tmp_path: Path
) -> None:
    model, _, _ = train.load_state(tmp_path, seed=0)
    pixels = torch.rand(12, train.PIXELS, generator=torch.Generator().manual_seed(2))
    predicted = model.eval()(pixels).argmax(dim=-1)
    labels = predicted.clone()
    labels[:3] = (labels[:3] + 1) % train.CLASSES  # 3 wrong, all in group "a"
    groups = ["a"] * 6 + ["b"] * 6
    path = tmp_path / "held-out.parquet"
    pl.DataFrame(
        {"pixels": pixels.numpy().tolist(), "label": labels.numpy(), "group": groups}
    ).write_parquet(path)
    assert train.held_out_metrics(model, path) == pytest.approx(
        {"held_out_accuracy": 0.75, "held_out_accuracy.a": 0.5, "held_out_accuracy.b": 1.0}
    )


@pytest.mark.parametrize("name", sorted(FRACTIONS))
def test_the_shipped_grids_compare_three_policies_on_the_data_noise_sh_makes(name: str) -> None:
    grid = tomllib.loads((DIGITS / name).read_text())
    assert grid["data"]["path"] == f"{NOISE_DATA}/{name.removesuffix('.toml')}.parquet"
    assert f"--eval {NOISE_DATA}/held-out.parquet" in grid["config"]["trainer"]["command"]
    assert grid["seeds"] == [0, 1, 2, 3, 4]
    labels = [p.get("label", p["name"]) for p in grid["policies"]]
    assert labels == ["standard", "stm", "stm-guard"]
    assert grid["policies"][2]["noise_guard"] is True
    script = (DIGITS / "noise.sh").read_text().replace("$DATA", NOISE_DATA)
    make = f'make_dataset.py "{grid["data"]["path"]}" --flip {FRACTIONS[name]:g} $HELD_OUT'
    assert make in script
    assert f"--held-out {NOISE_DATA}/held-out.parquet --group-by noise" in script


@pytest.mark.parametrize("name", sorted(FRACTIONS))
def test_the_shipped_grids_load(name: str, tmp_path: Path) -> None:
    cells = load_experiment(DIGITS / name, tmp_path).cells
    assert len(cells) == 3 * 5
    guards = {cell.policy: cell.config.policy.noise_guard for cell in cells}
    assert guards == {"standard": False, "stm": False, "stm-guard": True}
