"""Summary metrics of one arm, accumulated chunk by chunk so no series is kept in memory."""

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.steps import StepChunk


@dataclass
class _EpochTotals:
    loss_sum: float = 0.0
    steps: int = 0
    max_grad_norm: float = -math.inf


@dataclass
class SummaryAccumulator:
    """Running count, mean and M2 of the gradient norm (Chan et al.'s pairwise update).

    The merged mean and M2 match a two-pass float64 computation over the whole
    series to about 1e-15 relative, far below the float32 noise of the values.
    """

    max_norm: float | None
    steps: int = 0
    grad_mean: float = 0.0
    grad_m2: float = 0.0
    grad_max: float = -math.inf
    clipped_steps: int = 0
    final_loss: float = math.nan
    final_weight_norm: float = math.nan
    epochs: dict[int, _EpochTotals] = field(default_factory=dict)

    def add(self, chunk: StepChunk) -> None:
        if len(chunk) == 0:
            return
        grad = chunk.grad_norm.astype(np.float64)
        loss = chunk.loss.astype(np.float64)

        count = len(grad)
        chunk_mean = float(grad.mean())
        chunk_m2 = float(((grad - chunk_mean) ** 2).sum())
        total = self.steps + count
        delta = chunk_mean - self.grad_mean
        self.grad_mean += delta * count / total
        self.grad_m2 += chunk_m2 + delta * delta * self.steps * count / total
        self.steps = total

        self.grad_max = max(self.grad_max, float(grad.max()))
        if self.max_norm is not None:
            self.clipped_steps += int((grad > self.max_norm).sum())
        self.final_loss = float(loss[-1])
        self.final_weight_norm = float(chunk.weight_norm[-1])

        epoch = self.epochs.setdefault(chunk.epoch, _EpochTotals())
        epoch.loss_sum += float(loss.sum())
        epoch.steps += count
        epoch.max_grad_norm = max(epoch.max_grad_norm, float(grad.max()))

    def to_dict(self, diverged_at_step: int | None) -> dict:
        """Return the summary as strict JSON values: no NaN or infinity, None where undefined."""
        has_steps = self.steps > 0
        return {
            "steps": self.steps,
            "max_grad_norm": self.grad_max if has_steps else None,
            "mean_grad_norm": self.grad_mean if has_steps else None,
            "std_grad_norm": math.sqrt(self.grad_m2 / self.steps) if has_steps else None,
            "final_weight_norm": self.final_weight_norm if has_steps else None,
            "final_loss": self.final_loss if has_steps else None,
            # Steps whose gradient norm exceeded max_norm, so clipping scaled them down.
            "clipped_fraction": self.clipped_steps / self.steps if has_steps else 0.0,
            "diverged_at_step": diverged_at_step,
            "epochs": {
                f"epoch_{number}": {
                    "mean_loss": totals.loss_sum / totals.steps,
                    "max_grad_norm": totals.max_grad_norm,
                }
                for number, totals in sorted(self.epochs.items())
            },
        }
