"""`stm run --dry-run`: the resolved config, dataset, run directory and plan, after failing
wherever a real run would fail before its first step, and without creating the run,
starting Prefect or writing anything to the store."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flows.inputs import prepare_inputs
from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.pruning import reset_pool
from pipeline.resume import run_lock
from pipeline.runs import create_run, mark_complete
from pipeline.store import RunLayout

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def dry_run(store: Path, *args: str) -> Result:
    return invoke("run", "--config", str(TINY), "--store", str(store), *args, "--dry-run")


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run must not reach any step that sets Prefect up, locks or runs."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run started what a real run starts")

    for name in ("_prefect_defaults", "_run_flow", "run_lock"):
        monkeypatch.setattr(f"pipeline.cli.run.{name}", refuse)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for a directory)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def started_run(store: Path, complete: bool = False) -> None:
    """Run "r" of the tiny config as `stm run` leaves it after its first manifest (or at
    its end), without training anything."""
    config = replace(load_config(TINY), store=str(store), run_id="r")
    inputs = prepare_inputs(config)
    layout = create_run(config, inputs)
    reset = reset_pool(layout, 0, None, config.policy, inputs.fingerprint)
    if complete:
        mark_complete(layout, reset)


def test_a_new_run_is_described_and_the_store_is_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_HOME")  # the tests keep theirs elsewhere
    store = tmp_path / "store"
    result = dry_run(store)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith("Dry run: nothing is written and Prefect is not started.")
    assert "# resolved config\nseed = 0\nrounds = 2\nepochs = 3\n" in text
    assert '[policy]\nname = "stm"\ndelta = 0.05\n' in text
    for line in (
        "dataset   builtin:arithmetic (fingerprint ",
        "          64 samples (easy 48, hard 16)",
        "held out  20 samples (easy 10, hard 10)",
        " (generated from the time and config)",
        f"          in {store}/runs/",
        "          a new run",
        "plan      2 round(s) x 3 epoch(s): at most 6 train, score and prune steps",
        "policy    stm: drop when the loss fell by >= 0.05 (absolute) and is <= the floor; "
        "floor per round 1, 0.5 (x0.5 each round)",
        "trainer   built-in gru (embed 16, hidden 32, 1 layer(s), max_len 64); batch 16, "
        "lr 0.01, 1 thread(s)",
        "scoring   batch 32, 1 thread(s)",
        f"prefect   local, in-process, no server (state in {store.resolve()}/.prefect)",
    ):
        assert line in text, line
    assert not store.exists()


def test_json_says_the_same_and_the_config_replays(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = dry_run(store, "--run-id", "nightly", "--policy", "standard", "--json")
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout)
    assert described["dataset"]["samples"] == 64
    assert described["dataset"]["by_group"] == {"easy": 48, "hard": 16}
    assert described["dataset"]["held_out"]["samples"] == 20
    assert described["run"] == {
        "id": "nightly",
        "store": str(store),
        "run_dir": str(store / "runs" / "nightly"),
        "state": "new",
        "named": True,
    }
    assert described["plan"]["policy"] == {"name": "standard"}
    assert described["plan"]["trainer"]["kind"] == "builtin"
    assert described["prefect"]["mode"] == "local"
    saved = tmp_path / "resolved.toml"
    saved.write_text(described["config_toml"])
    assert tomllib.loads(described["config_toml"]) == described["config"]
    tiny = load_config(TINY)
    standard = replace(tiny.policy, name="standard")
    assert load_config(saved) == replace(tiny, store=str(store), run_id="nightly", policy=standard)
    assert not store.exists()


def test_an_unfinished_run_would_be_resumed_and_stays_untouched(tmp_path: Path) -> None:
    started_run(tmp_path)
    before = snapshot(tmp_path)
    result = dry_run(tmp_path, "--run-id", "r", "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["run"]
    assert (run["state"], run["last_step"], run["steps_done"]) == ("resume", "r00-e000", 0)
    text = invoke("run", "--resume", "r", "--store", str(tmp_path), "--dry-run").stdout
    assert "would resume this unfinished run after r00-e000 (0 of at most 6 steps done)" in text
    assert snapshot(tmp_path) == before


def test_a_complete_run_would_do_nothing(tmp_path: Path) -> None:
    started_run(tmp_path, complete=True)
    before = snapshot(tmp_path)
    result = dry_run(tmp_path, "--run-id", "r")
    assert result.exit_code == 0, result.output
    assert "already complete: nothing would run (final manifest " in result.stdout
    assert snapshot(tmp_path) == before


def assert_one_line_error(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_it_fails_where_a_real_run_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started_run(tmp_path)
    before = snapshot(tmp_path)
    changed = dry_run(tmp_path, "--run-id", "r", "--epochs", "5")
    assert_one_line_error(changed, "the config differs from the one run 'r' started with")
    bad = CORPUS / "duplicate_id.jsonl"
    data = dry_run(tmp_path, "--data", str(bad), "--id-column", "id")
    assert_one_line_error(data, f"{bad}: column 'id': duplicate sample_id '1'")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    unreachable = dry_run(tmp_path)
    assert_one_line_error(unreachable, "Prefect server not reachable")
    assert snapshot(tmp_path) == before


def test_a_prefect_server_and_an_external_trainer_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    monkeypatch.setattr("pipeline.cli.run._check_prefect_server", lambda: None)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"id": {i}, "x": {i}}}\n' for i in range(5)))
    config = tmp_path / "external.toml"
    config.write_text(
        f'[data]\npath = "{data}"\nid_column = "id"\n'
        '[trainer]\ncommand = "python train.py {pool}"\ntimeout_seconds = 60\n'
    )
    store = tmp_path / "store"
    result = invoke("run", "--config", str(config), "--store", str(store), "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"dataset   {data} (fingerprint " in result.stdout
    assert "          5 samples (all 5)" in result.stdout
    assert "held out  none" in result.stdout
    assert "trainer   external command `python train.py {pool}` (timeout 60 s)" in result.stdout
    assert "prefect   server at http://prefect.example:4200/api (PREFECT_API_URL)" in result.stdout
    assert not store.exists()


def test_prefect_is_not_even_imported(tmp_path: Path) -> None:
    """In a fresh process, as a user runs it."""
    code = (
        "import sys\n"
        "from pipeline.cli import cli\n"
        f"cli(['run', '--config', {str(TINY)!r}, '--store', {str(tmp_path / 's')!r}, "
        "'--dry-run'], standalone_mode=False)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "a new run" in done.stdout
    assert not (tmp_path / "s").exists()


def test_a_run_being_written_fails_as_the_real_run_would(tmp_path: Path) -> None:
    started_run(tmp_path)
    with run_lock(RunLayout(tmp_path, "r")):  # another process writing it, as far as flock sees
        result = CliRunner().invoke(
            cli, ["run", "--config", str(TINY), "--store", str(tmp_path), "--run-id", "r",
                  "--dry-run"],
        )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.strip().endswith(
        f"Error: {tmp_path / 'runs' / 'r'}: run 'r' is being written by another process"
    )
