from __future__ import annotations

import dataclasses

import pytest
import torch

from models.network import CharGRU, CharTransformer, build_model
from pipeline.errors import ConfigError
from tests.models.builders import ARCHITECTURES, tiny_config

VOCAB_SIZE = 11


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(VOCAB_SIZE, tiny_config(arch)).eval()


def _tokens(batch: int, seq: int) -> torch.Tensor:
    return torch.randint(0, VOCAB_SIZE, (batch, seq), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("arch", "kind"), [("gru", CharGRU), ("transformer", CharTransformer)])
def test_build_model_picks_the_architecture(arch: str, kind: type) -> None:
    model = _model(arch)
    assert isinstance(model, kind)
    assert model(_tokens(3, 7)).shape == (3, 7, VOCAB_SIZE)


def test_unknown_architecture_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.arch: 'lstm'"):
        build_model(VOCAB_SIZE, dataclasses.replace(tiny_config("gru"), arch="lstm"))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_position_never_sees_later_tokens(arch: str) -> None:
    model, tokens = _model(arch), _tokens(2, 9)
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB_SIZE
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :5], model(changed)[:, :5])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_extending_token_by_token_matches_one_forward_pass(arch: str) -> None:
    model, tokens = _model(arch), _tokens(2, 8)
    with torch.no_grad():
        logits, state = model.extend(tokens[:, :3], None)
        steps = [logits]
        for t in range(3, 8):
            logits, state = model.extend(tokens[:, t : t + 1], state)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), model(tokens), atol=1e-5, rtol=1e-5)
