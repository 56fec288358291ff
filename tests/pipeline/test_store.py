"""Store writes: what a reader of a shared store sees."""

from __future__ import annotations

from pathlib import Path

from pipeline.store import write_bytes_atomic


def test_store_files_get_the_mode_of_any_new_file(tmp_path: Path) -> None:
    """Not mkstemp's owner-only 0600: an auditor reading a shared store must be able to."""
    path = tmp_path / "manifest.json"
    write_bytes_atomic(path, b"{}")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
