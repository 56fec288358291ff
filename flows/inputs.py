"""A run's data, prepared before any orchestration starts: ingest (or generate the
built-in benchmark), fingerprint, and encode for the built-in model (an external trainer
gets the dataset as it is). Plain Python, so a bad dataset fails in a second with its
one-line error instead of after Prefect starts."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa

from models.charset import build_vocabulary, encode_samples
from pipeline.arithmetic import generate_arithmetic
from pipeline.config import RunConfig
from pipeline.ingest import dataset_fingerprint, load_samples
from pipeline.runs import RunInputs


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
