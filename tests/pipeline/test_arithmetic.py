from __future__ import annotations

import dataclasses
import random
import re

import numpy as np
import pyarrow as pa
import pytest

from pipeline.arithmetic import count_carries, generate_arithmetic
from pipeline.config import ArithmeticConfig
from pipeline.errors import ConfigError

COLUMNS = ["sample_id", "group", "prompt", "target", "a", "b"]


def make_config(**overrides: object) -> ArithmeticConfig:
    """A small benchmark; tests override only what they are about."""
    small = {"n_easy": 300, "n_hard": 150, "eval_easy": 20, "eval_hard": 100}
    return dataclasses.replace(ArithmeticConfig(), **{**small, **overrides})


def rows_of(table: pa.Table, group: str) -> list[dict[str, object]]:
    return [row for row in table.to_pylist() if row["group"] == group]


def problems(rows: list[dict[str, object]]) -> set[tuple[int, int]]:
    """Problems up to commutation: `a+b` and `b+a` are the same problem."""
    return {(min(row["a"], row["b"]), max(row["a"], row["b"])) for row in rows}


def reference_carries(a: int, b: int) -> int:
    """Schoolbook column addition on the decimal strings, independent of the numpy version."""
    width = max(len(str(a)), len(str(b)))
    carry = carries = 0
    for x, y in zip(reversed(str(a).zfill(width)), reversed(str(b).zfill(width)), strict=True):
        carry = int(int(x) + int(y) + carry >= 10)
        carries += carry
    return carries


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_easy": 0, "eval_easy": 0},
        {"n_hard": 1, "eval_hard": 0},
        {"eval_easy": 99, "n_easy": 7},
    ],
)
def test_sizes_groups_and_ids(overrides: dict[str, int]) -> None:
    config = make_config(**overrides)
    train, evaluation = generate_arithmetic(config, seed=0)
    assert train.column_names == COLUMNS and evaluation.column_names == COLUMNS
    assert train.schema == evaluation.schema
    assert train.schema.field("a").type == pa.int64()
    expected = [
        (train, "easy", config.n_easy, "easy-"),
        (train, "hard", config.n_hard, "hard-"),
        (evaluation, "easy", config.eval_easy, "eval-easy-"),
        (evaluation, "hard", config.eval_hard, "eval-hard-"),
    ]
    for table, group, count, prefix in expected:
        ids = [row["sample_id"] for row in rows_of(table, group)]
        assert ids == [f"{prefix}{i:06d}" for i in range(count)]
    assert train.num_rows == config.n_easy + config.n_hard
    assert evaluation.num_rows == config.eval_easy + config.eval_hard


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eval_easy", [0, 1, 20, 91, 95, 99])
def test_easy_holds_out_exactly_eval_easy_problems(seed: int, eval_easy: int) -> None:
    config = make_config(eval_easy=eval_easy, n_easy=5000)
    train, evaluation = generate_arithmetic(config, seed)
    held_out = [(row["a"], row["b"]) for row in rows_of(evaluation, "easy")]
    trained = {(row["a"], row["b"]) for row in rows_of(train, "easy")}
    assert len(set(held_out)) == len(held_out) == eval_easy
    all_problems = {(a, b) for a in range(10) for b in range(10)}
    # 5000 draws from at most 100 problems reach every one of them.
    assert trained == all_problems - set(held_out)
    assert not problems(rows_of(train, "easy")) & problems(rows_of(evaluation, "easy"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_problem_in_both_train_and_eval_even_commuted(seed: int) -> None:
    train, evaluation = generate_arithmetic(
        make_config(n_hard=2000, eval_hard=2000, hard_max_digits=3), seed
    )
    assert not problems(train.to_pylist()) & problems(evaluation.to_pylist())


@pytest.mark.parametrize("min_digits, max_digits", [(2, 2), (2, 3), (3, 5), (18, 18)])
def test_hard_problems_carry_are_distinct_and_in_digit_range(
    min_digits: int, max_digits: int
) -> None:
    config = make_config(
        n_hard=400, eval_hard=400, hard_min_digits=min_digits, hard_max_digits=max_digits
    )
    train, evaluation = generate_arithmetic(config, seed=3)
    hard = rows_of(train, "hard") + rows_of(evaluation, "hard")
    assert len(problems(hard)) == len(hard) == 800
    for row in hard:
        assert reference_carries(row["a"], row["b"]) >= 1
        assert min_digits <= len(str(row["a"])) <= max_digits
        assert min_digits <= len(str(row["b"])) <= max_digits
    if max_digits > min_digits:
        assert {len(str(row["a"])) for row in hard} == set(range(min_digits, max_digits + 1))


@pytest.mark.parametrize("reverse_answer", [True, False])
def test_prompt_and_target_text(reverse_answer: bool) -> None:
    train, evaluation = generate_arithmetic(make_config(reverse_answer=reverse_answer), seed=0)
    for row in train.to_pylist() + evaluation.to_pylist():
        total = str(row["a"] + row["b"])
        assert row["prompt"] == f"{row['a']}+{row['b']}="
        assert row["target"] == (total[::-1] if reverse_answer else total)


@pytest.mark.parametrize("reverse_answer, target", [(True, "51"), (False, "15")])
def test_known_problem(reverse_answer: bool, target: str) -> None:
    config = make_config(eval_easy=0, n_easy=3000, reverse_answer=reverse_answer)
    train, _ = generate_arithmetic(config, seed=0)
    seven_plus_eight = {row["target"] for row in train.to_pylist() if row["prompt"] == "7+8="}
    assert seven_plus_eight == {target}


def test_same_seed_same_tables_other_seed_other_tables() -> None:
    config = make_config()
    first = generate_arithmetic(config, seed=7)
    assert generate_arithmetic(config, seed=7) == first
    other_train, other_eval = generate_arithmetic(config, seed=8)
    assert other_train["prompt"] != first[0]["prompt"]
    assert other_eval["prompt"] != first[1]["prompt"]


@pytest.mark.parametrize(
    "a, b, carries",
    [
        (0, 0, 0),
        (12, 39, 1),
        (123, 456, 0),
        (55, 45, 2),
        (95, 5, 2),
        (999, 1, 3),
        (1, 999, 3),
        (909, 191, 3),
    ],
)
def test_count_carries_known(a: int, b: int, carries: int) -> None:
    assert int(count_carries(a, b)) == carries


def test_count_carries_matches_schoolbook_addition() -> None:
    draw = random.Random(0)
    a = [draw.randrange(10 ** draw.randint(1, 12)) for _ in range(2000)]
    b = [draw.randrange(10 ** draw.randint(1, 12)) for _ in range(2000)]
    expected = [reference_carries(x, y) for x, y in zip(a, b, strict=True)]
    assert count_carries(np.array(a), np.array(b)).tolist() == expected


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"hard_min_digits": 2, "hard_max_digits": 2, "n_hard": 5000},
            "cannot draw 5100 distinct hard problems (n_hard + eval_hard) with 2 to 2 digits",
        ),
        ({"hard_max_digits": 19}, "hard_max_digits: at most 18"),
    ],
)
def test_impossible_config(overrides: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        generate_arithmetic(make_config(**overrides), seed=0)
