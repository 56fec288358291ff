"""Read a user's dataset (files, a glob, or a saved Hugging Face dataset) into one Arrow
table with a unique string `sample_id` and a `group` per sample, and fingerprint it.

Row numbers in error messages are 0-based data rows within the named file (a CSV header
is not a row), so a user can find the offending sample in the file they gave us.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pipeline.config import DataConfig
from pipeline.errors import (
    DatasetError,
    DuplicateSampleId,
    EmptyDataset,
    MissingColumn,
    NullSampleId,
)

SAMPLE_ID = "sample_id"
GROUP = "group"
DEFAULT_GROUP = "all"
SUPPORTED_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
CONTENT_ID_HEX_CHARS = 16
FINGERPRINT_BATCH_ROWS = 65_536
JSON_MIN_BLOCK_BYTES = 1 << 20
# Files a directory may hold beside its data that are worth naming when ignored.
NAMED_IGNORED_FILES = 3

log = logging.getLogger("stm.ingest")


@dataclass(frozen=True)
class _RowOrigins:
    """Which file each row of the concatenated table came from, so errors can name the
    file and the row within it instead of a position in a table the user never saw."""

    files: tuple[str, ...]
    starts: tuple[int, ...]

    def locate(self, row: int) -> tuple[str, int]:
        part = bisect.bisect_right(self.starts, row) - 1
        return self.files[part], row - self.starts[part]


def load_samples(data: DataConfig, required_columns: Sequence[str]) -> pa.Table:
    """The dataset at `data.path` as a table `sample_id, group, <original columns>`.

    `sample_id` is `data.id_column` cast to string, or a content hash of the row when no
    id column is configured; ids must be present and unique because every later stage
    joins on them. `group` is `data.group_column` cast to string, or "all".
    """
    if data.path is None:
        raise DatasetError("data.path is unset: the built-in arithmetic benchmark has no files")
    string_columns = [data.id_column] if data.id_column else []
    table, origins = _read_dataset(data.path, string_columns)
    if table.num_rows == 0:
        raise EmptyDataset(f"{data.path}: the dataset has no rows")
    _check_columns(data, table, required_columns)
    if data.id_column is None:
        sample_ids = _content_ids(table)
    else:
        sample_ids = _cast_to_string(table, data.id_column, data.path)
    _check_sample_ids(sample_ids, origins, data.id_column)
    _check_required_values(table, required_columns, sample_ids, origins)
    groups = _groups(table, data.group_column, data.path, sample_ids, origins)
    replaced = [
        name
        for name, output in ((data.id_column, SAMPLE_ID), (data.group_column, GROUP))
        if name == output
    ]
    original = table.drop_columns(replaced)
    log.info(
        "%s: %s samples from %d file(s), %d group(s)",
        data.path,
        f"{table.num_rows:,}",
        len(origins.files),
        len(pc.unique(groups)),
    )
    return original.add_column(0, SAMPLE_ID, sample_ids).add_column(1, GROUP, groups)


def dataset_fingerprint(table: pa.Table) -> str:
    """sha256 hex of the table's content, independent of row and column order.

    Rows are sorted by `sample_id` (assumed unique, as `load_samples` guarantees) and
    written as JSON lines under a header of the sorted column names. JSON text of Python
    values, unlike Arrow IPC bytes, does not change when a library changes its encoding,
    so a fingerprint recorded in a manifest still verifies after an upgrade.

    The bytes are those of `_reference_fingerprint`, Python's json a row at a time. When
    the ids are text and every column is text, integer, boolean, float or all-null, Polars
    builds them a slice of rows at a time instead: about twice as fast (`bench/ingest.py`).
    """
    schema = table.schema
    if _is_text(schema.field(SAMPLE_ID).type) and all(map(_has_fast_json, schema.types)):
        return _fast_fingerprint(table)
    return _reference_fingerprint(table)


def _reference_fingerprint(table: pa.Table) -> str:
    """The definition of `dataset_fingerprint`: every row through Python's json."""
    names = sorted(table.column_names)
    ordered = table.select(names).sort_by(SAMPLE_ID)
    digest = _fingerprint_digest(names)
    # Bounded batches: a sorted table is one chunk, and its rows as Python objects at once
    # took 9.6 GB for 10M rows of five short columns.
    for batch in ordered.to_batches(max_chunksize=FINGERPRINT_BATCH_ROWS):
        columns = [batch.column(name).to_pylist() for name in names]
        digest.update("".join(_json_line(list(row)) for row in zip(*columns, strict=True)).encode())
    return digest.hexdigest()


