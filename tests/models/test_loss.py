from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.loss import ScorerModule, per_sample_loss
from models.network import build_model
from tests.models.builders import ARCHITECTURES, tiny_config


def _reference_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Sample by sample, position by position, with F.cross_entropy: nothing shared with
    the vectorised implementation but the definition."""
    losses = []
    for b in range(tokens.shape[0]):
        total, count = 0.0, 0.0
        for t in range(tokens.shape[1] - 1):
            if mask[b, t + 1] > 0:
                total += F.cross_entropy(logits[b, t : t + 1], tokens[b, t + 1 : t + 2]).item()
                count += 1
        losses.append(total / max(count, 1.0))
    return losses


def test_per_sample_loss_matches_a_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 7, (4, 6), generator=generator)
    logits = torch.randn(4, 5, 7, generator=generator)
    mask = torch.tensor(
        [
            [0, 0, 1, 1, 1, 1],
            [0, 1, 0, 1, 0, 1],
            [0, 0, 0, 0, 0, 1],
            [1, 0, 0, 0, 0, 0],  # only position 0 is marked, and it is never predicted
        ],
        dtype=torch.float32,
    )
    expected = torch.tensor(_reference_loss(logits, tokens, mask))
    torch.testing.assert_close(per_sample_loss(logits, tokens, mask), expected)
    assert per_sample_loss(logits, tokens, mask)[3] == 0.0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_right_padding_does_not_change_a_sample_loss(arch: str) -> None:
    torch.manual_seed(0)
    scorer = ScorerModule(build_model(9, tiny_config(arch))).eval()
    tokens = torch.tensor([[1, 5, 4, 6, 7, 2]])
    mask = torch.tensor([[0, 0, 0, 0, 1, 1]], dtype=torch.float32)
    padded_tokens = torch.cat([tokens, torch.zeros(1, 4, dtype=torch.int64)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 4)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(scorer(tokens, mask), scorer(padded_tokens, padded_mask))
