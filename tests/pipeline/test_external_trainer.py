"""Running an external trainer: placeholders and STM_* variables, every failure as one
line naming the command, the step and the last line of stderr, and its metrics file."""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.config import TrainerConfig
from pipeline.errors import TrainerError
from pipeline.external_trainer import (
    TrainerCall,
    last_line,
    read_trainer_metrics,
    run_trainer,
    trainer_argv,
    trainer_env,
)


def make_call(tmp_path: Path) -> TrainerCall:
    return TrainerCall(
        pool=tmp_path / "pool",
        workdir=tmp_path / "work",
        scorer=tmp_path / "scorers" / "r00-e001.onnx",
        round_index=0,
        epoch=1,
        seed=7,
    )


def fake_trainer(tmp_path: Path, body: str, args: str = "") -> str:
    """A command running a Python script with `body`, as a user would configure it."""
    script = tmp_path / "fake_trainer.py"
    script.write_text("import os, sys, time\n" + textwrap.dedent(body))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {args}".strip()


def run(tmp_path: Path, command: str, timeout: float | None = None) -> float:
    call = make_call(tmp_path)
    logs = tmp_path / "logs"
    return run_trainer(
        TrainerConfig(command, timeout), call, logs / "r00-e001.stdout", logs / "r00-e001.stderr"
    )


def test_placeholders_are_substituted_inside_words_and_other_braces_kept(tmp_path: Path) -> None:
    argv = ["train", "--pool={pool}", "{scorer}", "r{round}e{epoch}s{seed}", "{other}", "{}"]
    call = make_call(tmp_path)
    assert trainer_argv(argv, call) == [
        "train",
        f"--pool={tmp_path / 'pool'}",
        str(call.scorer),
        "r0e1s7",
        "{other}",
        "{}",
    ]


def test_the_same_values_are_in_the_environment(tmp_path: Path) -> None:
    env = trainer_env(make_call(tmp_path), {"PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "STM_POOL": str(tmp_path / "pool"),
        "STM_WORKDIR": str(tmp_path / "work"),
        "STM_SCORER": str(tmp_path / "scorers" / "r00-e001.onnx"),
        "STM_ROUND": "0",
        "STM_EPOCH": "1",
        "STM_SEED": "7",
    }


def test_a_trainer_that_writes_its_scorer_succeeds(tmp_path: Path) -> None:
    command = fake_trainer(
        tmp_path,
        """
        print("training on", os.environ["STM_POOL"])
        open(sys.argv[1], "wb").write(b"onnx")
        """,
        "{scorer}",
    )
    assert run(tmp_path, command) > 0
    call = make_call(tmp_path)
    assert call.scorer.read_bytes() == b"onnx"
    assert call.workdir.is_dir()
    stdout = (tmp_path / "logs" / "r00-e001.stdout").read_text()
    assert stdout == f"training on {tmp_path / 'pool'}\n"


def test_a_non_zero_exit_names_command_step_and_last_stderr_line(tmp_path: Path) -> None:
    command = fake_trainer(
        tmp_path,
        """
        print("loading the pool", file=sys.stderr)
        print("ValueError: no column 'pixels'\\n\\n", file=sys.stderr)
        sys.exit(3)
        """,
    )
    with pytest.raises(TrainerError) as raised:
        run(tmp_path, command)
    assert str(raised.value) == (
        f"trainer command '{command}' exited with code 3 at round 0 epoch 1: "
        f"ValueError: no column 'pixels' (log: {tmp_path / 'logs' / 'r00-e001.stderr'})"
    )


def test_a_trainer_that_writes_no_scorer_fails(tmp_path: Path) -> None:
    scorer = make_call(tmp_path).scorer
    scorer.parent.mkdir(parents=True)
    scorer.write_bytes(b"left over from an earlier attempt")
    command = fake_trainer(tmp_path, "pass\n")
    with pytest.raises(TrainerError) as raised:
        run(tmp_path, command)
    assert str(raised.value) == (
        f"trainer command '{command}' wrote no scorer to {scorer} at round 0 epoch 1: "
        f"nothing on stderr (log: {tmp_path / 'logs' / 'r00-e001.stderr'})"
    )


def test_a_trainer_that_runs_too_long_is_stopped_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    command = fake_trainer(
        tmp_path,
        f"""
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("epoch 1 of 100", file=sys.stderr, flush=True)
        time.sleep(30)
        """,
    )
    with pytest.raises(TrainerError, match=r"timed out after 5 s at round 0 epoch 1: epoch 1"):
        run(tmp_path, command, timeout=5.0)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while is_running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_running(child)


def is_running(pid: int) -> bool:
    """Alive and not a zombie waiting for its new parent to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_command_that_cannot_start_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        TrainerError,
        match=r"trainer command 'no-such-trainer \{pool\}' could not start at round 0 epoch 1: "
        r".*No such file or directory",
    ):
        run(tmp_path, "no-such-trainer {pool}")


def test_last_line_reads_the_end_of_a_long_log(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("x" * 100_000 + "\nfirst\n  last  \n\n")
    assert last_line(log) == "last"
    log.write_text("")
    assert last_line(log) is None


def test_metrics_are_a_flat_object_of_numbers(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    assert read_trainer_metrics(path) == {}
    path.write_text(json.dumps({"accuracy": 0.9, "epochs": 2}))
    assert read_trainer_metrics(path) == {"accuracy": 0.9, "epochs": 2}


FLAT = "trainer metrics must be a flat JSON object of finite numbers"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "trainer metrics are not valid JSON: Expecting property name"),
        ("[1, 2]", "trainer metrics must be a JSON object of numbers"),
        ('{"accuracy": "high"}', f"{FLAT}; 'accuracy' is \"high\""),
        ('{"by_group": {"a": 1}}', f"{FLAT}; 'by_group' is {{\"a\": 1}}"),
        ('{"ok": true}', f"{FLAT}; 'ok' is true"),
        ('{"loss": NaN}', f"{FLAT}; 'loss' is NaN"),
    ],
)
def test_bad_metrics_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(text)
    with pytest.raises(TrainerError) as raised:
        read_trainer_metrics(path)
    assert str(raised.value).startswith(f"{path}: {message}")
