"""Write scikit-learn's bundled handwritten digits (1,797 8x8 images, no download) as a
Parquet dataset for `stm run`: `id`, `label`, `pixels` (64 values in [0, 1]) and `group`
("digit-<label>"), so the pool can be followed per digit. For a label-noise experiment it
can hold out a clean, stratified split and flip a known fraction of the training labels.

    python examples/digits/make_dataset.py /tmp/digits.parquet [--limit N]
    python examples/digits/make_dataset.py /tmp/noise-10.parquet --flip 0.1 --flip-seed 0 \
        --held-out /tmp/held-out.parquet --group-by noise
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits

PIXEL_MAX = 16.0  # each of the 8x8 values counts the dark pixels of a 4x4 block: 0..16
CLASSES = 10
# The held-out split: this fraction of each digit, drawn with a fixed seed, so that every
# noise level and flip seed trains on the same images and is measured on the same ones.
HELD_OUT_FRACTION = 0.2
HELD_OUT_SEED = 0


def held_out_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for round(fraction * n) rows of each digit, drawn at random with `seed`."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for digit in range(CLASSES):
        rows = np.flatnonzero(labels == digit)
        mask[rng.permutation(rows)[: round(fraction * len(rows))]] = True
    return mask


def flip_labels(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Exactly round(fraction * n) labels, drawn at random with `seed`, each replaced by one
    of the 9 other digits drawn uniformly; returns the labels and which ones were flipped."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(labels), size=round(fraction * len(labels)), replace=False)
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[rows] = True
    noisy = labels.copy()
    noisy[rows] = (labels[rows] + rng.integers(1, CLASSES, size=len(rows))) % CLASSES
    return noisy, flipped


def digits_table(
    ids: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    groups: list[str] | None,
    true_labels: np.ndarray | None = None,
) -> pa.Table:
    """The dataset's columns; `true_label` and `flipped` only when labels were flipped."""
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), images.shape[1])
    columns = {
        "id": pa.array(ids),
        "label": pa.array(labels),
        "pixels": pixels.cast(pa.list_(pa.float32())),
    }
    if groups is not None:
        columns["group"] = pa.array(groups)
    if true_labels is not None:
        columns["true_label"] = pa.array(true_labels)
        columns["flipped"] = pa.array(labels != true_labels)
    return pa.table(columns)


def digit_groups(labels: np.ndarray) -> list[str]:
    return [f"digit-{label}" for label in labels]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="Parquet file to write.")
    parser.add_argument("--limit", type=int, help="Only the first N digits.")
    parser.add_argument(
        "--flip",
        type=float,
        metavar="FRACTION",
        help="Flip this fraction of the training labels (0 included) and add the columns "
        "`true_label` and `flipped` [default: no flipping, no such columns].",
    )
    parser.add_argument("--flip-seed", type=int, default=0, help="Draws the flipped labels.")
    parser.add_argument(
        "--held-out",
        type=Path,
        metavar="PATH",
        help=f"Write {HELD_OUT_FRACTION:.0%} of each digit (clean labels, fixed seed) to PATH "
        "and leave them out of the training file.",
    )
    parser.add_argument(
        "--group-by",
        choices=("digit", "noise"),
        default="digit",
        help="`group`: digit-<label>, or flipped / clean (implies --flip 0 if not given).",
    )
    args = parser.parse_args()
    if args.flip is None and args.group_by == "noise":
        args.flip = 0.0
    if args.flip is not None and not 0 <= args.flip <= 1:
        parser.error(f"--flip {args.flip}: must be a fraction in [0, 1]")
    return args


def training_table(
    ids: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    flip: float | None,
    flip_seed: int,
    group_by: str,
) -> pa.Table:
    if flip is None:
        return digits_table(ids, images, labels, digit_groups(labels))
    noisy, flipped = flip_labels(labels, flip, flip_seed)
    if group_by == "noise":
        groups = ["flipped" if f else "clean" for f in flipped]
    else:
        groups = digit_groups(noisy)
    return digits_table(ids, images, noisy, groups, true_labels=labels)


def main() -> None:
    args = parse_args()
    digits = load_digits()
    images = (digits.data / PIXEL_MAX).astype(np.float32)[: args.limit]
    labels = digits.target.astype(np.int64)[: args.limit]
    ids = np.arange(len(labels), dtype=np.int64)
    train = np.ones(len(labels), dtype=bool)
    if args.held_out is not None:
        train = ~held_out_mask(labels, HELD_OUT_FRACTION, HELD_OUT_SEED)
        # Held-out labels are never flipped, so they measure the true digits; a noise group
        # would be one group there, so they get digit groups only with --group-by digit.
        groups = digit_groups(labels[~train]) if args.group_by == "digit" else None
        held_out = digits_table(ids[~train], images[~train], labels[~train], groups)
        args.held_out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(held_out, args.held_out)
        print(f"{args.held_out}: {held_out.num_rows} held-out digits")
    table = training_table(
        ids[train], images[train], labels[train], args.flip, args.flip_seed, args.group_by
    )
    args.path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.path)
    flipped = table.column("flipped").to_numpy().sum() if args.flip is not None else None
    noise = f" ({flipped} labels flipped)" if flipped is not None else ""
    print(f"{args.path}: {table.num_rows} digits{noise}")


if __name__ == "__main__":
    main()
