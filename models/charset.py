"""The character vocabulary and the encoding of prompt/target samples into the token and
loss-mask columns that the trainer and the ONNX scorer read."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import DatasetError, MissingColumn

PAD, BOS, EOS, UNK = 0, 1, 2, 3
FIRST_CHAR_ID = 4
# Decoding UNK to the replacement character means a prediction of an unknown character
# can never exact-match a target.
UNK_CHAR = "\ufffd"
ENCODED_COLUMNS = ("tokens", "loss_mask", "n_tokens")


@dataclass(frozen=True)
class Vocabulary:
    """Sorted unique characters; character `chars[i]` has id `FIRST_CHAR_ID + i`.

    Sorting makes the ids a function of the character set alone, so the same data gives the
    same vocabulary (and the same scorer) on every run.
    """

    chars: tuple[str, ...]
    _id_of_codepoint: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if any(len(c) != 1 for c in self.chars) or list(self.chars) != sorted(set(self.chars)):
            raise ValueError("Vocabulary.chars must be sorted, unique, single characters")
        codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)
        id_of_codepoint = np.full(codepoints.max(initial=0) + 2, UNK, dtype=np.int64)
        id_of_codepoint[codepoints] = np.arange(len(codepoints)) + FIRST_CHAR_ID
        object.__setattr__(self, "_id_of_codepoint", id_of_codepoint)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Vocabulary:
        return cls(tuple(sorted(set(chain.from_iterable(texts)))))

    @property
    def size(self) -> int:
        return FIRST_CHAR_ID + len(self.chars)

    def encode_codepoints(self, codepoints: np.ndarray) -> np.ndarray:
        """Ids of unicode code points as int64, UNK where unknown: one gather from a table
        indexed by code point, so a million samples encode without a per-character dict
        lookup. The table's last entry is UNK and catches every code point past the known
        ones."""
        return self._id_of_codepoint[np.minimum(codepoints, len(self._id_of_codepoint) - 1)]

    def encode(self, text: str) -> list[int]:
        """Character ids only: BOS/EOS framing belongs to `encode_samples`."""
        return self.encode_codepoints(_text_codepoints(text)).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        """The text up to the first EOS; PAD and BOS are not text and are skipped."""
        out = []
        for token in ids:
            if token == EOS:
                break
            if token in (PAD, BOS):
                continue
            out.append(UNK_CHAR if token == UNK else self.chars[token - FIRST_CHAR_ID])
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps({"chars": list(self.chars)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls(tuple(json.loads(text)["chars"]))


def build_vocabulary(table: pa.Table, columns: Sequence[str]) -> Vocabulary:
    """The vocabulary of every character in the given string columns."""
    codepoints = [_column_codepoints(table, name)[0] for name in columns]
    unique = np.unique(np.concatenate(codepoints)) if codepoints else []
    return Vocabulary(tuple(chr(c) for c in unique))


def encode_samples(
    table: pa.Table, prompt_column: str, target_column: str, vocab: Vocabulary
) -> pa.Table:
    """Append `tokens` ([BOS] + prompt + target + [EOS]), `loss_mask` (1.0 on the target
    characters and the final EOS: the tokens whose prediction is scored) and `n_tokens`
    (the number of scored tokens, for compute accounting)."""
    present = [name for name in ENCODED_COLUMNS if name in table.column_names]
    if present:
        raise DatasetError(f"column {present[0]}: already present, refusing to overwrite it")
    prompt_points, prompt_lengths = _column_codepoints(table, prompt_column)
    target_points, target_lengths = _column_codepoints(table, target_column)
    lengths = prompt_lengths + target_lengths + 2
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    starts, ends = offsets[:-1], offsets[1:]

    tokens = np.empty(offsets[-1], dtype=np.int64)
    loss_mask = np.zeros(offsets[-1], dtype=np.float32)
    tokens[starts] = BOS
    tokens[ends - 1] = EOS
    loss_mask[ends - 1] = 1.0
    prompt_at = _scatter_positions(starts + 1, prompt_lengths)
    target_at = _scatter_positions(starts + 1 + prompt_lengths, target_lengths)
    tokens[prompt_at] = vocab.encode_codepoints(prompt_points)
    tokens[target_at] = vocab.encode_codepoints(target_points)
    loss_mask[target_at] = 1.0

    list_offsets = pa.array(offsets, type=pa.int32())
    return (
        table.append_column("tokens", pa.ListArray.from_arrays(list_offsets, pa.array(tokens)))
        .append_column("loss_mask", pa.ListArray.from_arrays(list_offsets, pa.array(loss_mask)))
        .append_column("n_tokens", pa.array(target_lengths + 1, type=pa.int64()))
    )


def _scatter_positions(row_starts: np.ndarray, row_lengths: np.ndarray) -> np.ndarray:
    """Flat destination index of each character of each row, rows laid end to end."""
    source_starts = np.cumsum(row_lengths) - row_lengths
    return np.arange(row_lengths.sum()) + np.repeat(row_starts - source_starts, row_lengths)


def _text_codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _column_codepoints(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """All code points of a string column laid end to end, and each row's length in
    characters: one decode of the Arrow data buffer instead of a Python loop over rows."""
    if name not in table.column_names:
        raise MissingColumn(f"column {name}: not in the table ({', '.join(table.column_names)})")
    column = table.column(name)
    if column.null_count:
        raise DatasetError(f"column {name}: {column.null_count} null value(s), text expected")
    try:
        strings = column.combine_chunks().cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise DatasetError(f"column {name}: expected strings, got {column.type}") from err
    char_lengths = pc.utf8_length(strings).to_numpy(zero_copy_only=False).astype(np.int64)
    _, offsets_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[
        strings.offset : strings.offset + len(strings) + 1
    ]
    if data_buffer is None:
        return np.empty(0, dtype=np.uint32), char_lengths
    text = memoryview(data_buffer)[offsets[0] : offsets[-1]].tobytes().decode("utf-8")
    return _text_codepoints(text), char_lengths
