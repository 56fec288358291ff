"""Held-out evaluation of a checkpoint: greedy answers to the prompts, exact-match accuracy
per group and overall."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from torch import Tensor, nn

from models.charset import BOS, EOS, Vocabulary
from models.checkpoint import load_model
from pipeline.errors import EmptyDataset, MissingColumn

DECODE_BATCH_SIZE = 512

# The key of the accuracy over every group; underscored so no real group can collide.
OVERALL = "_overall"

# Training samples per group whose accuracy is measured after every epoch: whether the
# model still answers what it was trained on (retention), also after a policy dropped it.
SEEN_PER_GROUP = 200


def evaluate(
    workdir: Path,
    eval_table: pa.Table,
    vocab: Vocabulary,
    prompt_column: str,
    target_column: str,
    group_column: str = "group",
    max_answer_len: int | None = None,
) -> dict[str, float]:
    """Exact-match accuracy keyed by group (sorted, as strings), then OVERALL. An answer is
    what the model writes after the prompt up to EOS, or `max_answer_len` characters
    (default: the longest target plus two, room to overshoot by one and still be wrong)."""
    for name in (prompt_column, target_column, group_column):
        if name not in eval_table.column_names:
            raise MissingColumn(f"column {name}: not in the evaluation table")
    if eval_table.num_rows == 0:
        raise EmptyDataset("the evaluation table has no rows")
    targets = eval_table.column(target_column).to_pylist()
    if max_answer_len is None:
        max_answer_len = max(len(target) for target in targets) + 2
    model, _ = load_model(workdir)
    prompts = eval_table.column(prompt_column).to_pylist()
    answers = greedy_answers(model, vocab, prompts, max_answer_len)
    correct = np.array([answer == target for answer, target in zip(answers, targets, strict=True)])
    groups = [str(group) for group in eval_table.column(group_column).to_pylist()]
    return _accuracy_by_group(correct, groups)


def seen_sample(samples: Path, prompt_column: str, target_column: str) -> pa.Table:
    """The first SEEN_PER_GROUP training samples of each group by sample_id."""
    columns = ["sample_id", "group", prompt_column, target_column]
    table = pl.scan_parquet(samples).select(columns).sort("sample_id")
    return table.group_by("group", maintain_order=True).head(SEEN_PER_GROUP).collect().to_arrow()


def greedy_answers(
    model: nn.Module, vocab: Vocabulary, prompts: Sequence[str], max_answer_len: int
) -> list[str]:
    """Decode all prompts of one length together: same-length batches need no padding,
    which a GRU could not ignore (left padding would run through its state)."""
    encoded = [vocab.encode(prompt) for prompt in prompts]
    rows_by_length: dict[int, list[int]] = defaultdict(list)
    for row, ids in enumerate(encoded):
        rows_by_length[len(ids)].append(row)
    answers = [""] * len(prompts)
    with torch.inference_mode():
        for rows in rows_by_length.values():
            for start in range(0, len(rows), DECODE_BATCH_SIZE):
                batch_rows = rows[start : start + DECODE_BATCH_SIZE]
                prompt_tokens = torch.tensor([[BOS, *encoded[row]] for row in batch_rows])
                generated = _greedy_decode(model, prompt_tokens, max_answer_len)
                for row, ids in zip(batch_rows, generated.tolist(), strict=True):
                    answers[row] = vocab.decode(ids)
    return answers


def _greedy_decode(model: nn.Module, prompt_tokens: Tensor, max_answer_len: int) -> Tensor:
    """[batch, <= max_answer_len] argmax tokens; stops once every row has written EOS."""
    logits, state = model.extend(prompt_tokens, None)
    finished = torch.zeros(len(prompt_tokens), dtype=torch.bool)
    generated: list[Tensor] = []
    for _ in range(max_answer_len):
        next_token = logits[:, -1].argmax(dim=-1)
        generated.append(next_token)
        finished |= next_token == EOS
        if finished.all():
            break
        logits, state = model.extend(next_token.unsqueeze(1), state)
    if not generated:
        return torch.empty(len(prompt_tokens), 0, dtype=torch.int64)
    return torch.stack(generated, dim=1)


def _accuracy_by_group(correct: np.ndarray, groups: list[str]) -> dict[str, float]:
    per_group = (
        pl.DataFrame({"group": groups, "correct": correct})
        .group_by("group")
        .agg(pl.col("correct").mean())
        .sort("group")
    )
    accuracy = dict(zip(per_group["group"].to_list(), per_group["correct"].to_list(), strict=True))
    return {**accuracy, OVERALL: float(correct.mean())}
