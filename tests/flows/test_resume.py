"""A run killed with SIGKILL at several stages resumes to exactly the manifests of an
uninterrupted run; a locked or changed run is refused clearly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flows.stm_flow import stm_flow
from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.resume import run_lock
from pipeline.store import RunLayout
from pipeline.verify import manifest_paths, verify_store

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"

# (module, function, call at which the process kills itself): inside training before the
# checkpoint is saved, inside scoring, and inside a manifest write, after a half-written
# temporary file (the reset of round 1, so the resume also crosses a round boundary).
KILL_POINTS = {
    "training": ("models.trainer", "save_checkpoint", 2),
    "scoring": ("pipeline.scoring", "score_batches", 3),
    "manifest": ("pipeline.pruning", "write_immutable", 5),
}
DRIVER = """
import os, signal, sys, importlib
from pathlib import Path
module = importlib.import_module({module!r})
original = getattr(module, {function!r})
calls = []

def kill_on_call(*args, **kwargs):
    calls.append(1)
    if len(calls) == {at}:
        if {function!r} == "write_immutable":
            half = Path(args[0]).with_name("." + Path(args[0]).name + ".half.tmp")
            half.write_bytes(args[1][: len(args[1]) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)

setattr(module, {function!r}, kill_on_call)
from pipeline.cli import cli
cli(["run", "--config", {config!r}, "--store", {store!r}, "--run-id", "killed"])
"""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def reference_ids(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    store = tmp_path_factory.mktemp("reference")
    config = replace(load_config(TINY), store=str(store), run_id="reference")
    return [m["id"] for m in stm_flow.fn(config).manifests]


@pytest.mark.parametrize("stage", sorted(KILL_POINTS))
def test_killed_run_resumes_to_identical_manifests(
    stage: str, tmp_path: Path, reference_ids: list[str]
) -> None:
    module, function, at = KILL_POINTS[stage]
    driver = DRIVER.format(
        module=module, function=function, at=at, config=str(TINY), store=str(tmp_path)
    )
    log = tmp_path / "killed.log"
    with open(log, "w") as output:
        # Its own session, so the local Prefect server it starts dies with it.
        process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(driver)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    assert returncode == -signal.SIGKILL, log.read_text()[-2000:]
    layout = RunLayout(tmp_path, "killed")
    written = sorted(layout.manifest_dir.glob("*.json"))
    assert 0 < len(written) < len(reference_ids)
    assert verify_store(tmp_path, manifest_paths(tmp_path))[1] == []

    resumed = invoke("run", "--resume", "killed", "--store", str(tmp_path), "--json")
    assert resumed.exit_code == 0, resumed.output
    ids = [m["id"] for m in json.loads(resumed.stdout)["manifests"]]
    assert ids == reference_ids
    assert verify_store(tmp_path, manifest_paths(tmp_path))[1] == []
    listed = json.loads(invoke("runs", "--store", str(tmp_path), "--json").stdout)
    assert listed[0]["status"] == "complete"
    again = invoke("run", "--resume", "killed", "--store", str(tmp_path))
    assert again.exit_code == 0 and "is complete" in again.output


def started_run(store: Path) -> RunLayout:
    """A run that stopped after its first manifests (its process died)."""
    config = replace(load_config(TINY), store=str(store), run_id="partial", rounds=1, epochs=1)
    stm_flow.fn(config)
    layout = RunLayout(store, "partial")
    layout.completion_marker.unlink()
    return layout


def test_a_run_being_written_is_locked(tmp_path: Path) -> None:
    layout = started_run(tmp_path)
    with run_lock(layout):
        result = invoke("run", "--resume", "partial", "--store", str(tmp_path))
    assert result.exit_code == 1
    assert "run 'partial' is being written by another process" in result.stderr


def test_resuming_with_a_changed_config_is_refused(tmp_path: Path) -> None:
    started_run(tmp_path)
    result = invoke(
        "run",
        "--config",
        str(TINY),
        "--store",
        str(tmp_path),
        "--run-id",
        "partial",
        "--rounds",
        "1",
        "--epochs",
        "1",
        "--floor",
        "0.9",
    )
    assert result.exit_code == 1
    assert "the config differs from the one run 'partial' started with" in result.stderr


def test_resume_takes_only_the_store(tmp_path: Path) -> None:
    result = invoke("run", "--resume", "x", "--epochs", "3", "--store", str(tmp_path))
    assert result.exit_code == 2 and "--resume takes the run's saved config" in result.output
    missing = invoke("run", "--resume", "nope", "--store", str(tmp_path))
    assert missing.exit_code == 1 and "no run 'nope' to resume" in missing.stderr
