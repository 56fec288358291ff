"""The per-sample loss, defined once as a module so that training and the exported ONNX
scorer compute the same function."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def per_sample_loss(logits: Tensor, tokens: Tensor, loss_mask: Tensor) -> Tensor:
    """Masked mean next-token NLL per sample, [batch].

    `logits` [batch, seq - 1, vocab] are the model's output on `tokens[:, :-1]`, so position
    t predicts `tokens[:, t + 1]`, scored where `loss_mask[:, t + 1]` is 1. NLL is taken as
    `-log_softmax.gather` because `F.cross_entropy` exports to ONNX with a rank-0 output. A
    sample with nothing to score gets 0 rather than a division by zero.
    """
    targets = tokens[:, 1:]
    mask = loss_mask[:, 1:]
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (nll * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class ScorerModule(nn.Module):
    """A model and its per-sample loss: `(tokens, loss_mask) -> loss [batch]`, the scorer
    contract. The last token is never fed, as nothing after it is scored."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, loss_mask: Tensor) -> Tensor:
        return per_sample_loss(self.model(tokens[:, :-1]), tokens, loss_mask)
