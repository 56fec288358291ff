"""The built-in trainer: one epoch over an encoded pool per call, resuming from and saving
to the checkpoint in its working directory, deterministic given its seeds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from models.charset import PAD
from models.checkpoint import CheckpointMeta, checkpoint_path, read_checkpoint, save_checkpoint
from models.loss import ScorerModule
from models.network import build_model
from pipeline.config import ModelConfig, TrainConfig
from pipeline.errors import ConfigError, DatasetError, MissingColumn
from pipeline.padding import pad_lists

GRADIENT_CLIP_NORM = 1.0


@dataclass(frozen=True)
class TrainStats:
    """What one epoch did. `tokens_trained` counts scored (target) tokens, the unit of the
    compute accounting; `mean_loss` is the mean per-sample loss seen during the epoch,
    before each batch's update."""

    samples: int
    tokens_trained: int
    mean_loss: float
    seconds: float


def train_epoch(
    pool: pa.Table,
    workdir: Path,
    vocab_size: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    seed: int,
    shuffle_seed: int,
) -> TrainStats:
    """Train one shuffled pass over `pool` (`tokens`, `loss_mask`, `n_tokens`, and an
    optional `weight` per sample from a soft policy), starting a model from `seed` when
    `workdir` has no checkpoint. An empty pool changes no weight but still counts as an
    epoch in the checkpoint."""
    started = time.perf_counter()
    torch.set_num_threads(train_config.threads)
    columns = _training_columns(pool, model_config)
    model, optimizer, epochs_trained = _resume_or_start(
        workdir, vocab_size, model_config, train_config, seed
    )
    scorer = ScorerModule(model).train()
    order = torch.randperm(pool.num_rows, generator=torch.Generator().manual_seed(shuffle_seed))
    # An empty tensor still splits into one (empty) batch: there is nothing to train on.
    row_batches = order.split(train_config.batch_size) if pool.num_rows else ()
    loss_sum = 0.0
    weights = _sample_weights(pool)
    for rows in row_batches:
        tokens, loss_mask = _padded_batch(columns, rows.numpy())
        losses = scorer(tokens, loss_mask)
        optimizer.zero_grad(set_to_none=True)
        # Every sample weighs the same whatever its length, as in the loss the scorer
        # reports, times its soft-pruning weight when it has one (InfoBatch's rescaling).
        objective = losses if weights is None else losses * weights[rows]
        objective.mean().backward()
        nn.utils.clip_grad_norm_(model.parameters(), GRADIENT_CLIP_NORM)
        optimizer.step()
        loss_sum += losses.detach().sum().item()
    meta = CheckpointMeta(vocab_size, model_config, epochs_trained + 1)
    save_checkpoint(workdir, model, optimizer, meta)
    return TrainStats(
        samples=pool.num_rows,
        tokens_trained=int(pc.sum(pool.column("n_tokens")).as_py() or 0),
        mean_loss=loss_sum / pool.num_rows if pool.num_rows else 0.0,
        seconds=time.perf_counter() - started,
    )


def _sample_weights(pool: pa.Table) -> Tensor | None:
    if "weight" not in pool.column_names:
        return None
    weights = pool.column("weight").to_numpy().astype(np.float32)
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise DatasetError("column weight: training weights must be finite and non-negative")
    return torch.from_numpy(weights)


def _training_columns(pool: pa.Table, model_config: ModelConfig) -> pa.Table:
    """The columns training reads, in one chunk each so every batch is a cheap `take`."""
    for name in ("tokens", "loss_mask", "n_tokens"):
        if name not in pool.column_names:
            raise MissingColumn(f"column {name}: not in the training pool, encode it first")
    columns = pool.select(["tokens", "loss_mask"]).combine_chunks()
    longest = pc.max(pc.list_value_length(columns.column("tokens"))).as_py() or 0
    # The model reads all tokens but the last; learned positions stop at max_len.
    if model_config.arch == "transformer" and longest - 1 > model_config.max_len:
        raise DatasetError(
            f"column tokens: a sample of {longest} tokens exceeds model.max_len="
            f"{model_config.max_len} + 1 of the transformer"
        )
    return columns


def _resume_or_start(
    workdir: Path,
    vocab_size: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    seed: int,
) -> tuple[nn.Module, torch.optim.Optimizer, int]:
    if not checkpoint_path(workdir).exists():
        # fork_rng: seeding the initialisation must not reseed the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(vocab_size, model_config)
        return model, torch.optim.Adam(model.parameters(), lr=train_config.lr), 0
    checkpoint = read_checkpoint(workdir)
    if (checkpoint.meta.vocab_size, checkpoint.meta.model_config) != (vocab_size, model_config):
        raise ConfigError(
            f"{checkpoint_path(workdir)}: trained with vocab size {checkpoint.meta.vocab_size} "
            f"and {checkpoint.meta.model_config}, asked to continue with vocab size "
            f"{vocab_size} and {model_config}"
        )
    model = build_model(vocab_size, model_config)
    model.load_state_dict(checkpoint.model_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    optimizer.load_state_dict(checkpoint.optimizer_state)
    return model, optimizer, checkpoint.meta.epochs_trained


def _padded_batch(columns: pa.Table, rows: np.ndarray) -> tuple[Tensor, Tensor]:
    batch = columns.take(rows)
    tokens = pad_lists(batch.column("tokens"), PAD).astype(np.int64, copy=False)
    loss_mask = pad_lists(batch.column("loss_mask"), 0.0).astype(np.float32, copy=False)
    return torch.from_numpy(tokens), torch.from_numpy(loss_mask)
