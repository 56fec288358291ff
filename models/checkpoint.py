"""The trainer's state between epochs: one checkpoint file in its working directory, with
what is needed to rebuild the model without the run config."""

from __future__ import annotations

import dataclasses
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.network import build_model
from pipeline.config import ModelConfig
from pipeline.errors import StoreError
from pipeline.store import write_bytes_atomic

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class CheckpointMeta:
    vocab_size: int
    model_config: ModelConfig
    epochs_trained: int


@dataclass(frozen=True)
class Checkpoint:
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any]
    meta: CheckpointMeta


def checkpoint_path(workdir: Path) -> Path:
    return Path(workdir) / CHECKPOINT_FILE


def save_checkpoint(
    workdir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: CheckpointMeta
) -> Path:
    payload = {
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "vocab_size": meta.vocab_size,
        "model_config": dataclasses.asdict(meta.model_config),
        "epochs_trained": meta.epochs_trained,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path = checkpoint_path(workdir)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def read_checkpoint(workdir: Path) -> Checkpoint:
    path = checkpoint_path(workdir)
    if not path.exists():
        raise StoreError(f"{path}: no checkpoint, train at least one epoch first")
    try:
        payload = torch.load(path, weights_only=True)
        meta = CheckpointMeta(
            vocab_size=payload["vocab_size"],
            model_config=ModelConfig(**payload["model_config"]),
            epochs_trained=payload["epochs_trained"],
        )
    except (pickle.UnpicklingError, RuntimeError, KeyError, TypeError) as err:
        raise StoreError(f"{path}: not a readable checkpoint: {err}") from err
    return Checkpoint(payload["model_state"], payload["optimizer_state"], meta)


def load_model(workdir: Path) -> tuple[nn.Module, CheckpointMeta]:
    """The checkpoint's model, in eval mode, and its metadata."""
    checkpoint = read_checkpoint(workdir)
    model = build_model(checkpoint.meta.vocab_size, checkpoint.meta.model_config)
    model.load_state_dict(checkpoint.model_state)
    return model.eval(), checkpoint.meta
