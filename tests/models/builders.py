"""Small builders shared by the models tests: sample tables, encoded pools, tiny configs."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from models.charset import Vocabulary, build_vocabulary, encode_samples
from pipeline.config import ModelConfig

ARCHITECTURES = ("gru", "transformer")


def tiny_config(arch: str) -> ModelConfig:
    return ModelConfig(arch=arch, embed_dim=8, hidden_dim=16, layers=2, heads=2, max_len=32)


def make_samples(
    pairs: Sequence[tuple[int, int]] = ((1, 2), (3, 4), (5, 1), (2, 2)),
    groups: Sequence[str] | None = None,
) -> pa.Table:
    """`a+b=` -> `a+b` arithmetic samples; groups alternate easy/hard unless given."""
    return pa.table(
        {
            "prompt": [f"{a}+{b}=" for a, b in pairs],
            "target": [str(a + b) for a, b in pairs],
            "group": list(groups)
            if groups is not None
            else ["easy" if i % 2 == 0 else "hard" for i in range(len(pairs))],
        }
    )


def make_pool(n: int = 40) -> tuple[pa.Table, Vocabulary]:
    """An encoded pool of `n` samples of varied lengths, and its vocabulary."""
    samples = make_samples([(i * 7 % 100, i * 13 % 1000) for i in range(n)])
    vocab = build_vocabulary(samples, ["prompt", "target"])
    return encode_samples(samples, "prompt", "target", vocab), vocab
