from __future__ import annotations

import pytest

from models.charset import build_vocabulary, encode_samples
from models.evaluate import evaluate
from models.trainer import train_epoch
from pipeline.config import ModelConfig, TrainConfig
from pipeline.errors import EmptyDataset, MissingColumn
from tests.models.builders import make_samples

# Prompts of two lengths ("1+2=", "12+3=") so decoding runs in more than one batch.
PAIRS = [(1, 2), (3, 4), (5, 1), (2, 2), (7, 1), (4, 5), (12, 3), (30, 8)]
GROUPS = ["easy", "hard"] * 4


@pytest.fixture(scope="module")
def memorised(tmp_path_factory: pytest.TempPathFactory):
    samples = make_samples(PAIRS, GROUPS)
    vocab = build_vocabulary(samples, ["prompt", "target"])
    pool = encode_samples(samples, "prompt", "target", vocab)
    workdir = tmp_path_factory.mktemp("memorised")
    config = ModelConfig(embed_dim=16, hidden_dim=32)
    for epoch in range(30):
        train_epoch(pool, workdir, vocab.size, config, TrainConfig(batch_size=4, lr=1e-2), 0, epoch)
    return workdir, samples, vocab


def test_a_memorised_set_is_answered_exactly(memorised) -> None:
    workdir, samples, vocab = memorised
    assert evaluate(workdir, samples, vocab, "prompt", "target") == {
        "easy": 1.0,
        "hard": 1.0,
        "_overall": 1.0,
    }


def test_accuracy_is_per_group_sorted_then_all(memorised) -> None:
    workdir, samples, vocab = memorised
    keep = [True, False, False, False, True, True, False, False]
    targets = [
        t if k else "x" for t, k in zip(samples.column("target").to_pylist(), keep, strict=True)
    ]
    relabelled = samples.set_column(1, "target", [targets]).set_column(
        2, "group", [["b", "b", "a", "a", "b", "b", "a", "a"]]
    )
    accuracy = evaluate(workdir, relabelled, vocab, "prompt", "target")
    assert list(accuracy) == ["a", "b", "_overall"]
    assert accuracy == {"a": 0.0, "b": 0.75, "_overall": 0.375}


def test_answers_are_cut_at_max_answer_len(memorised) -> None:
    workdir, samples, vocab = memorised
    one_char = [i for i, (a, b) in enumerate(PAIRS) if a + b < 10]
    accuracy = evaluate(workdir, samples, vocab, "prompt", "target", max_answer_len=0)
    assert accuracy["_overall"] == 0.0
    accuracy = evaluate(workdir, samples, vocab, "prompt", "target", max_answer_len=1)
    assert accuracy["_overall"] == len(one_char) / len(PAIRS)


def test_a_missing_group_column_is_named(memorised) -> None:
    workdir, samples, vocab = memorised
    with pytest.raises(MissingColumn, match="column split"):
        evaluate(workdir, samples, vocab, "prompt", "target", group_column="split")


def test_an_empty_evaluation_table_is_refused(memorised) -> None:
    workdir, samples, vocab = memorised
    with pytest.raises(EmptyDataset):
        evaluate(workdir, samples.slice(0, 0), vocab, "prompt", "target")