def _fast_fingerprint(table: pa.Table) -> str:
    """`_reference_fingerprint` by Polars. Polars orders text by its bytes as pyarrow does
    and, asked to, keeps ties in table order and puts nulls last as pyarrow's sort does.
    Only the order is sorted at once; rows are gathered a slice at a time, as they are
    encoded, so memory stays one copy of the table and a slice."""
    names = sorted(table.column_names)
    frame = pl.from_arrow(table.select(names))
    assert isinstance(frame, pl.DataFrame)
    by_id = pl.arg_sort_by(SAMPLE_ID, nulls_last=True, maintain_order=True)
    order = frame.select(by_id).to_series()
    digest = _fingerprint_digest(names)
    for start in range(0, frame.height, FINGERPRINT_BATCH_ROWS):
        rows = frame[order.slice(start, FINGERPRINT_BATCH_ROWS)]
        digest.update(_json_lines(rows).encode())
    return digest.hexdigest()


def _fingerprint_digest(names: list[str]) -> hashlib._Hash:
    digest = hashlib.sha256()
    digest.update(_json_line(names).encode())
    return digest


# One encoder for every row: building one per json.dumps call doubles the fingerprint time.
# default=str gives a fixed text for values JSON lacks (dates, decimals, bytes).
_ROW_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def _json_line(values: list[object]) -> str:
    return _ROW_ENCODER.encode(values) + "\n"


def _is_text(dtype: pa.DataType) -> bool:
    types = pa.types
    return types.is_string(dtype) or types.is_large_string(dtype) or types.is_string_view(dtype)


def _has_fast_json(dtype: pa.DataType) -> bool:
    """Whether `_json_texts` gives Python's json text for every value of this type."""
    types = pa.types
    return (
        _is_text(dtype)
        or types.is_integer(dtype)
        or types.is_boolean(dtype)
        or types.is_null(dtype)
        or types.is_float32(dtype)
        or types.is_float64(dtype)
    )


def _json_lines(rows: pl.DataFrame) -> str:
    """The rows' `_json_line`s, built as one string by Polars."""
    texts = [_json_texts(column) for column in rows.get_columns()]
    rows = pl.concat_str([pl.lit("["), pl.concat_str(texts, separator=","), pl.lit("]")])
    return pl.select(rows.str.join("\n")).item() + "\n"


# Python's json (ensure_ascii) writes the ASCII characters outside " " to "~", the quote
# and the backslash escaped thus; every other ASCII character as itself.
_ASCII_ESCAPED = ["\\", '"', *map(chr, range(0x20)), "\x7f"]
_ASCII_ESCAPES = [_ROW_ENCODER.encode(char)[1:-1] for char in _ASCII_ESCAPED]


def _json_texts(column: pl.Series) -> pl.Series:
    """Python's json text of each value, "null" for nulls."""
    dtype = column.dtype
    if dtype == pl.String:
        texts = _json_strings(column)
    elif dtype.is_float():
        texts = _json_floats(column)
    elif dtype == pl.Null:
        texts = pl.repeat("null", column.len(), dtype=pl.String, eager=True)
    else:
        # Integers in decimal, booleans as true/false: as Python's int and bool reprs.
        texts = column.cast(pl.String)
    return texts.fill_null("null")


def _json_strings(column: pl.Series) -> pl.Series:
    texts = '"' + column.str.replace_many(_ASCII_ESCAPED, _ASCII_ESCAPES) + '"'
    # Python escapes every non-ASCII character as \uXXXX (surrogate pairs above U+FFFF):
    # those few values go through Python's json itself.
    non_ascii = column.str.len_bytes() != column.str.len_chars()
    if non_ascii.any():
        values = column.filter(non_ascii).to_list()
        texts = texts.scatter(non_ascii.arg_true(), [_ROW_ENCODER.encode(v) for v in values])
    return texts


