"""Can the built-in model learn the built-in benchmark? Held-out accuracy of plain
training (every sample, every epoch) for a few data/model settings over seeds: the
evidence behind the defaults of `ArithmeticConfig` and `ModelConfig`.

    .venv/bin/python bench/learnability.py [--epochs 30] [--seeds 0,1] [--out FILE]

Not part of the test suite (a few minutes on 2 cores).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import click
import pyarrow as pa
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.charset import build_vocabulary, encode_samples  # noqa: E402
from models.evaluate import evaluate  # noqa: E402
from models.trainer import train_epoch  # noqa: E402
from pipeline.arithmetic import generate_arithmetic  # noqa: E402
from pipeline.config import ArithmeticConfig, ModelConfig, TrainConfig  # noqa: E402

SETTINGS = {
    "published mix: 800 easy / 200 hard, 2-3 digits, GRU": (
        ArithmeticConfig(n_easy=800, n_hard=200, hard_max_digits=3),
        ModelConfig(),
    ),
    "500 easy / 1500 hard, 2-3 digits, GRU": (ArithmeticConfig(hard_max_digits=3), ModelConfig()),
    "default: 500 easy / 1500 hard, 2 digits, GRU": (ArithmeticConfig(), ModelConfig()),
    "500 easy / 1500 hard, 2 digits, transformer 64x2": (
        ArithmeticConfig(),
        ModelConfig(arch="transformer", hidden_dim=64, layers=2),
    ),
}


def held_out_curve(
    data: ArithmeticConfig, model: ModelConfig, seed: int, epochs: int, every: int
) -> tuple[list[dict[str, float]], float]:
    train, held_out = generate_arithmetic(data, seed)
    vocab = build_vocabulary(
        pa.concat_tables([train, held_out]).select(["prompt", "target"]), ["prompt", "target"]
    )
    pool = encode_samples(train, "prompt", "target", vocab)
    curve, seconds = [], 0.0
    with tempfile.TemporaryDirectory() as workdir:
        for epoch in range(1, epochs + 1):
            stats = train_epoch(
                pool,
                Path(workdir),
                vocab.size,
                model,
                TrainConfig(),
                seed=seed,
                shuffle_seed=seed * 10_000 + epoch,
            )
            seconds += stats.seconds
            if epoch % every == 0:
                curve.append(evaluate(Path(workdir), held_out, vocab, "prompt", "target"))
    return curve, seconds / epochs


@click.command()
@click.option("--epochs", default=30, show_default=True)
@click.option("--every", default=10, show_default=True)
@click.option("--seeds", default="0,1", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(__file__).parent / "results" / "learnability.json",
)
def main(epochs: int, every: int, seeds: str, out: Path) -> None:
    seed_list = [int(s) for s in seeds.split(",")]
    checkpoints = list(range(every, epochs + 1, every))
    table = Table(title=f"held-out accuracy easy / hard, mean (min-max) over seeds {seeds}")
    table.add_column("setting")
    for epoch in checkpoints:
        table.add_column(f"epoch {epoch}", justify="right")
    table.add_column("s/epoch", justify="right")
    results = {}
    for name, (data, model) in SETTINGS.items():
        runs = [held_out_curve(data, model, seed, epochs, every) for seed in seed_list]
        cells = []
        for i in range(len(checkpoints)):
            parts = []
            for group in ("easy", "hard"):
                values = [curve[i][group] for curve, _ in runs]
                parts.append(f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})")
            cells.append(" / ".join(parts))
        speed = statistics.mean(s for _, s in runs)
        table.add_row(name, *cells, f"{speed:.2f}")
        results[name] = {
            "seeds": seed_list,
            "epochs": checkpoints,
            "sec_per_epoch": speed,
            "curves": [curve for curve, _ in runs],
            "data": data.__dict__,
            "model": replace(model).__dict__,
        }
    Console(width=160).print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
