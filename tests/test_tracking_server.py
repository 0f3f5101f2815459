"""The pipeline against a real `mlflow server` on loopback, and against servers that do not respond."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from conftest import isolated_env
from pipeline.errors import TrackingError
from pipeline.tracking import HEALTH_TIMEOUT_SECONDS, check_reachable

pytestmark = pytest.mark.slow

SERVER_START_TIMEOUT_SECONDS = 180
# The server ignores credentials. They are here to check that the password reaches no tag, param or output.
USER, PASSWORD = "alice", "s3cret-in-uri"


@dataclass
class Server:
    port: int
    artifacts: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_password(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_healthy(server: Server, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{server.url}/health", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server not healthy after {SERVER_START_TIMEOUT_SECONDS} s:\n{log_path.read_text()}")


@pytest.fixture
def mlflow_server(tmp_path):
    """A tracking server with its own SQLite store, proxying artifacts to its own folder."""
    folder = tmp_path / "server"
    folder.mkdir()
    server = Server(_free_port(), folder / "artifacts")
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
        "--artifacts-destination", str(server.artifacts),
        "--host", "127.0.0.1", "--port", str(server.port), "--workers", "1",
    ]
    log_path = folder / "server.log"
    # The server's background job runner is not needed and slows its start.
    env = isolated_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with log_path.open("w") as log:
        # A session of its own, so the finaliser stops the server's worker processes too.
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_healthy(server, process, log_path)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_pipeline_logs_to_server(reproduced_repo, mlflow_server):
    repo = reproduced_repo
    repo.env = isolated_env(MLFLOW_TRACKING_URI=mlflow_server.url_with_password)
    repo.set_param("arms.clip.max_norm", 0.5)
    result = repo.repro()
    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name("gradient-clipping")
    [run] = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    summary = json.loads((repo.path / "metrics/clip.json").read_text())

    assert result.ran == ["train@clip", "plots"]
    assert run.info.run_name == "clip"
    assert run.info.status == "FINISHED"
    assert run.data.params["arm.max_norm"] == "0.5"
    for key in ("max_grad_norm", "mean_grad_norm", "final_weight_norm", "final_loss"):
        assert run.data.metrics[key] == summary[key]
    assert sorted(metric.step for metric in client.get_metric_history(run_id, "loss")) == list(range(summary["steps"]))

    # Artifacts travel through the server into its own folder, not the repository.
    listed = {item.path for item in client.list_artifacts(run_id)} | {
        item.path for item in client.list_artifacts(run_id, "plots")
    }
    assert listed == {"params.yaml", "plots", "plots/clip.png", "plots/comparison.png"}
    for artifact, local in [
        ("params.yaml", repo.path / "params.yaml"),
        ("plots/clip.png", repo.path / "outputs/plots/clip.png"),
        ("plots/comparison.png", repo.path / "outputs/plots/comparison.png"),
    ]:
        stored = next(mlflow_server.artifacts.rglob(artifact))
        assert stored.read_bytes() == local.read_bytes(), artifact
    assert not (repo.path / "mlflow.db").exists()
    assert not (repo.path / "mlartifacts").exists()

    # The password in MLFLOW_TRACKING_URI reaches neither the run nor the output.
    assert PASSWORD not in result.output
    assert not [value for value in {**run.data.tags, **run.data.params}.values() if PASSWORD in value]


def test_unreachable_server_stops_train(reproduced_repo, tmp_path):
    port = _free_port()  # nothing listens on it
    uri = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"
    repo = reproduced_repo
    repo.env = isolated_env(MLFLOW_TRACKING_URI=uri)
    steps, metrics = tmp_path / "clip.csv", tmp_path / "clip.json"
    result = repo.run(
        "python", "-m", "pipeline.train", "--arm", "clip", "--dataset", "data/dataset.npz",
        "--steps-dir", str(tmp_path), "--metrics-dir", str(tmp_path),
        check=False, timeout=120,
    )

    assert result.returncode == 2
    assert f"MLflow tracking server at http://{USER}:***@127.0.0.1:{port} is unreachable" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert not steps.exists()
    assert not metrics.exists()
    assert not (repo.path / "mlflow.db").exists()
    assert "epoch" not in result.stderr  # training never started


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never responds."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_silent_server_fails_in_time(silent_port):
    # The stage reaches this check before it writes or logs anything, as the test above shows.
    uri = f"http://{USER}:{PASSWORD}@127.0.0.1:{silent_port}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match=re.escape(f"at http://{USER}:***@127.0.0.1:{silent_port} is unreachable")):
        check_reachable(uri)
    # MLflow's own client retries for minutes; the check waits for one timeout.
    assert time.monotonic() - started < HEALTH_TIMEOUT_SECONDS + 5
