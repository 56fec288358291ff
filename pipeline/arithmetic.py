"""The built-in benchmark: character-level addition `a+b=` -> sum, with an easy group
(single digits, quickly mastered) and a hard group (multi-digit with a carry), and an
eval set that shares no problem with training."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import ArithmeticConfig
from pipeline.errors import ConfigError

EASY = "easy"
HARD = "hard"
# Operands and their sums must fit in int64.
MAX_DIGITS = 18
# Hard problems are drawn by rejection in batches at least this large; a batch this size
# that finds no new problem means the digit range has (practically) run out of them.
MIN_DRAW_BATCH = 65_536


def generate_arithmetic(config: ArithmeticConfig, seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, eval) tables `sample_id, group, prompt, target, a, b`, a pure function of
    `config` and `seed`.

    A problem and its commuted twin (`a+b`, `b+a`) count as one problem, so neither group
    leaks an eval problem into training through commutation.
    """
    if config.hard_max_digits > MAX_DIGITS:
        raise ConfigError(
            f"config key data.arithmetic.hard_max_digits: at most {MAX_DIGITS} (operands are int64)"
        )
    rng = np.random.default_rng(seed)
    eval_easy_a, eval_easy_b, pool_a, pool_b = _split_easy_problems(config.eval_easy, rng)
    picks = rng.integers(0, len(pool_a), config.n_easy)
    hard_a, hard_b = _draw_hard_problems(config, config.n_hard + config.eval_hard, rng)
    n_hard = config.n_hard
    reverse = config.reverse_answer
    train = pa.concat_tables(
        [
            _problems_table(pool_a[picks], pool_b[picks], EASY, "easy-", reverse),
            _problems_table(hard_a[:n_hard], hard_b[:n_hard], HARD, "hard-", reverse),
        ]
    )
    evaluation = pa.concat_tables(
        [
            _problems_table(eval_easy_a, eval_easy_b, EASY, "eval-easy-", reverse),
            _problems_table(hard_a[n_hard:], hard_b[n_hard:], HARD, "eval-hard-", reverse),
        ]
    )
    return train, evaluation


def count_carries(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """Carries in the column addition of non-negative `a + b`, elementwise (a 0-d array
    for two ints): the number of columns whose digits plus incoming carry reach 10."""
    a = np.array(a, dtype=np.int64)
    b = np.array(b, dtype=np.int64)
    carries = np.zeros(np.broadcast(a, b).shape, dtype=np.int64)
    carry = np.zeros_like(carries)
    # Once both operands are exhausted, a pending carry only writes the leading digit.
    while np.any((a > 0) | (b > 0)):
        carry = (a % 10 + b % 10 + carry >= 10).astype(np.int64)
        carries += carry
        a, b = a // 10, b // 10
    return carries


def _split_easy_problems(
    eval_count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(eval a, eval b, train-pool a, train-pool b) over the 100 single-digit problems.

    Held out by commutation class: a pair `a+b` with `b+a` (a != b) or a double `a+a`.
    Pairs make up the count, one double makes it odd (more doubles only when the 45 pairs
    run out), so exactly `eval_count` problems are held out and 100 - eval_count remain.
    """
    digits = np.arange(10)
    a, b = np.repeat(digits, 10), np.tile(digits, 10)
    pair_lows, pair_highs = a[a < b], b[a < b]
    n_pairs = min(eval_count // 2, len(pair_lows))
    n_doubles = eval_count - 2 * n_pairs
    pairs = rng.choice(len(pair_lows), n_pairs, replace=False)
    doubles = rng.choice(digits, n_doubles, replace=False)
    held_out = np.zeros((10, 10), dtype=bool)
    held_out[pair_lows[pairs], pair_highs[pairs]] = True
    held_out[pair_highs[pairs], pair_lows[pairs]] = True
    held_out[doubles, doubles] = True
    is_eval = held_out[a, b]
    return a[is_eval], b[is_eval], a[~is_eval], b[~is_eval]


def _draw_hard_problems(
    config: ArithmeticConfig, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct problems with at least one carry, in draw order, no two of them
    commuted twins, so any split of the list into train and eval is leak-free."""
    a = np.empty(0, dtype=np.int64)
    b = np.empty(0, dtype=np.int64)
    while len(a) < count:
        batch = max(MIN_DRAW_BATCH, 4 * (count - len(a)))
        new_a, new_b = _draw_operands(config, batch, rng), _draw_operands(config, batch, rng)
        has_carry = count_carries(new_a, new_b) > 0
        found = len(a)
        a, b = _first_of_each_problem(
            np.concatenate([a, new_a[has_carry]]), np.concatenate([b, new_b[has_carry]])
        )
        if len(a) == found:
            raise ConfigError(
                f"config key data.arithmetic: cannot draw {count} distinct hard problems "
                f"(n_hard + eval_hard) with {config.hard_min_digits} to "
                f"{config.hard_max_digits} digits and a carry; found only {found}"
            )
    return a[:count], b[:count]


def _draw_operands(config: ArithmeticConfig, count: int, rng: np.random.Generator) -> np.ndarray:
    """Operands whose digit count is uniform in the configured range, without leading zeros."""
    digits = rng.integers(config.hard_min_digits, config.hard_max_digits + 1, count)
    return rng.integers(10 ** (digits - 1), 10**digits)


def _first_of_each_problem(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first occurrence of each problem, `a+b` and `b+a` being one problem."""
    low, high = np.minimum(a, b), np.maximum(a, b)
    # A stable sort puts each problem's earliest draw first among its repeats; this is
    # several times faster than np.unique(axis=0) on the pairs.
    order = np.lexsort((high, low))
    low, high = low[order], high[order]
    starts_problem = np.ones(len(order), dtype=bool)
    starts_problem[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    first = np.sort(order[starts_problem])
    return a[first], b[first]


def _problems_table(
    a: np.ndarray, b: np.ndarray, group: str, id_prefix: str, reverse_answer: bool
) -> pa.Table:
    """Reversing the answer (least significant digit first) lets a left-to-right model
    emit each digit after the carry that decides it."""
    a_text = pc.cast(pa.array(a, pa.int64()), pa.string())
    b_text = pc.cast(pa.array(b, pa.int64()), pa.string())
    target = pc.cast(pa.array(a + b, pa.int64()), pa.string())
    if reverse_answer:
        target = pc.utf8_reverse(target)
    index_text = pc.cast(pa.array(np.arange(len(a)), pa.int64()), pa.string())
    return pa.table(
        {
            "sample_id": pc.binary_join_element_wise(
                id_prefix, pc.utf8_lpad(index_text, width=6, padding="0"), ""
            ),
            "group": pa.repeat(pa.scalar(group, pa.string()), len(a)),
            "prompt": pc.binary_join_element_wise(a_text, "+", b_text, "=", ""),
            "target": target,
            "a": pa.array(a, pa.int64()),
            "b": pa.array(b, pa.int64()),
        }
    )
