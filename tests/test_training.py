"""The per-sample SGD loop, its summary metrics and the per-step CSV, against reference values.

The fixtures hold the per-step series of the experiment's reference implementation.
seed_default_series.json has the default params: seed 42, 1000 samples, 10 rare,
3 epochs, lr 0.1 and max_norm 1.0. seed_small_series.json has seed 7, 50 samples,
3 rare, 2 epochs, lr 0.3 and max_norm 0.5.
"""

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset import make_dataset
from pipeline.model import initial_state
from pipeline.params import DatasetParams
from pipeline.steps import SERIES, StepChunk, StepWriter, read_steps
from pipeline.summary import SummaryAccumulator
from pipeline.training import train

FIXTURES = Path(__file__).parent / "fixtures"
EMBEDDING_DIM = 16

# The reference implementation's printed summary for the default params, to 4 decimals.
DEFAULT_SUMMARY = {
    "no_clip": {
        "max_grad_norm": 7.3537,
        "mean_grad_norm": 0.1384,
        "std_grad_norm": 0.6367,
        "final_weight_norm": 8.8106,
        "final_loss": 0.0039,
    },
    "clip": {
        "max_grad_norm": 7.5957,
        "mean_grad_norm": 0.1034,
        "std_grad_norm": 0.6855,
        "final_weight_norm": 9.2687,
        "final_loss": 0.0011,
    },
}
# Its printed mean loss and max gradient norm of each epoch, to 4 decimals.
DEFAULT_EPOCHS = {
    "no_clip": [(0.0777, 7.3239), (0.0678, 7.3537), (0.0666, 7.2928)],
    "clip": [(0.0814, 7.3941), (0.0709, 7.5813), (0.0701, 7.5957)],
}
# Steps of the clip arm whose gradient norm exceeds max_norm 1.0 in the reference series.
DEFAULT_CLIPPED_STEPS = 51


@dataclass(frozen=True)
class ArmResult:
    chunks: list[StepChunk]
    diverged_at_step: int | None
    summary: dict

    def series(self, key: str) -> np.ndarray:
        return np.concatenate([getattr(chunk, key) for chunk in self.chunks])


