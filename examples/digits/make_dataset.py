"""Write scikit-learn's bundled handwritten digits (1,797 8x8 images, no download) as a
Parquet dataset for `stm run`: `id`, `label`, `pixels` (64 values in [0, 1]) and `group`
("digit-<label>"), so the pool can be followed per digit.

    python examples/digits/make_dataset.py /tmp/digits.parquet [--limit N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits

PIXEL_MAX = 16.0  # each of the 8x8 values counts the dark pixels of a 4x4 block: 0..16


def digits_table(limit: int | None = None) -> pa.Table:
    digits = load_digits()
    images = (digits.data / PIXEL_MAX).astype(np.float32)[:limit]
    labels = digits.target.astype(np.int64)[:limit]
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), images.shape[1])
    return pa.table(
        {
            "id": pa.array(np.arange(len(labels), dtype=np.int64)),
            "label": pa.array(labels),
            "pixels": pixels.cast(pa.list_(pa.float32())),
            "group": pa.array([f"digit-{label}" for label in labels]),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="Parquet file to write.")
    parser.add_argument("--limit", type=int, help="Only the first N digits.")
    args = parser.parse_args()
    args.path.parent.mkdir(parents=True, exist_ok=True)
    table = digits_table(args.limit)
    pq.write_table(table, args.path)
    print(f"{args.path}: {table.num_rows} digits")


if __name__ == "__main__":
    main()
