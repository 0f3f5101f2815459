"""The per-step series file: one CSV row per SGD step, written in chunks as training runs."""

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from pipeline.errors import InputFileError

COLUMNS = ("step", "epoch", "loss", "grad_norm", "weight_norm")
SERIES = ("loss", "grad_norm", "weight_norm")


@dataclass(frozen=True)
class StepChunk:
    """Consecutive steps of one arm; `start` is the global 0-based step of the first row."""

    start: int
    epoch: int  # 1-based epoch that every step of the chunk belongs to
    loss: np.ndarray  # float32, cross-entropy of the step's sample before the update
    grad_norm: np.ndarray  # float32, total L2 norm of all gradients before clipping
    weight_norm: np.ndarray  # float32, total L2 norm of all parameters after the update

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def steps(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self), dtype=np.int64)


class StepWriter:
    """Append chunks to an open CSV stream; %.9g round-trips every float32 exactly."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._stream.write(",".join(COLUMNS) + "\n")

    def write(self, chunk: StepChunk) -> None:
        rows = zip(chunk.steps.tolist(), chunk.loss.tolist(), chunk.grad_norm.tolist(), chunk.weight_norm.tolist())
        self._stream.writelines(
            f"{step},{chunk.epoch},{loss:.9g},{grad:.9g},{weight:.9g}\n" for step, loss, grad, weight in rows
        )


@dataclass(frozen=True)
class StepSeries:
    step: np.ndarray
    epoch: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    weight_norm: np.ndarray

    def __len__(self) -> int:
        return len(self.step)


def read_steps(path: str | Path, expected_steps: int) -> StepSeries:
    """Read a per-step CSV and check its columns, that it has steps 0..expected_steps-1 and finite values."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            header = next(csv.reader(stream), [])
    except FileNotFoundError:
        raise InputFileError(f"{path}: per-step file not found; run its train stage first") from None

    missing = [column for column in COLUMNS if column not in header]
    if missing:
        raise InputFileError(f"{path}: missing column(s) {missing}; expected columns {list(COLUMNS)}")

    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    except ValueError as error:
        raise InputFileError(f"{path}: unreadable row: {error}") from None
    columns = {name: table[:, header.index(name)] if len(table) else np.empty(0) for name in COLUMNS}

    if len(table) != expected_steps or not np.array_equal(columns["step"], np.arange(expected_steps)):
        raise InputFileError(
            f"{path}: expected steps 0..{expected_steps - 1} in order ({expected_steps} rows), "
            f"found {len(table)} rows; re-run its train stage with `dvc repro -f`"
        )
    # Training stops before the first non-finite step, so such a value means an edited file.
    not_finite = np.flatnonzero(~np.isfinite(table).all(axis=1))
    if len(not_finite):
        raise InputFileError(
            f"{path}: step {int(columns['step'][not_finite[0]])} holds a non-finite value; "
            "a per-step file holds only finite values, so re-run its train stage with `dvc repro -f`"
        )
    return StepSeries(
        step=columns["step"].astype(np.int64),
        epoch=columns["epoch"].astype(np.int64),
        loss=columns["loss"],
        grad_norm=columns["grad_norm"],
        weight_norm=columns["weight_norm"],
    )
