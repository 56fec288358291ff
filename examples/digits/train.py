"""An external trainer for `stm run`: one epoch of a small MLP classifying scikit-learn's
8x8 digits per call, then an ONNX scorer of the per-sample loss. It is plain PyTorch and
imports nothing from stm-curate: the pipeline only sees the files it writes
(docs/trainer-contract.md).

    python examples/digits/train.py --pool DIR --workdir DIR --scorer PATH --seed N \
        [--eval HELD_OUT.parquet]

Each flag defaults to the STM_* variable the pipeline sets (`--eval` to STM_EVAL, which
the pipeline does not set). State (model and optimizer) stays in the workdir between
calls, so every call trains one more epoch, whatever pool it is given. A `weight` column
in the pool weighs each digit's loss; `--eval` measures held-out accuracy after the epoch.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

PIXELS = 64
CLASSES = 10
HIDDEN = 64
BATCH_SIZE = 32
LEARNING_RATE = 1e-2
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"
WEIGHT = "weight"


class DigitClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(PIXELS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)
        )

    def forward(self, pixels: Tensor) -> Tensor:
        return self.layers(pixels)


class PerSampleLoss(nn.Module):
    """The scorer: cross-entropy per sample, `[batch]`. `-log_softmax().gather()` rather
    than `F.cross_entropy(reduction="none")`, which exports with a rank-0 output type."""

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: Tensor, label: Tensor) -> Tensor:
        log_probs = torch.log_softmax(self.classifier(pixels), dim=-1)
        return -log_probs.gather(1, label.unsqueeze(1)).squeeze(1)


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=env("STM_POOL"), help="Parquet shards.")
    parser.add_argument("--workdir", type=Path, default=env("STM_WORKDIR"), help="State dir.")
    parser.add_argument("--scorer", type=Path, default=env("STM_SCORER"), help="ONNX to write.")
    parser.add_argument("--seed", type=int, default=int(env("STM_SEED", "0")))
    parser.add_argument(
        "--eval",
        type=Path,
        default=env("STM_EVAL"),
        help="Held-out Parquet (pixels, label, optional group) to measure accuracy on.",
    )
    args = parser.parse_args()
    for name in ("pool", "workdir", "scorer"):
        if getattr(args, name) is None:
            parser.error(f"--{name} (or STM_{name.upper()}) is required")
    return args


def read_digits(path: Path, optional: tuple[str, ...] = ()) -> pa.Table:
    """`pixels`, `label` and those of the `optional` columns the file or directory has.
    pyarrow skips the pool's `_manifest.json` and `_SHA256SUMS` (leading underscore)."""
    names = ds.dataset(path, format="parquet").schema.names
    return pq.read_table(path, columns=["pixels", "label", *(c for c in optional if c in names)])


def pixels_and_labels(table: pa.Table, source: Path) -> tuple[Tensor, Tensor]:
    """Pixels [n, 64] float32 and labels [n] int64."""
    pixels = table.column("pixels").combine_chunks()
    if table.num_rows and set(pixels.value_lengths().to_pylist()) != {PIXELS}:
        raise SystemExit(f"{source}: every 'pixels' list must hold {PIXELS} values")
    values = pixels.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    labels = table.column("label").to_numpy().astype(np.int64)
    return torch.from_numpy(values.reshape(-1, PIXELS)), torch.from_numpy(labels)


def read_pool(pool: Path) -> tuple[Tensor, Tensor, Tensor | None]:
    """Pixels, labels and, when the pool has a `weight` column, each digit's weight
    [n] float32 in the training loss (None: every digit weighs 1)."""
    table = read_digits(pool, optional=(WEIGHT,))
    pixels, labels = pixels_and_labels(table, pool)
    if WEIGHT not in table.column_names:
        return pixels, labels, None
    weights = table.column(WEIGHT).to_numpy().astype(np.float32)
    return pixels, labels, torch.from_numpy(weights)


