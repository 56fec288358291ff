from __future__ import annotations

import time

import pyarrow as pa
import pytest

from models.charset import (
    BOS,
    EOS,
    PAD,
    UNK,
    UNK_CHAR,
    Vocabulary,
    build_vocabulary,
    encode_samples,
)
from pipeline.errors import DatasetError, MissingColumn
from tests.models.builders import make_samples


def test_vocabulary_sorts_characters_after_the_special_ids() -> None:
    vocab = Vocabulary.from_texts(["3+1=", "21"])
    assert vocab.chars == ("+", "1", "2", "3", "=")
    assert vocab.size == 9
    assert vocab.encode("1+3=") == [5, 4, 7, 8]


def test_vocabulary_json_round_trip() -> None:
    vocab = Vocabulary.from_texts(["héllo wörld", "✓"])
    assert Vocabulary.from_json(vocab.to_json()) == vocab


def test_decode_stops_at_eos_and_skips_pad_and_bos() -> None:
    vocab = Vocabulary.from_texts(["ab"])
    assert vocab.decode([BOS, 4, PAD, 5, EOS, 4]) == "ab"


def test_unknown_characters_encode_to_unk_and_never_decode_back() -> None:
    vocab = Vocabulary.from_texts(["ab"])
    ids = vocab.encode("azb\U0001f600")
    assert ids == [4, UNK, 5, UNK]
    assert vocab.decode(ids) == f"a{UNK_CHAR}b{UNK_CHAR}"


@pytest.mark.parametrize("chars", [("b", "a"), ("a", "a"), ("ab",)])
def test_vocabulary_rejects_unsorted_duplicate_or_multi_character_entries(chars) -> None:
    with pytest.raises(ValueError, match="sorted, unique, single characters"):
        Vocabulary(chars)


def test_encode_one_sample_exactly() -> None:
    vocab = Vocabulary.from_texts(["123+="])  # + 4, 1 5, 2 6, 3 7, = 8
    encoded = encode_samples(make_samples([(1, 2)]), "prompt", "target", vocab)
    row = encoded.select(["tokens", "loss_mask", "n_tokens"]).to_pylist()[0]
    assert row == {
        "tokens": [BOS, 5, 4, 6, 8, 7, EOS],
        "loss_mask": [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0],
        "n_tokens": 2,
    }
    assert encoded.schema.field("tokens").type == pa.list_(pa.int64())
    assert encoded.schema.field("loss_mask").type == pa.list_(pa.float32())
    assert encoded.schema.field("n_tokens").type == pa.int64()


def _reference_encoding(prompt: str, target: str, vocab: Vocabulary) -> dict:
    tokens = [BOS, *vocab.encode(prompt), *vocab.encode(target), EOS]
    scored = [0.0] * (1 + len(prompt)) + [1.0] * (len(target) + 1)
    return {"tokens": tokens, "loss_mask": scored, "n_tokens": len(target) + 1}


@pytest.mark.parametrize("layout", ["whole", "sliced", "chunked"])
def test_encode_samples_matches_per_row_encoding(layout: str) -> None:
    table = pa.table(
        {
            "prompt": ["héllo ", "", "x=", "ünï✓", "12+345="],
            "target": ["wörld", "empty prompt", "", "?", "543"],
        }
    )
    table = {
        "whole": table,
        "sliced": table.slice(1, 3),
        "chunked": pa.concat_tables([table.slice(0, 2), table.slice(2)]),
    }[layout]
    vocab = Vocabulary.from_texts(["hélowrd 12345+=ü"])  # leaves some characters unknown
    encoded = encode_samples(table, "prompt", "target", vocab)
    expected = [_reference_encoding(r["prompt"], r["target"], vocab) for r in table.to_pylist()]
    assert encoded.select(["tokens", "loss_mask", "n_tokens"]).to_pylist() == expected
    assert encoded.column_names == [*table.column_names, "tokens", "loss_mask", "n_tokens"]


def test_build_vocabulary_reads_every_given_column() -> None:
    table = pa.table({"prompt": ["ab", "c"], "target": ["é", ""], "other": ["z", "z"]})
    assert build_vocabulary(table, ["prompt", "target"]).chars == ("a", "b", "c", "é")


def test_encode_samples_handles_an_empty_table() -> None:
    table = make_samples([]).cast(
        pa.schema({"prompt": pa.string(), "target": pa.string(), "group": pa.string()})
    )
    encoded = encode_samples(table, "prompt", "target", Vocabulary.from_texts(["a"]))
    assert encoded.num_rows == 0 and "tokens" in encoded.column_names


def test_missing_column_is_named() -> None:
    with pytest.raises(MissingColumn, match="column answer"):
        encode_samples(make_samples(), "prompt", "answer", Vocabulary.from_texts(["1"]))


def test_null_text_is_rejected() -> None:
    table = pa.table({"prompt": ["1+1=", None], "target": ["2", "3"]})
    with pytest.raises(DatasetError, match="column prompt: 1 null"):
        encode_samples(table, "prompt", "target", Vocabulary.from_texts(["1"]))


def test_encoding_twice_is_refused_rather_than_duplicating_columns() -> None:
    vocab = Vocabulary.from_texts(["0123456789+="])
    encoded = encode_samples(make_samples(), "prompt", "target", vocab)
    with pytest.raises(DatasetError, match="column tokens: already present"):
        encode_samples(encoded, "prompt", "target", vocab)


def test_encoding_100k_rows_takes_under_two_seconds() -> None:
    table = make_samples([(i % 1000, i * 7 % 1000) for i in range(100_000)])
    started = time.perf_counter()
    vocab = build_vocabulary(table, ["prompt", "target"])
    encoded = encode_samples(table, "prompt", "target", vocab)
    assert time.perf_counter() - started < 2.0
    assert encoded.num_rows == 100_000