def _json_floats(column: pl.Series) -> pl.Series:
    """Python's json writes a float as float.__repr__, except NaN and the infinities:
    the same function here, a column at a time."""
    values = column.cast(pl.Float64)
    reprs = pl.Series(list(map(float.__repr__, values.fill_null(0.0).to_list())), dtype=pl.String)
    frame = pl.DataFrame({"value": values, "repr": reprs})
    value = pl.col("value")
    text = (
        pl.when(value.is_null())
        .then(None)
        .when(value.is_nan())
        .then(pl.lit("NaN"))
        .when(value == float("inf"))
        .then(pl.lit("Infinity"))
        .when(value == float("-inf"))
        .then(pl.lit("-Infinity"))
        .otherwise(pl.col("repr"))
    )
    return frame.select(text).to_series()


def _read_dataset(path: str, string_columns: Sequence[str]) -> tuple[pa.Table, _RowOrigins]:
    """All rows of the dataset and the file each came from; files without rows add none."""
    if _is_saved_hf_dataset(Path(path)):
        table = _read_saved_hf_dataset(Path(path))
        return table, _RowOrigins(files=(path,), starts=(0,))
    parts = [(str(file), _read_file(file, string_columns)) for file in _dataset_files(path)]
    for file, table in parts:
        if table.num_rows:
            log.debug("%s: read %s rows", file, f"{table.num_rows:,}")
        else:
            log.info("%s: skipped, it has no rows", file)
    parts = [(file, table) for file, table in parts if table.num_rows > 0]
    if not parts:
        return pa.table({}), _RowOrigins(files=(path,), starts=(0,))
    table = _concat_parts(parts)
    starts = [0]
    for _, part in parts[:-1]:
        starts.append(starts[-1] + part.num_rows)
    return table, _RowOrigins(files=tuple(f for f, _ in parts), starts=tuple(starts))


def _is_saved_hf_dataset(path: Path) -> bool:
    """`save_to_disk` leaves state.json in a Dataset and dataset_dict.json in a DatasetDict."""
    return path.is_dir() and any(
        (path / marker).is_file() for marker in ("state.json", "dataset_dict.json")
    )


def _read_saved_hf_dataset(directory: Path) -> pa.Table:
    # Imported here: `datasets` takes about a second to import and most runs never need it.
    import datasets

    try:
        loaded = datasets.load_from_disk(str(directory))
    # datasets 5.2 raises IndexError for a saved dataset without rows (no data files).
    except (OSError, ValueError, IndexError) as err:
        raise DatasetError(f"{directory}: cannot load saved dataset: {_one_line(err)}") from err
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            splits = ", ".join(sorted(loaded))
            raise DatasetError(f"{directory}: DatasetDict has no 'train' split (splits: {splits})")
        loaded = loaded["train"]
    return loaded.with_format("arrow")[:].replace_schema_metadata(None)


def _dataset_files(path: str) -> list[Path]:
    """The files a path names: a file, the supported files of a directory (sorted, not
    recursive; names starting with `_` or `.` are metadata, as for pyarrow and Spark, so
    an `stm export` directory reads back) or the matches of a glob pattern (sorted)."""
    if any(char in path for char in "*?["):
        files = sorted(Path(match) for match in glob.glob(path) if Path(match).is_file())
        if not files:
            raise DatasetError(f"{path}: glob pattern matches no file")
    elif Path(path).is_dir():
        files = sorted(
            file
            for file in Path(path).iterdir()
            if file.is_file()
            and file.suffix.lower() in SUPPORTED_SUFFIXES
            and not file.name.startswith(("_", "."))
        )
        _log_ignored(Path(path), files)
        if not files:
            raise DatasetError(f"{path}: directory holds no {'/'.join(SUPPORTED_SUFFIXES)} file")
    elif Path(path).is_file():
        files = [Path(path)]
    else:
        raise DatasetError(f"{path}: no such file or directory")
    for file in files:
        if file.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DatasetError(
                f"{file}: unsupported file type '{file.suffix}' "
                f"(expected one of {', '.join(SUPPORTED_SUFFIXES)})"
            )
    return files


