"""Scheduled operation against a real Prefect server on a loopback port: `stm deploy` on a
work pool run by a worker, and `stm serve`, each triggered as a user would, with manifests
in the store, artifacts on the runs, and a failing run marked Failed with the pipeline's
one-line message. The server and every Prefect client run in their own processes; this
test talks to the REST API with plain HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.runs import is_complete, store_runs
from pipeline.verify import manifest_paths, verify_store

BIN = Path(sys.executable).parent
FLOW = "stm-scheduled-curation"

CONFIG = """
seed = 0
rounds = 1
epochs = 2

[data.arithmetic]
n_easy = 24
n_hard = 8
eval_easy = 10
eval_hard = 4
hard_min_digits = 2
hard_max_digits = 2

[model]
embed_dim = 8
hidden_dim = 16

[train]
batch_size = 16

[scoring]
batch_size = 32
threads = 1
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen[bytes]) -> None:
    """The server and the runner start children of their own: end the whole group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    log = open(home / "server.log", "wb")  # noqa: SIM115 (closed with the fixture)
    process = subprocess.Popen(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, (home / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("Prefect server did not start in 180 s")
        client_home = tmp_path_factory.mktemp("prefect-client")
        yield {
            **os.environ,
            "PREFECT_API_URL": url,
            "PREFECT_HOME": str(client_home),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
    finally:
        _stop(process)
        log.close()


# What Prefect's own client retries: a server busy with its SQLite database answers 503.
RETRIED_STATUSES = {429, 502, 503}


def _api(env: dict[str, str], method: str, path: str, **kwargs: Any) -> Any:
    for attempt in range(20):
        response = httpx.request(method, env["PREFECT_API_URL"] + path, timeout=30, **kwargs)
        if response.status_code not in RETRIED_STATUSES:
            break
        time.sleep(0.5 * (attempt + 1))
    response.raise_for_status()
    return response.json()


def _deployment(env: dict[str, str], name: str) -> dict[str, Any]:
    return _api(env, "GET", f"/deployments/name/{FLOW}/{name}")


def _trigger(env: dict[str, str], deployment: dict[str, Any], **parameters: Any) -> str:
    run = _api(
        env,
        "POST",
        f"/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": parameters},
    )
    return run["id"]


def _wait_final(env: dict[str, str], run_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _api(env, "GET", f"/flow_runs/{run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    pytest.fail(f"flow run {run_id} did not finish in {timeout} s")


def _artifacts(env: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    return _api(
        env, "POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
    )


def _stm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "stm", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _check_store(store: Path) -> None:
    runs = store_runs(store)
    assert len(runs) == 1 and is_complete(runs[0])
    assert sorted(p.name for p in runs[0].manifest_dir.iterdir()) == [
        "r00-e000.json",
        "r00-e001.json",
        "r00-e002.json",
    ]
    assert verify_store(store, manifest_paths(store))[1] == []


def test_deploy_on_a_work_pool_runs_through_a_worker(
    server: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "nightly.toml"
    config.write_text(CONFIG)
    store = tmp_path / "store"
    deployed = _stm(
        server,
        "deploy",
        "--name", "nightly",
        "--config", str(config),
        "--store", str(store),
        "--work-pool", "stm-test-pool",
        "--cron", "0 3 * * *",
        "--json",
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["parameters"] == {
        "config": str(config),
        "store": str(store),
    }
    deployment = _deployment(server, "nightly")
    assert deployment["work_pool_name"] == "stm-test-pool"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]

    good = _trigger(server, deployment)
    bad = _trigger(server, deployment, data=str(tmp_path / "missing.parquet"))
    worker = subprocess.run(
        [BIN / "prefect", "worker", "start", "--pool", "stm-test-pool", "--run-once"],
        env=server,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    good_run, bad_run = _wait_final(server, good, 30), _wait_final(server, bad, 30)
    assert good_run["state"]["type"] == "COMPLETED", worker.stdout[-3000:]
    _check_store(store)
    keys = sorted(a["key"] or "" for a in _artifacts(server, good))
    run_id = store_runs(store)[0].run_id
    assert keys.count(f"stm-pool-{run_id}") == 3  # reset + 2 epochs
    assert "stm-run-summary" in keys

    assert bad_run["state"]["type"] == "FAILED"
    assert (
        bad_run["state"]["message"] == f"{tmp_path / 'missing.parquet'}: no such file or directory"
    )


def test_serve_runs_triggered_flow_runs(server: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "served.toml"
    config.write_text(CONFIG)
    store = tmp_path / "store"
    serve = subprocess.Popen(
        [BIN / "stm", "serve", "--name", "served", "--config", str(config), "--store", str(store),
         "--interval", "86400"],
        env=server,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert serve.poll() is None, "stm serve exited"
            try:
                deployment = _deployment(server, "served")
                break
            except httpx.HTTPStatusError:
                assert time.monotonic() < deadline, "stm serve registered no deployment"
                time.sleep(1)
        assert [s["schedule"]["interval"] for s in deployment["schedules"]] == [86400.0]
        run = _wait_final(server, _trigger(server, deployment), 300)
        assert run["state"]["type"] == "COMPLETED"
        _check_store(store)
    finally:
        _stop(serve)


def test_deploy_needs_a_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = _stm(env, "deploy", "--store", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith("Error: stm deploy needs a Prefect server")
    assert "Traceback" not in result.stderr


def test_deploy_checks_the_config_and_schedule_first(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 0\n")
    result = _stm(dict(os.environ), "deploy", "--config", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {bad}: config key epochs: must be at least 1")
    result = _stm(dict(os.environ), "serve", "--cron", "not a cron")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: --cron 'not a cron': not a valid cron expression"
