"""The logger process against a real SQLite store: values, thinning, errors, backpressure, a vanished parent."""

import signal
import sqlite3
import threading
import time

import mlflow
import numpy as np
import pytest

from pipeline import logger_process
from pipeline.errors import TrackingError
from pipeline.logger_process import LoggerError, RunLogger
from pipeline.steps import StepChunk

pytestmark = pytest.mark.slow

RUN_PARAMS = {"arm.name": "clip", "arm.max_norm": 1.0, "train.lr": 0.1}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder with a params file and a dataset file, whose store is tmp_path/mlflow.db."""
    (tmp_path / "params.yaml").write_text("train: {lr: 0.1}\n")
    (tmp_path / "dataset.npz").write_bytes(b"not read, only hashed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def open_logger() -> RunLogger:
    run = RunLogger.start()
    run.request_run("clip", "logger-test", "params.yaml", "dataset.npz", RUN_PARAMS)
    run.wait_for_run()
    return run


def chunk(start: int, length: int) -> StepChunk:
    # Values that float32 cannot represent exactly, so a conversion through another type would show.
    values = np.arange(start, start + length, dtype=np.float32) / np.float32(7)
    return StepChunk(start=start, epoch=1, loss=values, grad_norm=values * 2, weight_norm=values * 3)


def stored_run(workspace):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("logger-test").experiment_id])
    return client, run


def test_steps_stored_exactly(workspace):
    with open_logger() as run:
        # Ctrl-C reaches the logger too; it must leave the run to the training process.
        run._process.send_signal(signal.SIGINT)
        for start in range(0, 3000, 1000):
            run.log_steps(chunk(start, 1000), every_n_steps=1)
        run.log_result({"steps": 3000, "final_loss": 0.5, "diverged_at_step": None, "epochs": {}}, {"diverged": "false"})

    client, stored = stored_run(workspace)
    assert stored.info.status == "FINISHED"
    assert stored.data.params == {key: str(value) for key, value in RUN_PARAMS.items()}
    assert stored.data.tags["diverged"] == "false"
    assert stored.data.tags["arm"] == "clip"
    assert stored.data.metrics["final_loss"] == 0.5
    expected = np.concatenate([chunk(start, 1000).grad_norm for start in range(0, 3000, 1000)])
    history = sorted(client.get_metric_history(stored.info.run_id, "grad_norm"), key=lambda metric: metric.step)
    assert [metric.step for metric in history] == list(range(3000))
    assert [metric.value for metric in history] == expected.tolist()


def test_thinned_steps_and_last(workspace):
    with open_logger() as run:
        run.log_steps(chunk(0, 1000), every_n_steps=100)
        run.log_steps(chunk(1000, 50), every_n_steps=100)  # contains step 1000 only
        run.log_steps(chunk(1050, 40), every_n_steps=100)  # contains no multiple of 100, only the last step
        run.log_result({"epochs": {}}, {})

    client, stored = stored_run(workspace)
    history = sorted(client.get_metric_history(stored.info.run_id, "loss"), key=lambda metric: metric.step)
    assert [metric.step for metric in history] == [*range(0, 1001, 100), 1089]
    assert history[-1].value == chunk(1050, 40).loss[-1].item()
    assert stored.data.metrics["loss"] == history[-1].value  # the latest value is the final one


def test_last_step_on_multiple_sent_once(workspace):
    with open_logger() as run:
        run.log_steps(chunk(0, 201), every_n_steps=100)
        run.log_result({"epochs": {}}, {})

    client, stored = stored_run(workspace)
    steps = [metric.step for metric in client.get_metric_history(stored.info.run_id, "loss")]
    assert sorted(steps) == [0, 100, 200]


def test_store_error_stops_training(workspace):
    with pytest.raises(LoggerError, match="no such table: metrics"):
        with open_logger() as run:
            with sqlite3.connect(workspace / "mlflow.db") as connection:
                connection.execute("ALTER TABLE metrics RENAME TO metrics_moved")
            # The error arrives with a later chunk's call or with the result.
            for start in range(0, 5000, 1000):
                run.log_steps(chunk(start, 1000), every_n_steps=1)
            run.log_result({"epochs": {}}, {})
    with sqlite3.connect(workspace / "mlflow.db") as connection:
        connection.execute("ALTER TABLE metrics_moved RENAME TO metrics")

    _, stored = stored_run(workspace)
    assert stored.info.status == "FAILED"
    assert stored.info.end_time is not None


def test_slow_store_makes_training_wait(workspace):
    run = open_logger()
    sent = []

    def send_chunks():
        for index in range(logger_process.MAX_CHUNKS_IN_FLIGHT + 2):
            run.log_steps(chunk(100 * index, 100), every_n_steps=1)
            sent.append(index)

    # An open write transaction blocks every other writer of the store.
    blocker = sqlite3.connect(workspace / "mlflow.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    sender = threading.Thread(target=send_chunks)
    sender.start()
    sender.join(timeout=2)
    assert sender.is_alive()
    assert len(sent) == logger_process.MAX_CHUNKS_IN_FLIGHT

    blocker.execute("COMMIT")
    blocker.close()
    sender.join(timeout=30)
    assert len(sent) == logger_process.MAX_CHUNKS_IN_FLIGHT + 2
    run.log_result({"epochs": {}}, {})
    run.end("FINISHED")


def test_closed_pipe_ends_run_killed(workspace):
    run = open_logger()
    run.log_steps(chunk(0, 100), every_n_steps=1)

    # What the logger receives when the training process dies of SIGKILL.
    run._process.stdin.close()
    run._process.wait(timeout=60)

    _, stored = stored_run(workspace)
    assert stored.info.status == "KILLED"
    assert stored.info.end_time is not None


def test_interrupt_before_run_exists_kills_logger(workspace):
    with pytest.raises(KeyboardInterrupt):
        with RunLogger.start() as run:
            raise KeyboardInterrupt

    assert run._process.returncode == -signal.SIGKILL
    assert not (workspace / "mlflow.db").exists()


def test_unreachable_server_raises(workspace, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:9")
    started = time.monotonic()

    with pytest.raises(TrackingError, match=r"at http://user:\*\*\*@127.0.0.1:9 is unreachable"):
        with RunLogger.start() as run:
            run.request_run("clip", "logger-test", "params.yaml", "dataset.npz", RUN_PARAMS)
            run.wait_for_run()

    assert run._process.returncode == 0
    assert time.monotonic() - started < 60


def test_killed_logger_reported(workspace):
    run = open_logger()
    run._process.kill()
    run._process.wait()

    with pytest.raises(LoggerError, match="the logger process was killed by SIGKILL unexpectedly"):
        run.log_steps(chunk(0, 1000), every_n_steps=1)
    with pytest.raises(LoggerError, match="could not be ended as FAILED and stays RUNNING: the logger process was killed by SIGKILL"):
        run.end("FAILED")