def _log_ignored(directory: Path, files: list[Path]) -> None:
    """Say which files of a data directory were left out: a stray file the user meant as
    data should not vanish silently. Metadata (`_`, `.`) only at debug level."""
    others = sorted(p.name for p in directory.iterdir() if p.is_file() and p not in files)
    metadata = [name for name in others if name.startswith(("_", "."))]
    unsupported = [name for name in others if not name.startswith(("_", "."))]
    if metadata:
        log.debug("%s: ignored metadata file(s) %s", directory, ", ".join(metadata))
    if unsupported:
        named = ", ".join(unsupported[:NAMED_IGNORED_FILES])
        more = len(unsupported) - NAMED_IGNORED_FILES
        log.info(
            "%s: ignored %d file(s) not of type %s: %s%s",
            directory,
            len(unsupported),
            "/".join(SUPPORTED_SUFFIXES),
            named,
            f" and {more} more" if more > 0 else "",
        )


def _read_file(file: Path, string_columns: Sequence[str]) -> pa.Table:
    """One file as a table; .json is read as JSON lines. `string_columns` are read as text
    from CSV, where type inference would turn an id like "007" into the integer 7."""
    suffix = file.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pq.read_table(file)
        elif file.stat().st_size == 0:
            table = pa.table({})
        elif suffix == ".csv":
            options = pa_csv.ConvertOptions(column_types={c: pa.string() for c in string_columns})
            table = pa_csv.read_csv(file, convert_options=options)
        else:
            # A block must hold a whole line: size it to the file so one long sample reads.
            block = max(JSON_MIN_BLOCK_BYTES, file.stat().st_size + 1)
            table = pa_json.read_json(file, read_options=pa_json.ReadOptions(block_size=block))
        # Full validation catches what readers let through, such as invalid UTF-8 text.
        table.validate(full=True)
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{file}: cannot read as {suffix[1:]}: {_one_line(err)}") from err
    return table.replace_schema_metadata(None)


