"""Per-sample SGD over the dataset, recording loss, gradient norm and weight norm per step."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from pipeline.model import NextTokenModel
from pipeline.steps import StepChunk

# Values are copied out of torch and checked once per chunk rather than per
# step, which keeps the loop free of per-step .item() calls. The chunk size
# bounds the memory a long run holds.
DEFAULT_CHUNK_STEPS = 10_000


@dataclass(frozen=True)
class TrainingResult:
    steps: int  # steps recorded, all with finite values
    diverged_at_step: int | None  # first step whose loss or a norm was not finite


def train(
    inputs: np.ndarray,
    targets: np.ndarray,
    initial_state: dict[str, torch.Tensor],
    embedding_dim: int,
    lr: float,
    epochs: int,
    max_norm: float | None,
    on_chunk: Callable[[StepChunk], None],
    chunk_steps: int = DEFAULT_CHUNK_STEPS,
) -> TrainingResult:
    """Train one arm by SGD on one sample at a time, in dataset order, for `epochs` passes.

    Each step: loss on the sample, backward, total gradient norm, clipping to
    `max_norm` when it is set, update `w -= lr * g`. Chunks of steps go to
    `on_chunk` in order. Training stops at the first non-finite loss or norm;
    that step and later ones are not passed on.
    """
    vocab_size = initial_state["linear.weight"].shape[0]
    model = NextTokenModel(vocab_size, embedding_dim)
    model.load_state_dict(initial_state)
    model.train()
    parameters = list(model.parameters())

    # (n_samples, 1) views, so each step indexes a batch of one without slicing.
    samples = torch.from_numpy(inputs).view(-1, 1)
    labels = torch.from_numpy(targets).view(-1, 1)
    n_samples = len(inputs)

    chunk_steps = max(1, min(chunk_steps, n_samples))
    losses = torch.empty(chunk_steps)
    grad_norms = torch.empty(chunk_steps)
    weight_norms = torch.empty(chunk_steps)

    step = 0
    for epoch in range(1, epochs + 1):
        for chunk_start in range(0, n_samples, chunk_steps):
            chunk_end = min(chunk_start + chunk_steps, n_samples)
            for offset, index in enumerate(range(chunk_start, chunk_end)):
                loss, grad_norm, weight_norm = _sgd_step(model, parameters, samples[index], labels[index], lr, max_norm)
                losses[offset] = loss
                grad_norms[offset] = grad_norm
                weight_norms[offset] = weight_norm

            length = chunk_end - chunk_start
            chunk = StepChunk(
                start=step,
                epoch=epoch,
                loss=losses[:length].numpy().copy(),
                grad_norm=grad_norms[:length].numpy().copy(),
                weight_norm=weight_norms[:length].numpy().copy(),
            )
            finite_length = _finite_prefix(chunk)
            if finite_length < length:
                on_chunk(_head(chunk, finite_length))
                return TrainingResult(steps=step + finite_length, diverged_at_step=step + finite_length)
            on_chunk(chunk)
            step += length

    return TrainingResult(steps=step, diverged_at_step=None)


def _sgd_step(
    model: NextTokenModel,
    parameters: list[torch.nn.Parameter],
    sample: torch.Tensor,
    label: torch.Tensor,
    lr: float,
    max_norm: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for parameter in parameters:
        parameter.grad = None
    loss = F.cross_entropy(model(sample), label)
    loss.backward()

    gradients = [parameter.grad for parameter in parameters]
    grad_norm = get_total_norm(gradients)
    if max_norm is not None:
        clip_grads_with_norm_(parameters, max_norm, grad_norm)

    # Plain SGD without momentum or weight decay, as torch.optim.SGD computes it.
    with torch.no_grad():
        torch._foreach_add_(parameters, gradients, alpha=-lr)
        weight_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(parameters)))
    return loss.detach(), grad_norm, weight_norm


def _finite_prefix(chunk: StepChunk) -> int:
    finite = np.isfinite(chunk.loss) & np.isfinite(chunk.grad_norm) & np.isfinite(chunk.weight_norm)
    bad = np.flatnonzero(~finite)
    return int(bad[0]) if len(bad) else len(finite)


def _head(chunk: StepChunk, length: int) -> StepChunk:
    return StepChunk(
        start=chunk.start,
        epoch=chunk.epoch,
        loss=chunk.loss[:length],
        grad_norm=chunk.grad_norm[:length],
        weight_norm=chunk.weight_norm[:length],
    )
