"""A run's data, prepared before any orchestration starts: ingest (or generate the
built-in benchmark), fingerprint, and encode for the built-in model (an external trainer
gets the dataset as it is). Plain Python, so a bad dataset fails in a second with its
one-line error instead of after Prefect starts."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from models.charset import build_vocabulary, encode_samples
from pipeline.arithmetic import generate_arithmetic
from pipeline.config import RunConfig
from pipeline.errors import DatasetError
from pipeline.ingest import dataset_fingerprint, load_samples
from pipeline.runs import RunInputs


def _require_text(table: pa.Table, columns: list[str], source: str | None) -> None:
    """The built-in model reads prompt and target as characters."""
    for column in columns:
        kind = table.schema.field(column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            first = table.column("sample_id")[0].as_py()
            raise DatasetError(
                f"{source}: column '{column}': text expected for the built-in model, got "
                f"{kind} (first sample '{first}')"
            )


def _require_length(table: pa.Table, columns: list[str], source: str | None, max_len: int) -> None:
    """A sample longer than the model takes is an input error, not an hour of training
    on one row: name it, and the key that raises the limit."""
    lengths = pc.add(*(pc.utf8_length(table.column(c)) for c in columns))
    longest = pc.index(lengths, pc.max(lengths)).as_py()
    if longest >= 0 and lengths[longest].as_py() > max_len:
        raise DatasetError(
            f"{source}: sample '{table.column('sample_id')[longest].as_py()}' has "
            f"{lengths[longest].as_py()} characters of prompt and target, more than "
            f"model.max_len = {max_len}"
        )


def prepare_inputs(config: RunConfig) -> RunInputs:
    if config.trainer.command is not None:
        return _external_trainer_inputs(config)
    data = config.data
    columns = [data.prompt_column, data.target_column]
    if data.path is None:
        samples, eval_samples = generate_arithmetic(data.arithmetic, config.seed)
    else:
        samples = load_samples(data, columns)
        eval_samples = None
        if data.eval_path is not None:
            eval_samples = load_samples(replace(data, path=data.eval_path), columns)
    for table, source in ((samples, data.path), (eval_samples, data.eval_path)):
        if table is not None:
            _require_text(table, columns, source)
            _require_length(table, columns, source, config.model.max_len)
    if eval_samples is not None and eval_samples.num_rows == 0:
        eval_samples = None
    texts = [t.select(columns) for t in (samples, eval_samples) if t is not None]
    vocabulary = build_vocabulary(pa.concat_tables(texts), columns)
    return RunInputs(
        samples=encode_samples(samples, data.prompt_column, data.target_column, vocabulary),
        eval_samples=eval_samples,
        fingerprint=dataset_fingerprint(samples),
        vocabulary_json=vocabulary.to_json(),
    )


def _external_trainer_inputs(config: RunConfig) -> RunInputs:
    """An external trainer takes the dataset as it is: no column is required beyond the
    id contract, nothing is encoded, and it evaluates (if at all) by itself."""
    samples = load_samples(config.data, required_columns=())
    return RunInputs(
        samples=samples,
        eval_samples=None,
        fingerprint=dataset_fingerprint(samples),
        vocabulary_json=None,
    )
