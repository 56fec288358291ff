from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch

from models.checkpoint import checkpoint_path, load_model, read_checkpoint
from models.trainer import TrainStats, train_epoch
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError, DatasetError, MissingColumn
from tests.models.builders import ARCHITECTURES, make_pool, tiny_config

TRAIN = TrainConfig(batch_size=8, lr=1e-2)


def _train(
    workdir: Path,
    arch: str = "gru",
    seed: int = 0,
    shuffle_seed: int = 0,
    pool=None,
    epochs: int = 1,
) -> TrainStats:
    if pool is None:
        pool, _ = make_pool()
    vocab_size = 20
    for _ in range(epochs):
        stats = train_epoch(pool, workdir, vocab_size, tiny_config(arch), TRAIN, seed, shuffle_seed)
    return stats


def _weights(workdir: Path) -> dict[str, torch.Tensor]:
    return load_model(workdir)[0].state_dict()


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_same_seeds_give_bit_identical_weights(tmp_path: Path, arch: str) -> None:
    _train(tmp_path / "a", arch, epochs=2)
    _train(tmp_path / "b", arch, epochs=2)
    assert _equal(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_another_shuffle_seed_gives_other_weights(tmp_path: Path) -> None:
    _train(tmp_path / "a", shuffle_seed=0)
    _train(tmp_path / "b", shuffle_seed=1)
    assert not _equal(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def test_training_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _train(tmp_path)
    torch.testing.assert_close(torch.rand(3), expected)


def test_stats_count_samples_and_scored_tokens(tmp_path: Path) -> None:
    pool, _ = make_pool(n=37)
    stats = _train(tmp_path, pool=pool)
    assert stats.samples == 37
    assert stats.tokens_trained == pc.sum(pool.column("n_tokens")).as_py()
    assert stats.mean_loss > 0 and stats.seconds > 0


def test_each_call_resumes_and_counts_an_epoch(tmp_path: Path) -> None:
    first = _train(tmp_path)
    second = _train(tmp_path)
    assert read_checkpoint(tmp_path).meta.epochs_trained == 2
    assert second.mean_loss < first.mean_loss
    assert not checkpoint_path(tmp_path).with_name("checkpoint.pt.tmp").exists()


def test_an_empty_pool_trains_nothing(tmp_path: Path) -> None:
    pool, _ = make_pool()
    _train(tmp_path, pool=pool)
    before = _weights(tmp_path)
    stats = _train(tmp_path, pool=pool.slice(0, 0))
    assert (stats.samples, stats.tokens_trained, stats.mean_loss) == (0, 0, 0.0)
    assert _equal(before, _weights(tmp_path))


def test_resuming_with_another_model_config_is_refused(tmp_path: Path) -> None:
    pool, _ = make_pool()
    _train(tmp_path, pool=pool)
    wider = dataclasses.replace(tiny_config("gru"), hidden_dim=32)
    with pytest.raises(ConfigError, match="checkpoint.pt: trained with vocab size 20"):
        train_epoch(pool, tmp_path, 20, wider, TRAIN, 0, 0)


def test_a_sample_longer_than_the_transformer_context_is_refused(tmp_path: Path) -> None:
    pool, _ = make_pool()
    short = dataclasses.replace(tiny_config("transformer"), max_len=4)
    with pytest.raises(DatasetError, match="a sample of 12 tokens exceeds model.max_len=4"):
        train_epoch(pool, tmp_path, 20, short, TRAIN, 0, 0)


def test_an_unencoded_pool_is_refused(tmp_path: Path) -> None:
    pool, _ = make_pool()
    unencoded = pool.drop_columns(["loss_mask"])
    with pytest.raises(MissingColumn, match="column loss_mask"):
        train_epoch(unencoded, tmp_path, 20, tiny_config("gru"), TRAIN, 0, 0)


def _weighted(pool, weight: float):
    import pyarrow as pa

    return pool.append_column("weight", pa.array([weight] * pool.num_rows, pa.float64()))


def test_a_soft_policys_weights_scale_each_samples_loss(tmp_path: Path) -> None:
    pool, _ = make_pool()
    _train(tmp_path / "plain", pool=pool)
    _train(tmp_path / "ones", pool=_weighted(pool, 1.0))
    _train(tmp_path / "double", pool=_weighted(pool, 2.0))
    assert _equal(_weights(tmp_path / "plain"), _weights(tmp_path / "ones"))
    assert not _equal(_weights(tmp_path / "plain"), _weights(tmp_path / "double"))


def test_weights_of_zero_change_no_parameter(tmp_path: Path) -> None:
    pool, _ = make_pool()
    _train(tmp_path / "start", pool=pool.slice(0, 0))  # an untouched model from the seed
    _train(tmp_path / "zero", pool=_weighted(pool, 0.0))
    assert _equal(_weights(tmp_path / "start"), _weights(tmp_path / "zero"))


def test_a_negative_weight_is_refused(tmp_path: Path) -> None:
    pool, _ = make_pool()
    with pytest.raises(DatasetError, match="column weight: training weights must be"):
        _train(tmp_path, pool=_weighted(pool, -1.0))