def load_state(workdir: Path, seed: int) -> tuple[DigitClassifier, torch.optim.Optimizer, int]:
    torch.manual_seed(seed)
    model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    path = workdir / STATE_FILE
    if not path.exists():
        return model, optimizer, 0
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return model, optimizer, int(state["epochs"])


def train_epoch(
    model: DigitClassifier,
    optimizer: torch.optim.Optimizer,
    pixels: Tensor,
    labels: Tensor,
    shuffle_seed: int,
    weights: Tensor | None = None,
) -> float:
    """One shuffled pass; the mean per-sample loss seen before each batch's update."""
    scorer = PerSampleLoss(model).train()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(shuffle_seed))
    loss_sum = 0.0
    for rows in order.split(BATCH_SIZE):
        losses = scorer(pixels[rows], labels[rows])
        optimizer.zero_grad(set_to_none=True)
        batch_loss(losses, None if weights is None else weights[rows]).backward()
        optimizer.step()
        loss_sum += losses.detach().sum().item()
    return loss_sum / max(len(labels), 1)


def batch_loss(losses: Tensor, weights: Tensor | None) -> Tensor:
    """The batch's training loss: the mean of the per-sample losses, each times its weight
    when the pool has weights (a digit weighted 0 sits the epoch out)."""
    return losses.mean() if weights is None else (weights * losses).mean()


def accuracy(model: DigitClassifier, pixels: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        predicted = model.eval()(pixels).argmax(dim=-1)
    return float((predicted == labels).float().mean()) if len(labels) else 0.0


def held_out_metrics(model: DigitClassifier, path: Path) -> dict[str, float]:
    """`held_out_accuracy` on the file's digits and, when it has a `group` column,
    `held_out_accuracy.<group>` per group (metrics.json must stay a flat object)."""
    table = read_digits(path, optional=("group",))
    pixels, labels = pixels_and_labels(table, path)
    metrics = {"held_out_accuracy": accuracy(model, pixels, labels)}
    if "group" in table.column_names:
        groups = np.asarray(table.column("group").to_pylist())
        for group in sorted(set(groups)):
            rows = torch.from_numpy(np.flatnonzero(groups == group))
            metrics[f"held_out_accuracy.{group}"] = accuracy(model, pixels[rows], labels[rows])
    return metrics


def export_scorer(model: DigitClassifier, path: Path) -> None:
    """The ONNX scorer, with a dynamic batch axis and without the exporter's doc strings
    and metadata (stack traces with absolute paths), so the same weights give the same
    bytes, and the same scorer hash in the manifest, on any machine."""
    example = (torch.zeros(2, PIXELS), torch.zeros(2, dtype=torch.int64))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            PerSampleLoss(model).eval(),
            example,
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["pixels", "label"],
            output_names=["loss"],
            dynamic_axes={"pixels": {0: "batch"}, "label": {0: "batch"}, "loss": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = proto.graph.doc_string = ""
    del proto.metadata_props[:]
    for node in proto.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    write_atomic(path, proto.SerializeToString(deterministic=True))


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    args.workdir.mkdir(parents=True, exist_ok=True)
    pixels, labels, weights = read_pool(args.pool)
    model, optimizer, epochs = load_state(args.workdir, args.seed)
    train_loss = train_epoch(
        model, optimizer, pixels, labels, shuffle_seed=args.seed + epochs, weights=weights
    )
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epochs": epochs + 1}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(args.workdir / STATE_FILE, buffer.getvalue())
    export_scorer(model, args.scorer)
    metrics = {
        "train_accuracy": accuracy(model, pixels, labels),
        "train_loss": train_loss,
        "epochs": epochs + 1,
        **(held_out_metrics(model, args.eval) if args.eval is not None else {}),
    }
    write_atomic(args.workdir / METRICS_FILE, json.dumps(metrics, indent=2).encode())
    print(f"epoch {epochs + 1}: {len(labels)} digits, {json.dumps(metrics)}")


if __name__ == "__main__":
    main()
