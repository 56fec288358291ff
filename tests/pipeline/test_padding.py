from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.padding import pad_lists


def test_pads_each_row_to_the_longest() -> None:
    padded = pad_lists(pa.array([[1, 2], [3], [4, 5, 6]]), 0)
    np.testing.assert_array_equal(padded, [[1, 2, 0], [3, 0, 0], [4, 5, 6]])
    assert padded.dtype == np.int64


def test_slices_and_chunks_read_their_own_rows() -> None:
    lists = pa.array([[9.0], [1.0, 2.0], [3.0], []], type=pa.list_(pa.float32()))
    chunked = pa.chunked_array([lists.slice(0, 1), lists.slice(1)])
    np.testing.assert_array_equal(pad_lists(lists.slice(1, 2), -1.0), [[1, 2], [3, -1]])
    np.testing.assert_array_equal(pad_lists(chunked, 0.0), [[9, 0], [1, 2], [3, 0], [0, 0]])
    assert pad_lists(chunked, 0.0).dtype == np.float32


def test_no_rows_give_an_empty_batch() -> None:
    assert pad_lists(pa.array([], type=pa.list_(pa.int64())), 0).shape == (0, 0)
