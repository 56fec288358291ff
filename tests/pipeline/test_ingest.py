from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import ingest
from pipeline.config import DataConfig
from pipeline.errors import (
    DatasetError,
    DuplicateSampleId,
    EmptyDataset,
    MissingColumn,
    NullSampleId,
)
from pipeline.ingest import dataset_fingerprint, load_samples

FORMATS = ["parquet", "jsonl", "json", "csv", "directory", "glob", "hf_dataset", "hf_dataset_dict"]


@pytest.fixture(autouse=True)
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`datasets` must neither reach the network nor write caches into the user's home."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))


def make_rows(n: int = 6) -> list[dict[str, object]]:
    return [
        {
            "id": 100 + i,
            "prompt": f"{i}+{i}=",
            "target": str(2 * i),
            "level": "easy" if i % 2 else "hard",
        }
        for i in range(n)
    ]


def write_file(path: Path, rows: list[dict[str, object]]) -> Path:
    """Rows as one file whose format follows the suffix (.json is JSON lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        pa_csv.write_csv(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_dataset(root: Path, fmt: str, rows: list[dict[str, object]]) -> str:
    """Rows stored in one of the supported layouts; returns the `data.path` that reads them."""
    import datasets

    half = len(rows) // 2
    if fmt in ("parquet", "jsonl", "json", "csv"):
        return str(write_file(root / f"samples.{fmt}", rows))
    if fmt in ("directory", "glob"):
        write_file(root / "parts" / "part-0.parquet", rows[:half])
        write_file(root / "parts" / "part-1.parquet", rows[half:])
        (root / "parts" / "README.md").write_text("not data")
        return str(root / "parts") if fmt == "directory" else str(root / "parts" / "*.parquet")
    if fmt == "hf_dataset":
        datasets.Dataset.from_list(rows).save_to_disk(str(root / "hf"))
        return str(root / "hf")
    splits = {"train": rows, "test": [{**rows[0], "id": -1}]}
    datasets.DatasetDict(
        {name: datasets.Dataset.from_list(split) for name, split in splits.items()}
    ).save_to_disk(str(root / "hf_dict"))
    return str(root / "hf_dict")


def raises_exactly(error: type[Exception], message: str) -> pytest.RaisesExc:
    """The precise class (not a parent) and a one-line message containing `message`."""

    def is_exact_and_one_line(err: BaseException) -> bool:
        return type(err) is error and "\n" not in str(err)

    return pytest.raises(error, match=re.escape(message), check=is_exact_and_one_line)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("id_column", [None, "id"])
def test_every_format_gives_the_same_sample_ids(
    tmp_path: Path, fmt: str, id_column: str | None
) -> None:
    rows = make_rows()
    reference_path = write_dataset(tmp_path / "reference", "parquet", rows)
    reference = load_samples(
        DataConfig(path=reference_path, id_column=id_column), ["prompt", "target"]
    )
    loaded = load_samples(
        DataConfig(path=write_dataset(tmp_path / fmt, fmt, rows), id_column=id_column),
        ["prompt", "target"],
    )
    assert loaded["sample_id"].to_pylist() == reference["sample_id"].to_pylist()
    assert loaded.column_names[:2] == ["sample_id", "group"]
    assert loaded.num_rows == len(rows)


def test_content_ids_do_not_depend_on_row_order(tmp_path: Path) -> None:
    rows = make_rows(20)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    forward = load_samples(DataConfig(path=str(write_file(tmp_path / "a.parquet", rows))), [])
    backward = load_samples(DataConfig(path=str(write_file(tmp_path / "b.parquet", shuffled))), [])

    def ids_by_prompt(table: pa.Table) -> dict[str, str]:
        return dict(zip(table["prompt"].to_pylist(), table["sample_id"].to_pylist(), strict=True))

    assert ids_by_prompt(forward) == ids_by_prompt(backward)


def test_content_id_is_pinned(tmp_path: Path) -> None:
    """Ids are recorded in manifests: the canonical encoding (columns by sorted name,
    `<len>:<name>` then `N` or `V<len>:<text>`) must not drift silently."""
    row = {"target": "3", "prompt": "1+2=", "n": 7, "missing": None}
    path = write_file(tmp_path / "one.jsonl", [row])
    table = load_samples(DataConfig(path=str(path)), [])
    canonical = b"7:missingN1:nV1:76:promptV4:1+2=6:targetV1:3"
    assert table["sample_id"].to_pylist() == [hashlib.sha256(canonical).hexdigest()[:16]]


@pytest.mark.parametrize(
    "first, second",
    [
        ({"x": "a", "y": "bc"}, {"x": "ab", "y": "c"}),
        ({"x": None, "y": "a"}, {"x": "", "y": "a"}),
        ({"x": "N", "y": "a"}, {"x": None, "y": "a"}),
        ({"x": "1:x", "y": None}, {"x": None, "y": "1:x"}),
    ],
)
def test_content_ids_tell_apart_rows_a_naive_join_would_merge(
    tmp_path: Path, first: dict[str, object], second: dict[str, object]
) -> None:
    schema = pa.schema([("x", pa.string()), ("y", pa.string())])
    table = pa.Table.from_pylist([first, second], schema=schema)
    pq.write_table(table, tmp_path / "rows.parquet")
    loaded = load_samples(DataConfig(path=str(tmp_path / "rows.parquet")), [])
    assert len(set(loaded["sample_id"].to_pylist())) == 2


def test_id_column_is_cast_to_string_and_kept(tmp_path: Path) -> None:
    path = write_file(tmp_path / "s.parquet", make_rows(3))
    table = load_samples(DataConfig(path=str(path), id_column="id"), ["prompt"])
    assert table.schema.field("sample_id").type == pa.string()
    assert table["sample_id"].to_pylist() == ["100", "101", "102"]
    assert table.column_names == ["sample_id", "group", "id", "prompt", "target", "level"]


def test_id_column_named_sample_id_is_not_duplicated(tmp_path: Path) -> None:
    rows = [{"sample_id": row["id"], "prompt": row["prompt"]} for row in make_rows(3)]
    path = write_file(tmp_path / "s.jsonl", rows)
    table = load_samples(DataConfig(path=str(path), id_column="sample_id"), [])
    assert table.column_names == ["sample_id", "group", "prompt"]
    assert table["sample_id"].to_pylist() == ["100", "101", "102"]


def test_csv_id_keeps_leading_zeros(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("id,prompt\n007,a\n8,b\n")
    table = load_samples(DataConfig(path=str(path), id_column="id"), [])
    assert table["sample_id"].to_pylist() == ["007", "8"]


@pytest.mark.parametrize(
    "group_column, expected",
    [
        (None, ["all", "all", "all"]),
        ("level", ["hard", "easy", "hard"]),
        ("id", ["100", "101", "102"]),
    ],
)
def test_group(tmp_path: Path, group_column: str | None, expected: list[str]) -> None:
    path = write_file(tmp_path / "s.parquet", make_rows(3))
    table = load_samples(DataConfig(path=str(path), group_column=group_column), [])
    assert table["group"].to_pylist() == expected
    assert table.schema.field("group").type == pa.string()


def test_group_column_named_group_replaces_the_original(tmp_path: Path) -> None:
    rows = [{"prompt": "a", "group": 1}, {"prompt": "b", "group": 2}]
    path = write_file(tmp_path / "s.jsonl", rows)
    table = load_samples(DataConfig(path=str(path), group_column="group"), [])
    assert table.column_names == ["sample_id", "group", "prompt"]
    assert table["group"].to_pylist() == ["1", "2"]


def test_files_with_int_and_float_columns_unify(tmp_path: Path) -> None:
    write_file(tmp_path / "d" / "a.jsonl", [{"prompt": "a", "score": 1}])
    write_file(tmp_path / "d" / "b.jsonl", [{"prompt": "b", "score": 2.5}])
    table = load_samples(DataConfig(path=str(tmp_path / "d")), [])
    assert table["score"].to_pylist() == [1.0, 2.5]


def test_empty_file_among_others_adds_no_rows(tmp_path: Path) -> None:
    write_file(tmp_path / "d" / "a.jsonl", make_rows(2))
    (tmp_path / "d" / "b.jsonl").write_text("")
    table = load_samples(DataConfig(path=str(tmp_path / "d")), [])
    assert table.num_rows == 2


def test_null_id_names_file_and_row(tmp_path: Path) -> None:
    rows = make_rows(4)
    rows[2]["id"] = None
    path = write_file(tmp_path / "s.jsonl", rows)
    with raises_exactly(NullSampleId, f"{path}: column 'id': null sample_id (row 2)"):
        load_samples(DataConfig(path=str(path), id_column="id"), [])


def test_null_id_in_second_file_names_that_file(tmp_path: Path) -> None:
    write_file(tmp_path / "d" / "a.jsonl", make_rows(3))
    second = write_file(tmp_path / "d" / "b.jsonl", [{**make_rows(1)[0], "id": None}])
    with raises_exactly(NullSampleId, f"{second}: column 'id': null sample_id (row 0)"):
        load_samples(DataConfig(path=str(tmp_path / "d"), id_column="id"), [])


def test_duplicate_id_within_a_file(tmp_path: Path) -> None:
    rows = make_rows(5)
    rows[3]["id"] = rows[1]["id"]
    path = write_file(tmp_path / "s.csv", rows)
    with raises_exactly(
        DuplicateSampleId, f"{path}: column 'id': duplicate sample_id '101' (rows 1 and 3)"
    ):
        load_samples(DataConfig(path=str(path), id_column="id"), [])


def test_duplicate_id_across_files_names_both(tmp_path: Path) -> None:
    first = write_file(tmp_path / "d" / "a.parquet", make_rows(3))
    second = write_file(tmp_path / "d" / "b.parquet", [{**make_rows(8)[7], "id": 101}])
    with raises_exactly(
        DuplicateSampleId,
        f"{first}: column 'id': duplicate sample_id '101' (row 1, and {second} row 0)",
    ):
        load_samples(DataConfig(path=str(tmp_path / "d" / "*.parquet"), id_column="id"), [])


def test_identical_rows_without_id_column(tmp_path: Path) -> None:
    rows = make_rows(4)
    path = write_file(tmp_path / "s.jsonl", rows + [rows[2]])
    identical = "(rows 2 and 4): the rows have identical content"
    with raises_exactly(DuplicateSampleId, identical) as info:
        load_samples(DataConfig(path=str(path)), [])
    assert str(info.value).startswith(f"{path}: column 'sample_id' (content hash")
    assert "set data.id_column" in str(info.value)


def test_null_group_names_the_sample(tmp_path: Path) -> None:
    rows = make_rows(3)
    rows[1]["level"] = None
    path = write_file(tmp_path / "s.jsonl", rows)
    with raises_exactly(
        DatasetError, f"{path}: column 'level': null group for sample_id '101' (row 1)"
    ):
        load_samples(DataConfig(path=str(path), id_column="id", group_column="level"), [])


def test_null_required_value_names_file_column_and_sample(tmp_path: Path) -> None:
    rows = make_rows(4)
    rows[2]["prompt"] = None
    path = write_file(tmp_path / "s.jsonl", rows)
    with raises_exactly(
        DatasetError, f"{path}: column 'prompt': null value for sample_id '102' (row 2)"
    ):
        load_samples(DataConfig(path=str(path), id_column="id"), ["prompt", "target"])


@pytest.mark.parametrize(
    "config_fields, required, message",
    [
        (
            {"id_column": "uid"},
            [],
            "column 'uid' (data.id_column) not found (available: id, prompt, target, level)",
        ),
        ({"group_column": "tier"}, [], "column 'tier' (data.group_column) not found"),
        (
            {},
            ["prompt", "answer"],
            "column 'answer' (required) not found (available: id, prompt, target, level)",
        ),
    ],
)
def test_missing_column(
    tmp_path: Path, config_fields: dict[str, str], required: list[str], message: str
) -> None:
    path = write_file(tmp_path / "s.parquet", make_rows(2))
    with raises_exactly(MissingColumn, f"{path}: {message}"):
        load_samples(DataConfig(path=str(path), **config_fields), required)


@pytest.mark.parametrize(
    "column, key", [("sample_id", "data.id_column"), ("group", "data.group_column")]
)
def test_reserved_column_names_must_be_configured(tmp_path: Path, column: str, key: str) -> None:
    path = write_file(tmp_path / "s.jsonl", [{column: "x", "prompt": "a"}])
    message = f"{path}: column '{column}' is reserved; set {key} = '{column}'"
    with raises_exactly(DatasetError, message):
        load_samples(DataConfig(path=str(path)), [])


@pytest.mark.parametrize(
    "name", ["empty.parquet", "empty.jsonl", "header_only.csv", "zero_bytes.csv"]
)
def test_empty_dataset(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name == "empty.parquet":
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    elif name == "header_only.csv":
        path.write_text("prompt,target\n")
    else:
        path.write_text("")
    with raises_exactly(EmptyDataset, f"{path}: the dataset has no rows"):
        load_samples(DataConfig(path=str(path)), ["prompt"])


def test_directory_of_empty_files_is_empty(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.csv").write_text("x\n")
    with raises_exactly(EmptyDataset, f"{tmp_path}: the dataset has no rows"):
        load_samples(DataConfig(path=str(tmp_path)), [])


def write_broken_dataset(root: Path, layout: str) -> str:
    """A dataset that cannot be read in the way `layout` names; returns its `data.path`."""
    match layout:
        case "missing":
            return str(root / "nope.parquet")
        case "glob_nothing":
            return str(root / "*.parquet")
        case "unsupported" | "glob_unsupported":
            (root / "notes.txt").write_text("a note")
            return str(root / ("notes.txt" if layout == "unsupported" else "notes.*"))
        case "empty_directory":
            return str(root)
        case "bad_json":
            (root / "bad.jsonl").write_text("{not json\n")
            return str(root / "bad.jsonl")
        case "bad_parquet":
            (root / "bad.parquet").write_text("not parquet")
            return str(root / "bad.parquet")
        case "type_clash" | "columns_differ":
            write_file(root / "a.jsonl", [{"x": 1}])
            write_file(root / "b.jsonl", [{"x": "one"} if layout == "type_clash" else {"y": 1}])
            return str(root)
    raise AssertionError(layout)


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "{root}/nope.parquet: no such file or directory"),
        ("glob_nothing", "{root}/*.parquet: glob pattern matches no file"),
        ("unsupported", "{root}/notes.txt: unsupported file type '.txt'"),
        ("glob_unsupported", "{root}/notes.txt: unsupported file type '.txt'"),
        ("empty_directory", "{root}: directory holds no .parquet/.jsonl/.json/.csv file"),
        ("bad_json", "{root}/bad.jsonl: cannot read as jsonl"),
        ("bad_parquet", "{root}/bad.parquet: cannot read as parquet"),
        ("type_clash", "{root}/b.jsonl: column 'x' is string here but int64 in earlier files"),
        (
            "columns_differ",
            "{root}/b.jsonl: columns differ from {root}/a.jsonl (missing: x; extra: y)",
        ),
    ],
)
def test_unreadable_dataset(tmp_path: Path, layout: str, message: str) -> None:
    path = write_broken_dataset(tmp_path, layout)
    with raises_exactly(DatasetError, message.format(root=tmp_path)):
        load_samples(DataConfig(path=path), [])


def test_dataset_dict_without_train_split(tmp_path: Path) -> None:
    import datasets

    rows = make_rows(2)
    datasets.DatasetDict(
        {"validation": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)}
    ).save_to_disk(str(tmp_path / "hf"))
    message = f"{tmp_path / 'hf'}: DatasetDict has no 'train' split (splits: test, validation)"
    with raises_exactly(DatasetError, message):
        load_samples(DataConfig(path=str(tmp_path / "hf")), [])


def test_saved_dataset_without_rows_fails_naming_it(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"prompt": []}).save_to_disk(str(tmp_path / "hf"))
    # Either class is right: datasets 5.2 cannot load it, a later one may load 0 rows.
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'hf'}: ")):
        load_samples(DataConfig(path=str(tmp_path / "hf")), [])


def make_table(n: int = 5) -> pa.Table:
    return pa.table(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "group": ["all"] * n,
            "prompt": [f"{i}+1=" for i in range(n)],
            "loss": [0.5 * i for i in range(n)],
            "note": [None if i % 2 else "x" for i in range(n)],
        }
    )


def test_fingerprint_ignores_row_and_column_order() -> None:
    table = make_table()
    reordered = table.take([3, 0, 4, 2, 1]).select(["note", "loss", "prompt", "group", "sample_id"])
    assert dataset_fingerprint(reordered) == dataset_fingerprint(table)


@pytest.mark.parametrize(
    "column, value",
    [("prompt", "9+9="), ("loss", 1.0000001), ("note", ""), ("note", None), ("group", "hard")],
)
def test_fingerprint_changes_with_one_value(column: str, value: object) -> None:
    table = make_table()
    values = table[column].to_pylist()
    values[2] = value
    field = table.schema.field(column)
    changed = table.set_column(
        table.schema.get_field_index(column), column, pa.array(values, field.type)
    )
    assert dataset_fingerprint(changed) != dataset_fingerprint(table)


def test_fingerprint_changes_with_a_renamed_column() -> None:
    table = make_table()
    renamed = table.rename_columns({"note": "remark"})
    assert dataset_fingerprint(renamed) != dataset_fingerprint(table)


def test_fingerprint_is_pinned() -> None:
    """Fingerprints are recorded in manifests: they must survive library upgrades, so
    they hash JSON lines (sorted column names, then rows by sample_id), not Arrow bytes."""
    canonical = (
        b'["group","loss","note","prompt","sample_id"]\n'
        b'["all",0.0,"x","0+1=","s0"]\n'
        b'["all",0.5,null,"1+1=","s1"]\n'
    )
    table = make_table(2).take([1, 0])
    assert dataset_fingerprint(table) == hashlib.sha256(canonical).hexdigest()


TRICKY_TEXTS = [
    'say "hi"',
    "back\\slash \\u0041 \\n",
    "tab\tnew\nline\rcr\bbs\fff",
    "\x00\x01\x1f\x7f",
    "",
    None,
    " ~ printable ASCII !#$%&'()*+,-./:;<=>?@[]^_`{|}",
    "é ü",
    "line\u2028sep\u2029",
    "emoji 😀 and \ud7ff",
    "null",
]


def tricky_table(n: int = len(TRICKY_TEXTS)) -> pa.Table:
    texts = (TRICKY_TEXTS * n)[:n]
    return pa.table(
        {
            "sample_id": [f"id-{(i * 7919) % n:05d}" for i in range(n)],
            "text": texts,
            "large": pa.array(list(reversed(texts)), pa.large_string()),
            "int64": pa.array([(-1) ** i * (2**63 - 1 - i) for i in range(n)], pa.int64()),
            "uint64": pa.array([2**64 - 1 - i if i % 3 else None for i in range(n)], pa.uint64()),
            "int8": pa.array([-128 + i % 256 for i in range(n)], pa.int8()),
            "flag": [None if i % 5 == 0 else i % 2 == 0 for i in range(n)],
            "empty": pa.nulls(n),
        }
    )


def json_lines_sha256(table: pa.Table) -> str:
    """The fingerprint's definition, written out independently of `pipeline.ingest`."""
    names = sorted(table.column_names)
    rows = sorted(table.select(names).to_pylist(), key=lambda row: row["sample_id"])
    encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
    lines = [names, *(list(row.values()) for row in rows)]
    text = "".join(encoder.encode(values) + "\n" for values in lines)
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("batch_rows", [1, 4, 65_536])
def test_fast_fingerprint_is_the_reference(
    monkeypatch: pytest.MonkeyPatch, batch_rows: int
) -> None:
    monkeypatch.setattr(ingest, "FINGERPRINT_BATCH_ROWS", batch_rows)
    table = tricky_table(3 * len(TRICKY_TEXTS))
    expected = json_lines_sha256(table)
    assert ingest._reference_fingerprint(table) == expected
    assert ingest._fast_fingerprint(table) == expected
    assert dataset_fingerprint(table) == expected