def _concat_parts(parts: list[tuple[str, pa.Table]]) -> pa.Table:
    """Concatenate files that share their column names and whose types unify (an int
    column in one file and a float column in another become float)."""
    first_file, first = parts[0]
    unified = first.schema
    for file, table in parts[1:]:
        missing = sorted(set(first.column_names) - set(table.column_names))
        extra = sorted(set(table.column_names) - set(first.column_names))
        if missing or extra:
            raise DatasetError(
                f"{file}: columns differ from {first_file} "
                f"(missing: {', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'})"
            )
        for field in table.schema:
            try:
                pa.unify_schemas(
                    [pa.schema([unified.field(field.name)]), pa.schema([field])],
                    promote_options="permissive",
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise DatasetError(
                    f"{file}: column '{field.name}' is {field.type} here but "
                    f"{unified.field(field.name).type} in earlier files; the files of one "
                    "dataset must share a schema"
                ) from err
        unified = pa.unify_schemas([unified, table.schema], promote_options="permissive")
    return pa.concat_tables([table for _, table in parts], promote_options="permissive")


def _check_columns(data: DataConfig, table: pa.Table, required_columns: Sequence[str]) -> None:
    """Every configured column exists, and the reserved output names do not clash with
    an original column that would silently be shadowed."""
    wanted = [(data.id_column, "data.id_column"), (data.group_column, "data.group_column")]
    wanted += [(name, "required") for name in required_columns]
    available = ", ".join(table.column_names)
    for name, role in wanted:
        if name is not None and name not in table.column_names:
            raise MissingColumn(
                f"{data.path}: column '{name}' ({role}) not found (available: {available})"
            )
    for reserved, key, configured in (
        (SAMPLE_ID, "data.id_column", data.id_column),
        (GROUP, "data.group_column", data.group_column),
    ):
        if reserved in table.column_names and configured != reserved:
            raise DatasetError(
                f"{data.path}: column '{reserved}' is reserved; set {key} = '{reserved}' "
                "to use it, or rename it"
            )


def _cast_to_string(table: pa.Table, column: str, path: str) -> pa.ChunkedArray:
    try:
        return pc.cast(table[column], pa.string())
    except pa.ArrowException as err:
        raise DatasetError(
            f"{path}: column '{column}': cannot be read as text: {_one_line(err)}"
        ) from err


def _content_ids(table: pa.Table) -> pa.Array:
    """A sha256 of each row's canonical text, truncated to 16 hex chars.

    The canonical text lists the columns in sorted name order as
    `<len>:<name>` then `N` for null or `V<len>:<text>`: the byte lengths make it
    impossible for one value to pass for a separator. The id depends only on the row, not
    on file order, row order or which file format holds it. Python's hashlib rather than
    Polars' hash(), whose values are not guaranteed stable across versions.
    """
    frame = pl.from_arrow(table)
    cells = [_canonical_cell(name, frame.schema[name]) for name in sorted(frame.columns)]
    texts = frame.select(pl.concat_str(cells).alias("row")).to_series().to_list()
    ids = [hashlib.sha256(text.encode()).hexdigest()[:CONTENT_ID_HEX_CHARS] for text in texts]
    return pa.array(ids, pa.string())


def _canonical_cell(name: str, dtype: pl.DataType) -> pl.Expr:
    column = pl.col(name)
    if dtype.is_nested():
        text = pl.struct(column).struct.json_encode()
    elif dtype == pl.Binary:
        text = column.bin.encode("hex")
    else:
        text = column.cast(pl.String)
    label = f"{len(name.encode())}:{name}"
    present = pl.concat_str(
        [pl.lit(f"{label}V"), text.str.len_bytes().cast(pl.String), pl.lit(":"), text]
    )
    return pl.when(column.is_null()).then(pl.lit(f"{label}N")).otherwise(present)


def _check_sample_ids(
    sample_ids: pa.ChunkedArray | pa.Array, origins: _RowOrigins, id_column: str | None
) -> None:
    """Fail on the first null id and on the first row that repeats an earlier id."""
    null_row = pc.index(sample_ids.is_null(), True).as_py()
    if null_row >= 0:
        file, row = origins.locate(null_row)
        raise NullSampleId(f"{file}: column '{id_column}': null sample_id (row {row})")
    repeats = (
        pl.DataFrame({SAMPLE_ID: pl.from_arrow(sample_ids)})
        .with_row_index("row")
        .filter(~pl.col(SAMPLE_ID).is_first_distinct())
    )
    if repeats.is_empty():
        return
    second_row, sample_id = repeats.row(0)
    first_row = pc.index(sample_ids, sample_id).as_py()
    where, rows = _describe_rows(origins, first_row, second_row)
    if id_column is None:
        raise DuplicateSampleId(
            f"{where}: column '{SAMPLE_ID}' (content hash of all columns): duplicate "
            f"sample_id '{sample_id}' ({rows}): the rows have identical content; set "
            "data.id_column to give each sample its own id"
        )
    raise DuplicateSampleId(
        f"{where}: column '{id_column}': duplicate sample_id '{sample_id}' ({rows})"
    )


def _describe_rows(origins: _RowOrigins, first_row: int, second_row: int) -> tuple[str, str]:
    """The file to lead a message with and both rows' places, naming the second file
    only when it differs."""
    first_file, first = origins.locate(first_row)
    second_file, second = origins.locate(second_row)
    if first_file == second_file:
        return first_file, f"rows {first} and {second}"
    return first_file, f"row {first}, and {second_file} row {second}"


def _groups(
    table: pa.Table,
    group_column: str | None,
    path: str,
    sample_ids: pa.ChunkedArray | pa.Array,
    origins: _RowOrigins,
) -> pa.ChunkedArray | pa.Array:
    if group_column is None:
        return pa.repeat(pa.scalar(DEFAULT_GROUP, pa.string()), table.num_rows)
    groups = _cast_to_string(table, group_column, path)
    null_row = pc.index(groups.is_null(), True).as_py()
    if null_row >= 0:
        file, row = origins.locate(null_row)
        raise DatasetError(
            f"{file}: column '{group_column}': null group for sample_id "
            f"'{sample_ids[null_row].as_py()}' (row {row})"
        )
    return groups


def _check_required_values(
    table: pa.Table,
    required_columns: Sequence[str],
    sample_ids: pa.ChunkedArray | pa.Array,
    origins: _RowOrigins,
) -> None:
    """A required column holds a value for every sample: a null prompt or target would
    otherwise fail far downstream with no file or sample to point at."""
    for column in required_columns:
        null_row = pc.index(table[column].is_null(), True).as_py()
        if null_row >= 0:
            file, row = origins.locate(null_row)
            raise DatasetError(
                f"{file}: column '{column}': null value for sample_id "
                f"'{sample_ids[null_row].as_py()}' (row {row})"
            )


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