def load_reference(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def train_reference_arms(reference: dict, chunk_steps: int | None = None) -> dict[str, ArmResult]:
    """Train both arms of a reference run with the pipeline's own code, as the train stage does."""
    params = reference["params"]
    dataset = make_dataset(
        DatasetParams(seed=params["seed"], n_samples=params["n_samples"], n_rare=params["n_rare"], vocab=["A", "B", "C", "D"])
    )
    # The reference implementation seeds the initial weights with its dataset seed.
    start = initial_state(len(dataset.vocab), EMBEDDING_DIM, params["seed"])

    results = {}
    for arm, max_norm in (("no_clip", None), ("clip", params["max_norm"])):
        chunks = []
        accumulator = SummaryAccumulator(max_norm=max_norm)

        def record(chunk: StepChunk) -> None:
            chunks.append(chunk)
            accumulator.add(chunk)

        extra = {} if chunk_steps is None else {"chunk_steps": chunk_steps}
        result = train(
            dataset.inputs, dataset.targets, start, embedding_dim=EMBEDDING_DIM, lr=params["lr"],
            epochs=params["epochs"], max_norm=max_norm, on_chunk=record, **extra,
        )
        results[arm] = ArmResult(chunks, result.diverged_at_step, accumulator.to_dict(result.diverged_at_step))
    return results


@pytest.fixture(scope="module")
def default_reference() -> dict:
    return load_reference("seed_default_series.json")


@pytest.fixture(scope="module")
def default_arms(default_reference) -> dict[str, ArmResult]:
    return train_reference_arms(default_reference)


@pytest.mark.parametrize("arm", ["no_clip", "clip"])
@pytest.mark.parametrize("key", SERIES)
def test_default_series_match_reference(default_arms, default_reference, arm, key):
    expected = np.array(default_reference[arm][key])
    actual = default_arms[arm].series(key)
    assert actual.shape == (3000,)
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("arm", ["no_clip", "clip"])
def test_default_steps_are_contiguous_by_epoch(default_arms, arm):
    result = default_arms[arm]
    assert result.diverged_at_step is None
    steps = np.concatenate([chunk.steps for chunk in result.chunks])
    epochs = np.concatenate([np.full(len(chunk), chunk.epoch) for chunk in result.chunks])
    assert np.array_equal(steps, np.arange(3000))
    assert np.array_equal(epochs, steps // 1000 + 1)


@pytest.mark.parametrize("arm", ["no_clip", "clip"])
def test_default_summary_matches_reference(default_arms, arm):
    summary = default_arms[arm].summary
    assert summary["steps"] == 3000
    assert summary["diverged_at_step"] is None
    for key, expected in DEFAULT_SUMMARY[arm].items():
        assert round(summary[key], 4) == expected, key


@pytest.mark.parametrize("arm", ["no_clip", "clip"])
def test_default_epoch_summary_matches_reference(default_arms, arm):
    epochs = default_arms[arm].summary["epochs"]
    assert list(epochs) == ["epoch_1", "epoch_2", "epoch_3"]
    for (expected_loss, expected_grad), values in zip(DEFAULT_EPOCHS[arm], epochs.values()):
        assert round(values["mean_loss"], 4) == expected_loss
        assert round(values["max_grad_norm"], 4) == expected_grad


def test_default_clipped_fraction(default_arms, default_reference):
    assert default_arms["no_clip"].summary["clipped_fraction"] == 0.0
    assert default_arms["clip"].summary["clipped_fraction"] == DEFAULT_CLIPPED_STEPS / 3000
    reference_grad = np.array(default_reference["clip"]["grad_norm"])
    assert np.count_nonzero(reference_grad > 1.0) == DEFAULT_CLIPPED_STEPS


def test_other_params_match_reference():
    reference = load_reference("seed_small_series.json")
    arms = train_reference_arms(reference)
    for arm, result in arms.items():
        assert result.summary["steps"] == 100
        for key in SERIES:
            np.testing.assert_allclose(result.series(key), reference[arm][key], rtol=1e-6, atol=0, err_msg=f"{arm} {key}")


def summary_values(summary: dict) -> dict[str, float]:
    """Flatten a summary's numbers, epochs included, into one mapping for pytest.approx."""
    values = {key: value for key, value in summary.items() if isinstance(value, (int, float))}
    for name, totals in summary["epochs"].items():
        values.update({f"{name}.{key}": value for key, value in totals.items()})
    return values


def test_chunk_size_changes_no_value():
    reference = load_reference("seed_small_series.json")
    whole = train_reference_arms(reference)
    # 7 does not divide the 50 samples, so chunks end early at every epoch end.
    chunked = train_reference_arms(reference, chunk_steps=7)

    for arm in ("no_clip", "clip"):
        for key in SERIES:
            assert np.array_equal(chunked[arm].series(key), whole[arm].series(key)), f"{arm} {key}"
        # Sums merged in other groupings may differ in the last bits of a float64.
        assert summary_values(chunked[arm].summary) == pytest.approx(summary_values(whole[arm].summary), rel=1e-12)
        assert chunked[arm].summary["diverged_at_step"] is None
        for chunk in chunked[arm].chunks:
            assert 1 <= len(chunk) <= 7
            assert chunk.start // 50 + 1 == chunk.epoch
            assert (chunk.start + len(chunk) - 1) // 50 + 1 == chunk.epoch


def heavy_tailed_series(length: int, seed: int) -> dict[str, np.ndarray]:
    """Float32 values shaped like training output: mostly small, with rare large spikes."""
    rng = np.random.default_rng(seed)
    grad = rng.exponential(0.1, length)
    grad[rng.choice(length, length // 100, replace=False)] += 7.0
    return {
        "loss": rng.exponential(0.05, length).astype(np.float32),
        "grad_norm": grad.astype(np.float32),
        "weight_norm": (8.0 + rng.normal(0, 0.1, length)).astype(np.float32),
    }


def chunks_of(values: dict[str, np.ndarray], n_samples: int, bounds: list[int]) -> list[StepChunk]:
    """Split a series at `bounds`, then at every epoch end, the way the training loop does."""
    length = len(values["loss"])
    cuts = sorted(set(bounds) | set(range(n_samples, length, n_samples)) | {0, length})
    return [
        StepChunk(start=start, epoch=start // n_samples + 1, **{key: array[start:end] for key, array in values.items()})
        for start, end in zip(cuts, cuts[1:])
    ]


def test_accumulator_matches_two_pass_numpy():
    n_samples, epochs = 1000, 3
    values = heavy_tailed_series(n_samples * epochs, seed=0)
    chunks = chunks_of(values, n_samples, bounds=[1, 2, 333, 999, 1500, 1501, 2999])
    accumulator = SummaryAccumulator(max_norm=0.25)
    accumulator.add(StepChunk(start=0, epoch=1, loss=np.empty(0, np.float32), grad_norm=np.empty(0, np.float32), weight_norm=np.empty(0, np.float32)))
    for chunk in chunks:
        accumulator.add(chunk)
    summary = accumulator.to_dict(diverged_at_step=None)

    grad = values["grad_norm"].astype(np.float64)
    loss = values["loss"].astype(np.float64)
    assert summary["steps"] == 3000
    assert summary["mean_grad_norm"] == pytest.approx(np.mean(grad), rel=1e-12)
    assert summary["std_grad_norm"] == pytest.approx(np.std(grad), rel=1e-12)
    assert summary["max_grad_norm"] == float(np.max(grad))
    assert summary["final_loss"] == float(values["loss"][-1])
    assert summary["final_weight_norm"] == float(values["weight_norm"][-1])
    assert summary["clipped_fraction"] == np.count_nonzero(grad > 0.25) / 3000
    for epoch in range(epochs):
        part = slice(epoch * n_samples, (epoch + 1) * n_samples)
        totals = summary["epochs"][f"epoch_{epoch + 1}"]
        assert totals["mean_loss"] == pytest.approx(np.mean(loss[part]), rel=1e-12)
        assert totals["max_grad_norm"] == float(np.max(grad[part]))


def test_accumulator_without_steps_has_no_values():
    summary = SummaryAccumulator(max_norm=None).to_dict(diverged_at_step=0)
    assert summary["steps"] == 0
    for key in ("max_grad_norm", "mean_grad_norm", "std_grad_norm", "final_weight_norm", "final_loss"):
        assert summary[key] is None
    assert summary["clipped_fraction"] == 0.0
    assert summary["diverged_at_step"] == 0
    assert summary["epochs"] == {}
    json.dumps(summary, allow_nan=False)


def test_step_csv_round_trips_float32(tmp_path):
    values = heavy_tailed_series(500, seed=1)
    # Values whose shortest decimal form needs all 9 significant digits, and extremes.
    tricky = np.array(
        [0.1, 1 / 3, 16777217.0, np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1.4e-45, 0.0], dtype=np.float32
    )
    values["loss"][: len(tricky)] = tricky
    values["grad_norm"][-len(tricky) :] = tricky
    path = tmp_path / "steps.csv"
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = StepWriter(stream)
        for chunk in chunks_of(values, n_samples=200, bounds=[17]):
            writer.write(chunk)

    series = read_steps(path, expected_steps=500)
    assert np.array_equal(series.step, np.arange(500))
    assert np.array_equal(series.epoch, np.arange(500) // 200 + 1)
    for key in SERIES:
        read_back = getattr(series, key).astype(np.float32)
        assert read_back.tobytes() == values[key].tobytes(), key


def test_step_csv_rejects_missing_rows(tmp_path):
    path = tmp_path / "steps.csv"
    stream = io.StringIO()
    StepWriter(stream).write(StepChunk(start=0, epoch=1, **heavy_tailed_series(10, seed=2)))
    path.write_text(stream.getvalue())

    with pytest.raises(ValueError, match="expected steps 0..10") as raised:
        read_steps(path, expected_steps=11)
    assert str(path) in str(raised.value)
