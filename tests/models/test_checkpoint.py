from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import CheckpointMeta, checkpoint_path, load_model, save_checkpoint
from models.network import build_model
from pipeline.errors import StoreError
from tests.models.builders import tiny_config


def test_a_saved_model_loads_with_its_metadata(tmp_path: Path) -> None:
    model = build_model(12, tiny_config("transformer"))
    meta = CheckpointMeta(vocab_size=12, model_config=tiny_config("transformer"), epochs_trained=3)
    save_checkpoint(tmp_path, model, torch.optim.Adam(model.parameters()), meta)
    loaded, loaded_meta = load_model(tmp_path)
    assert loaded_meta == meta
    assert not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_an_unreadable_checkpoint_names_the_file(tmp_path: Path) -> None:
    checkpoint_path(tmp_path).write_bytes(b"not a checkpoint")
    with pytest.raises(StoreError, match="checkpoint.pt: not a readable checkpoint"):
        load_model(tmp_path)
