"""The error hierarchy: every user-facing failure is a PipelineError whose message is one
line naming the file, column or sample at fault, so the CLI can print it without a traceback."""

from __future__ import annotations

import errno


class PipelineError(Exception):
    """Root of every error the CLI reports as one line and a non-zero exit."""


class ConfigError(PipelineError):
    """A config file, key or value is invalid. `key` is the dotted key at fault, when there
    is one, so a caller can say whether the file or an override set it."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class DatasetError(PipelineError):
    """The input dataset cannot be read or does not meet the sample contract."""


class MissingColumn(DatasetError):
    """A column named in the config is absent from the dataset."""


class DuplicateSampleId(DatasetError):
    """Two samples share one sample_id: ids must be unique, never silently merged."""


class NullSampleId(DatasetError):
    """A sample has no id."""


class EmptyDataset(DatasetError):
    """The dataset has no rows."""


class ScorerContractError(PipelineError):
    """An ONNX scorer does not meet the scorer contract for a dataset."""


class ManifestIntegrityError(PipelineError):
    """A manifest or pool file does not match its recorded hash, or would be overwritten."""


class StoreError(PipelineError):
    """The store root or a run in it is missing or malformed."""


class PrefectUnavailable(PipelineError):
    """The Prefect API the user pointed at does not answer."""


class DaskUnavailable(PipelineError):
    """The Dask scheduler the user pointed at does not answer."""


class ManifestNotFound(PipelineError):
    """No manifest (or more than one) matches the id, prefix or run given."""


class TrainerError(PipelineError):
    """An external trainer failed, timed out, wrote no scorer or unreadable metrics."""


# A full, read-only or forbidden store: the user's to fix, reported in one line, never
# retried and never shown as a traceback.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT})
