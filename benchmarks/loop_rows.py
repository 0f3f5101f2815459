"""Rows 4 and 5, measured inside this process: the training loop and the MLflow logging of one arm.

Both use the default params and the arm `clip` (max_norm 1.0), whose steps
also run the clipping code.
"""

import io
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from benchmarks import naive
from benchmarks.report import Line, at_least_faster, median
from benchmarks.workspace import PROJECT_ROOT
from pipeline.dataset import make_dataset, save_dataset
from pipeline.model import initial_state
from pipeline.params import load_params
from pipeline.steps import StepChunk, StepWriter
from pipeline.summary import SummaryAccumulator
from pipeline.training import train

ARM = "clip"
RELATIVE_TOLERANCE = 1e-6


class DefaultArm:
    """The default dataset and params of one arm, ready to train in this process."""

    def __init__(self):
        self.params = load_params(PROJECT_ROOT / "params.yaml")
        self.dataset = make_dataset(self.params.dataset)
        self.max_norm = self.params.arm(ARM).max_norm
        self.steps = self.params.train.epochs * self.dataset.n_samples

    def train_pipeline(self, on_chunk) -> None:
        train(
            self.dataset.inputs, self.dataset.targets,
            initial_state(len(self.dataset.vocab), self.params.model.embedding_dim, self.params.model.init_seed),
            embedding_dim=self.params.model.embedding_dim, lr=self.params.train.lr,
            epochs=self.params.train.epochs, max_norm=self.max_norm, on_chunk=on_chunk,
        )

    def train_naive(self) -> tuple[list[float], list[float], list[float]]:
        weights = naive.initial_weights(len(self.dataset.vocab), self.params.model.embedding_dim,
                                        self.params.model.init_seed)
        return naive.train_naive(
            torch.from_numpy(self.dataset.inputs), torch.from_numpy(self.dataset.targets), weights,
            self.params.model.embedding_dim, self.params.train.lr, self.params.train.epochs, self.max_norm,
        )


def row5(arm: DefaultArm, runs: int, echo) -> tuple[list[Line], list[StepChunk], dict]:
    """Steps per second of the pipeline loop and the naive loop, and the largest relative difference."""
    default_threads = torch.get_num_threads()
    naive_rates, pipeline_rates, default_thread_rates = [], [], []
    chunks: list[StepChunk] = []
    naive_series = None
    for _ in range(runs):
        # Each side with the thread count it runs with: the plain script leaves
        # torch's default, the train stage sets one thread.
        torch.set_num_threads(default_threads)
        started = time.perf_counter()
        naive_series = arm.train_naive()
        naive_rates.append(arm.steps / (time.perf_counter() - started))

        torch.set_num_threads(1)
        chunks = []
        started = time.perf_counter()
        arm.train_pipeline(chunks.append)
        pipeline_rates.append(arm.steps / (time.perf_counter() - started))

        torch.set_num_threads(default_threads)
        started = time.perf_counter()
        arm.train_pipeline(lambda chunk: None)
        default_thread_rates.append(arm.steps / (time.perf_counter() - started))
    torch.set_num_threads(default_threads)
    echo(f"loop: pipeline {median(pipeline_rates):,.0f} steps/s, naive {median(naive_rates):,.0f} steps/s")

    difference = max_relative_difference(chunks, naive_series)
    ratio = median(pipeline_rates) / median(naive_rates)
    line = Line(
        "5", "training steps/s, pipeline loop", median(pipeline_rates), "steps/s",
        "naive loop (.item() per step)", median(naive_rates), ratio, ">= 1.2x, values to 1e-6",
        ratio >= 1.2 and difference <= RELATIVE_TOLERANCE, pipeline_rates, naive_rates,
        note=f"largest relative difference of any per-step value: {difference:.1e} (limit {RELATIVE_TOLERANCE:g})",
    )
    extra = {
        "pipeline_loop_steps_per_second_at_default_threads": median(default_thread_rates),
        "default_threads": default_threads,
        "max_relative_difference": difference,
    }
    return [line], chunks, extra


def max_relative_difference(chunks: list[StepChunk], naive_series) -> float:
    largest = 0.0
    for name, values in zip(("loss", "grad_norm", "weight_norm"), naive_series):
        ours = np.concatenate([getattr(chunk, name) for chunk in chunks]).astype(np.float64)
        theirs = np.asarray(values, dtype=np.float64)
        if ours.shape != theirs.shape:
            raise RuntimeError(f"{name}: pipeline has {ours.shape[0]} steps, naive loop {theirs.shape[0]}")
        largest = max(largest, float(np.max(np.abs(ours - theirs) / np.abs(theirs))))
    return largest


def row4(arm: DefaultArm, chunks: list[StepChunk], runs: int, log_metric_samples: list[float], parent: Path, echo):
    """Batched logging of one arm's 9000 points, against per-call logging and against its training time.

    The logging goes through the train stage's logger process, each run into a
    fresh store; opening the run and ending it are not timed.
    """
    from pipeline.logger_process import RunLogger

    def open_run(name: str) -> RunLogger:
        store = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
        save_dataset(arm.dataset, store / "dataset.npz")
        # The logger process reads both variables: the store, and the root
        # that contains its artifacts (else this repository's mlartifacts/).
        environment = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "DVC_ROOT": str(store)}
        with mock.patch.dict(os.environ, environment):
            run = RunLogger.start()
        run.request_run(ARM, "benchmark", PROJECT_ROOT / "params.yaml", store / "dataset.npz", {"arm.name": name})
        run.wait_for_run()
        return run

    def train_and_write(run: RunLogger | None) -> float:
        accumulator = SummaryAccumulator(max_norm=arm.max_norm)
        writer = StepWriter(io.StringIO())

        def record(chunk: StepChunk) -> None:
            writer.write(chunk)
            accumulator.add(chunk)
            if run is not None:
                run.log_steps(chunk, 1)

        started = time.perf_counter()
        arm.train_pipeline(record)
        if run is not None:
            run.log_result(accumulator.to_dict(None), {})
        return time.perf_counter() - started

    torch.set_num_threads(1)
    batched, alone, with_logging = [], [], []
    for index in range(runs):
        run = open_run(f"batched-{index}")
        started = time.perf_counter()
        for chunk in chunks:
            run.log_steps(chunk, 1)
        run.log_result({"epochs": {}}, {})
        batched.append(time.perf_counter() - started)
        run.end("FINISHED")

        run = open_run(f"with-training-{index}")
        alone.append(train_and_write(None))
        with_logging.append(train_and_write(run))
        run.end("FINISHED")
    points = sum(len(chunk) for chunk in chunks) * 3
    echo(f"logging: {points} points batched in {median(batched):.2f} s")

    lines = []
    if log_metric_samples:
        lines.append(at_least_faster(
            "4a", f"MLflow logging of {points} points, batched", batched,
            "one log_metric call per point", log_metric_samples, 20,
        ))
    share = (median(with_logging) - median(alone)) / median(alone)
    lines.append(Line(
        "4b", "training + logging, over training alone", median(with_logging), "s",
        "training without tracking", median(alone), share + 1, "<= 1.3x", share <= 0.30,
        with_logging, alone, note=f"logging adds {100 * share:.0f}% to the arm's training time",
    ))
    return lines
