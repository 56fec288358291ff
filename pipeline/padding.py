"""Arrow list columns to padded numpy batches: each batch padded only to its own longest
row, read straight from the list offsets and values instead of row by row in Python."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def pad_lists(list_array: pa.ListArray | pa.ChunkedArray, pad_value: float) -> np.ndarray:
    """A [rows, longest] array of the lists' values, right-padded with `pad_value`.

    Right padding is safe for our causal models: a position never sees the padding after it.
    """
    if isinstance(list_array, pa.ChunkedArray):
        list_array = list_array.combine_chunks()
    if list_array.null_count:
        raise ValueError(f"pad_lists: {list_array.null_count} null list(s), lists expected")
    # `offsets` honours a slice of the array, `values` does not: offsets index into values.
    offsets = list_array.offsets.to_numpy()
    lengths = np.diff(offsets)
    values = list_array.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    padded = np.full((len(lengths), lengths.max(initial=0)), pad_value, dtype=values.dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    columns = np.arange(len(values)) - np.repeat(offsets[:-1] - offsets[0], lengths)
    padded[rows, columns] = values
    return padded
