"""A run's data, prepared before any orchestration starts: ingest (or generate the
built-in benchmark), fingerprint, and encode for the built-in model. Plain Python, so a
bad dataset fails in a second with its one-line error instead of after Prefect starts."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa

from models.charset import build_vocabulary, encode_samples
from pipeline.arithmetic import generate_arithmetic
from pipeline.config import RunConfig
from pipeline.ingest import dataset_fingerprint, load_samples
from pipeline.runs import RunInputs


def prepare_inputs(config: RunConfig) -> RunInputs:
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
