"""ArmRun's background metric batches: step order, bounded backlog, errors raised, dropped after a failure."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline import tracking
from pipeline.steps import StepChunk
from pipeline.tracking import ArmRun


class FakeClient:
    """Records log_batch calls; each call blocks until `release` is set, to simulate a slow store."""

    def __init__(self, fail_on_call: int | None = None):
        self.batches: list[list] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_on_call = fail_on_call
        self.terminated: list[str] = []
        self.max_backlog = 0

    def create_run(self, experiment_id, run_name, tags):
        return SimpleNamespace(info=SimpleNamespace(run_id="run-1"))

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.release.wait()
        self.batches.append(list(metrics))
        if self.fail_on_call is not None and len(self.batches) == self.fail_on_call:
            raise RuntimeError("store rejected the batch")

    def set_terminated(self, run_id, status):
        self.terminated.append(status)


def chunk(start: int, length: int) -> StepChunk:
    values = np.arange(start, start + length, dtype=np.float32)
    return StepChunk(start=start, epoch=1, loss=values, grad_norm=values * 2, weight_norm=values * 3)


def test_batches_arrive_in_step_order():
    client = FakeClient()
    run = ArmRun(client, "0", "clip", tags={})
    for start in range(0, 3000, 1000):
        run.log_steps(chunk(start, 1000), every_n_steps=1)
    run.wait()
    run.finish("FINISHED")

    assert all(len(batch) == tracking.MAX_METRICS_PER_REQUEST for batch in client.batches)
    logged = [(metric.key, metric.step, metric.value) for batch in client.batches for metric in batch]
    assert len(logged) == 9000
    assert logged[:2] == [("loss", 0, 0.0), ("loss", 1, 1.0)]
    assert [entry for entry in logged if entry[0] == "grad_norm"][-1] == ("grad_norm", 2999, 5998.0)
    assert client.terminated == ["FINISHED"]


def test_backlog_is_bounded(monkeypatch):
    monkeypatch.setattr(tracking, "MAX_PENDING_BATCHES", 3)
    client = FakeClient()
    client.release.clear()
    run = ArmRun(client, "0", "clip", tags={})

    # Each chunk of 100 steps is one batch of 300 points; the sixth must wait for the store.
    logger = threading.Thread(target=lambda: [run.log_steps(chunk(100 * i, 100), 1) for i in range(6)])
    logger.start()
    logger.join(timeout=0.5)
    assert logger.is_alive()
    assert len(run._pending) <= 3

    client.release.set()
    logger.join(timeout=5)
    run.wait()
    assert len(client.batches) == 6


def test_failed_batch_raises():
    client = FakeClient(fail_on_call=2)
    run = ArmRun(client, "0", "clip", tags={})
    # The error surfaces at the next log_steps call if the batch has failed by
    # then, else at wait(): either way before the run can end as FINISHED.
    with pytest.raises(RuntimeError, match="store rejected the batch"):
        for start in range(0, 3000, 1000):
            run.log_steps(chunk(start, 1000), every_n_steps=1)
        run.wait()
    run.finish("FAILED")
    assert client.terminated == ["FAILED"]


def test_finish_drops_unsent_batches():
    client = FakeClient()
    client.release.clear()
    run = ArmRun(client, "0", "clip", tags={})
    for start in range(0, 10_000, 1000):
        run.log_steps(chunk(start, 1000), every_n_steps=1)  # 30 batches, within the default backlog

    threading.Timer(0.2, client.release.set).start()
    run.finish("KILLED")

    # The batch already in the store's hands completes; the queued ones are dropped.
    assert len(client.batches) == 1
    assert client.terminated == ["KILLED"]


def test_thinned_steps_only():
    client = FakeClient()
    run = ArmRun(client, "0", "clip", tags={})
    run.log_steps(chunk(0, 1000), every_n_steps=100)
    run.wait()
    steps = sorted({metric.step for batch in client.batches for metric in batch})
    assert steps == list(range(0, 1000, 100))
