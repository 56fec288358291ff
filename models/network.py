"""The built-in character-level models, a GRU and a tiny causal transformer, both mapping
tokens [batch, seq] to next-token logits [batch, seq, vocab] and exportable to ONNX with
dynamic batch and sequence axes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError


class CharGRU(nn.Module):
    """Embedding -> GRU -> linear, the model of the method's experiments."""

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, config.embed_dim)
        self.gru = nn.GRU(config.embed_dim, config.hidden_dim, config.layers, batch_first=True)
        self.head = nn.Linear(config.hidden_dim, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.extend(tokens, None)[0]

    def extend(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Logits for `tokens` continuing the sequence that `state` summarises (None: a new
        one), and the new state: lets greedy decoding feed one token at a time. The GRU's
        state is its hidden state."""
        hidden_states, last_hidden = self.gru(self.embed(tokens), state)
        return self.head(hidden_states), last_hidden


class _CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.hidden_dim, 3 * config.hidden_dim)
        self.proj = nn.Linear(config.hidden_dim, config.hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (
            part.unflatten(-1, (self.heads, -1)).transpose(1, 2)
            for part in self.qkv(x).chunk(3, dim=-1)
        )
        # is_causal builds the mask from the runtime sequence length, in torch and in the
        # exported graph alike, so no fixed-size mask buffer pins the ONNX sequence axis.
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(attended.transpose(1, 2).flatten(2))


class _Block(nn.Module):
    """A pre-LN transformer block: attention and MLP each on a normalised residual."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = config.hidden_dim
        self.attn_norm = nn.LayerNorm(width)
        self.attn = _CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class CharTransformer(nn.Module):
    """A tiny causal pre-LN transformer; `hidden_dim` is its width (`embed_dim` is the
    GRU's), and learned positions limit its input to `max_len` tokens."""

    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        self.max_len = config.max_len
        self.embed = nn.Embedding(vocab_size, config.hidden_dim)
        self.position = nn.Embedding(config.max_len, config.hidden_dim)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.head = nn.Linear(config.hidden_dim, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.position(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def extend(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        """As `CharGRU.extend`; with no cache the state is the context so far, re-read at
        every step and cropped to the last `max_len` tokens the positions can address."""
        context = tokens if state is None else torch.cat([state, tokens], dim=1)
        logits = self(context[:, -self.max_len :])
        return logits[:, -tokens.shape[1] :], context


_ARCHITECTURES: dict[str, type[nn.Module]] = {"gru": CharGRU, "transformer": CharTransformer}


def build_model(vocab_size: int, config: ModelConfig) -> nn.Module:
    try:
        architecture = _ARCHITECTURES[config.arch]
    except KeyError as err:
        known = ", ".join(sorted(_ARCHITECTURES))
        raise ConfigError(f"config key model.arch: {config.arch!r} is not one of {known}") from err
    return architecture(vocab_size, config)
