"""Finding manifests in a store: every record by id (full or unique prefix), by run, and
the lineage chain of parents from a run's first reset to any manifest."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.errors import ManifestIntegrityError, ManifestNotFound
from pipeline.manifest import load_manifest
from pipeline.store import RunLayout, list_runs


@dataclass(frozen=True)
class Entry:
    """A manifest record with the file it was read from."""

    record: dict[str, Any]
    path: Path

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def step(self) -> tuple[int, int]:
        return self.record["round"], self.record["epoch"]


@dataclass(frozen=True)
class Catalog:
    """The readable manifests of a store. A record that fails its id check is left out
    and kept in `broken`, so one tampered file does not hide every other run; asking for
    it, or for a lineage through it, fails with its error (`verify` reports them all)."""

    root: Path
    entries: tuple[Entry, ...]
    broken: tuple[ManifestIntegrityError, ...] = ()

    @classmethod
    def load(cls, root: Path, runs: list[str] | None = None) -> Catalog:
        entries, broken = [], []
        for run_id in runs if runs is not None else list_runs(root):
            layout = RunLayout(root, run_id)
            for path in layout.manifest_dir.glob("*.json"):
                try:
                    entries.append(Entry(load_manifest(path), path))
                except ManifestIntegrityError as err:
                    broken.append(err)
        entries.sort(key=lambda e: (e.record["run"], e.step))
        return cls(root, tuple(entries), tuple(broken))

    def by_run(self, run_id: str) -> list[Entry]:
        found = [e for e in self.entries if e.record["run"] == run_id]
        if not found:
            raise ManifestNotFound(f"{self.root}: no manifests for run {run_id!r}")
        return found

    def find(self, ref: str) -> Entry:
        """A manifest by id or unique id prefix, or `RUN` (its last step) or `RUN:R:E`."""
        if ":" in ref:
            run_id, round_text, epoch_text = (ref.split(":") + ["", ""])[:3]
            for entry in self.by_run(run_id):
                if f"{entry.step[0]}:{entry.step[1]}" == f"{round_text}:{epoch_text}":
                    return entry
            raise ManifestNotFound(
                f"{self.root}: run {run_id!r} has no step {ref!r}{self._broken_hint()}"
            )
        matches = {e.id: e for e in self.entries if e.id.startswith(ref)}
        if len(matches) == 1:
            return next(iter(matches.values()))
        if len(matches) > 1:
            shown = ", ".join(sorted(i[:12] for i in matches)[:5])
            raise ManifestNotFound(
                f"{self.root}: manifest id {ref!r} is ambiguous ({len(matches)} match: {shown})"
            )
        runs = [e for e in self.entries if e.record["run"] == ref]
        if runs:
            return runs[-1]
        raise ManifestNotFound(
            f"{self.root}: no manifest or run matches {ref!r}{self._broken_hint()}"
        )

    def _broken_hint(self) -> str:
        if not self.broken:
            return ""
        return (
            f" ({len(self.broken)} manifest(s) failed their id check, the first: "
            f"{self.broken[0]}; see `stm manifests verify --all`)"
        )

    @cached_property
    def _by_id(self) -> dict[str, Entry]:
        return {entry.id: entry for entry in self.entries}

    def by_id(self, manifest_id: str) -> Entry | None:
        return self._by_id.get(manifest_id)

    def chain(self, entry: Entry) -> list[Entry]:
        """The manifests from the root of `entry`'s lineage to `entry`, oldest first."""
        chain = [entry]
        while chain[-1].record["parent"] is not None:
            parent = self.by_id(chain[-1].record["parent"])
            if parent is None:
                raise ManifestNotFound(
                    f"{chain[-1].path}: parent {chain[-1].record['parent']} is not in the "
                    f"store{self._broken_hint()}"
                )
            chain.append(parent)
        return chain[::-1]
