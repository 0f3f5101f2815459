"""The benchmarks' plain-script baseline trains exactly what the pipeline trains."""

import numpy as np
import pytest
import torch

from benchmarks import naive
from pipeline.dataset import make_dataset
from pipeline.model import initial_state
from pipeline.params import DatasetParams
from pipeline.training import train

PARAMS = DatasetParams(seed=7, n_samples=150, n_rare=3, vocab=["A", "B", "C", "D"])


def test_naive_dataset_matches_stage():
    inputs, targets, rare_indices = naive.draw_dataset(PARAMS.seed, PARAMS.n_samples, PARAMS.n_rare, len(PARAMS.vocab))
    dataset = make_dataset(PARAMS)

    np.testing.assert_array_equal(inputs.numpy(), dataset.inputs)
    np.testing.assert_array_equal(targets.numpy(), dataset.targets)
    assert rare_indices == dataset.rare_indices.tolist()


@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_naive_loop_matches_pipeline(max_norm):
    dataset = make_dataset(PARAMS)
    chunks = []
    train(dataset.inputs, dataset.targets, initial_state(4, 16, 3), embedding_dim=16, lr=0.3, epochs=2,
          max_norm=max_norm, on_chunk=chunks.append)
    series = naive.train_naive(
        torch.from_numpy(dataset.inputs), torch.from_numpy(dataset.targets), naive.initial_weights(4, 16, 3),
        embedding_dim=16, lr=0.3, epochs=2, max_norm=max_norm,
    )

    for name, values in zip(("loss", "grad_norm", "weight_norm"), series):
        ours = np.concatenate([getattr(chunk, name) for chunk in chunks])
        assert len(ours) == 300
        np.testing.assert_allclose(ours, values, rtol=1e-6, err_msg=name)