def test_fast_fingerprint_takes_floats_through_python_repr() -> None:
    values = [0.1, -0.0, 1e-7, 1e16, 1.5e300, float("nan"), float("inf"), float("-inf"), None]
    table = pa.table(
        {
            "sample_id": [f"s{i}" for i in range(len(values))],
            "f64": values,
            "f32": pa.array(values, pa.float32()),
        }
    )
    assert ingest._fast_fingerprint(table) == json_lines_sha256(table)
    assert dataset_fingerprint(table) == json_lines_sha256(table)


def test_fast_fingerprint_orders_ties_and_nulls_as_pyarrow() -> None:
    table = pa.table(
        {"sample_id": ["b", None, "a", "b", None, "Z", "é"], "n": [1, 2, 3, 4, 5, 6, 7]}
    )
    assert ingest._fast_fingerprint(table) == ingest._reference_fingerprint(table)


@pytest.mark.parametrize(
    "column",
    [
        pa.array([b"\x00\xff", None, b""], pa.binary()),
        pa.array([[1, 2], None, []], pa.list_(pa.int64())),
        pa.array(["x", "y", "x"]).dictionary_encode(),
        pa.array([1, None, 3], pa.date32()),
        pa.array([{"b": 1, "a": "é"}, None, {"b": 2, "a": ""}]),
    ],
)
def test_fingerprint_of_other_types_is_the_reference(column: pa.Array) -> None:
    table = pa.table({"sample_id": ["c", "a", "b"], "other": column, "text": ["é", "\n", None]})
    assert dataset_fingerprint(table) == json_lines_sha256(table)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(
            st.text(st.characters(max_codepoint=0x7F), max_size=12),
            st.one_of(st.none(), st.text(max_size=8)),
            st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
            st.one_of(st.none(), st.booleans()),
        ),
        min_size=1,
        max_size=40,
        unique_by=lambda row: row[0],
    )
)
def test_fast_fingerprint_is_the_reference_on_random_rows(
    rows: list[tuple[str, str | None, int | None, bool | None]],
) -> None:
    ids, texts, ints, flags = zip(*rows, strict=True)
    table = pa.table(
        {
            "sample_id": list(ids),
            "text": list(texts),
            "n": pa.array(ints, pa.int64()),
            "flag": pa.array(flags, pa.bool_()),
        }
    )
    assert ingest._fast_fingerprint(table) == ingest._reference_fingerprint(table)
