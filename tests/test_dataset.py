"""The dataset stage: the seeded draw, the .npz artifact and the checks on reading it back."""

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset import Dataset, load_dataset, make_dataset, save_dataset
from pipeline.errors import InputFileError
from pipeline.params import DatasetParams

FIXTURE = Path(__file__).parent / "fixtures" / "seed_default_series.json"
VOCAB = ["A", "B", "C", "D"]
DEFAULT = DatasetParams(seed=42, n_samples=1000, n_rare=10, vocab=VOCAB)

# The reference implementation's dataset for seed 42, 1000 samples and 10 rare:
# rare positions, md5 of the inputs as little-endian int64, the first 20 inputs
# and the count of each token id.
DEFAULT_RARE_INDICES = [25, 104, 114, 142, 228, 250, 281, 654, 754, 759]
DEFAULT_INPUTS_MD5 = "2008c53ccea99b4d9e181d4f05bdf865"
DEFAULT_FIRST_INPUTS = [2, 3, 0, 2, 2, 3, 0, 0, 2, 1, 2, 2, 2, 2, 3, 0, 3, 3, 3, 2]
DEFAULT_TOKEN_COUNTS = [258, 230, 232, 280]


def md5_of(array: np.ndarray) -> str:
    return hashlib.md5(array.astype("<i8").tobytes()).hexdigest()


@pytest.fixture(scope="module")
def default_dataset() -> Dataset:
    return make_dataset(DEFAULT)


def test_default_rare_indices_match_reference(default_dataset):
    assert default_dataset.rare_indices.tolist() == DEFAULT_RARE_INDICES
    assert default_dataset.rare_indices.tolist() == json.loads(FIXTURE.read_text())["rare_indices"]


def test_default_inputs_match_reference(default_dataset):
    inputs = default_dataset.inputs
    assert inputs.dtype == np.int64
    assert inputs.shape == (1000,)
    assert inputs[:20].tolist() == DEFAULT_FIRST_INPUTS
    assert np.bincount(inputs, minlength=4).tolist() == DEFAULT_TOKEN_COUNTS
    assert md5_of(inputs) == DEFAULT_INPUTS_MD5


def test_default_targets_rare_only_at_indices(default_dataset):
    targets = default_dataset.targets
    assert targets.dtype == np.int64
    assert np.flatnonzero(targets == 1).tolist() == DEFAULT_RARE_INDICES
    assert np.count_nonzero(targets == 0) == 990
    assert set(targets.tolist()) == {0, 1}


@pytest.mark.parametrize(
    ("params", "inputs_md5", "rare_indices"),
    [
        # Values of the reference implementation for the same keys.
        (DatasetParams(seed=42, n_samples=200, n_rare=4, vocab=VOCAB), "851974f783882ef3c79b590b5a64308e", [6, 28, 163, 189]),
        (DatasetParams(seed=7, n_samples=50, n_rare=3, vocab=VOCAB), "8d6b178ea5213254a92ed28525a0d805", [9, 20, 25]),
    ],
)
def test_other_params_match_reference(params, inputs_md5, rare_indices):
    dataset = make_dataset(params)
    assert md5_of(dataset.inputs) == inputs_md5
    assert dataset.rare_indices.tolist() == rare_indices
    assert dataset.seed == params.seed


def test_make_dataset_without_rare_samples():
    dataset = make_dataset(DatasetParams(seed=42, n_samples=30, n_rare=0, vocab=VOCAB))
    assert dataset.rare_indices.tolist() == []
    assert not dataset.targets.any()


def save_at(dataset: Dataset, path: Path, clock: float, monkeypatch) -> bytes:
    """Save with the wall clock set to `clock`, so a time-stamped archive would differ."""
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: clock)
        save_dataset(dataset, path)
    return path.read_bytes()


def test_save_is_byte_identical_across_saves(default_dataset, tmp_path, monkeypatch):
    first = save_at(default_dataset, tmp_path / "first.npz", 1_600_000_000.0, monkeypatch)
    second = save_at(default_dataset, tmp_path / "second.npz", 1_700_000_000.0, monkeypatch)
    assert first == second


def test_save_readable_by_plain_numpy(default_dataset, tmp_path):
    path = tmp_path / "dataset.npz"
    save_dataset(default_dataset, path)

    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["inputs", "rare_indices", "seed", "targets", "vocab"]
        assert np.array_equal(archive["inputs"], default_dataset.inputs)
        assert np.array_equal(archive["targets"], default_dataset.targets)
        assert archive["rare_indices"].tolist() == DEFAULT_RARE_INDICES
        assert archive["vocab"].tolist() == VOCAB
        assert int(archive["seed"]) == 42


def test_load_round_trips_saved_dataset(default_dataset, tmp_path):
    path = tmp_path / "dataset.npz"
    save_dataset(default_dataset, path)
    loaded = load_dataset(path)

    assert np.array_equal(loaded.inputs, default_dataset.inputs)
    assert np.array_equal(loaded.targets, default_dataset.targets)
    assert np.array_equal(loaded.rare_indices, default_dataset.rare_indices)
    assert loaded.vocab == tuple(VOCAB)
    assert loaded.seed == 42


def save_edited(path: Path, dataset: Dataset, **replaced: np.ndarray) -> Path:
    """Write `dataset` with some arrays replaced, as a user editing the file by hand would."""
    arrays = {
        "inputs": dataset.inputs,
        "targets": dataset.targets,
        "rare_indices": dataset.rare_indices,
        "vocab": np.array(dataset.vocab),
        "seed": np.array(dataset.seed),
    }
    arrays.update(replaced)
    np.savez(path, **arrays)
    return path


def test_load_rejects_truncated_file(default_dataset, tmp_path):
    path = tmp_path / "dataset.npz"
    save_dataset(default_dataset, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(InputFileError, match="not a readable .npz") as raised:
        load_dataset(path)
    assert str(path) in str(raised.value)


def test_load_rejects_target_outside_vocab(default_dataset, tmp_path):
    targets = default_dataset.targets.copy()
    targets[3] = len(VOCAB)
    path = save_edited(tmp_path / "dataset.npz", default_dataset, targets=targets)

    with pytest.raises(InputFileError, match="'targets' holds token ids outside 0..3") as raised:
        load_dataset(path)
    assert str(path) in str(raised.value)


def test_load_rejects_input_outside_vocab(default_dataset, tmp_path):
    inputs = default_dataset.inputs.copy()
    inputs[0] = -1
    path = save_edited(tmp_path / "dataset.npz", default_dataset, inputs=inputs)

    with pytest.raises(InputFileError, match="'inputs' holds token ids outside 0..3") as raised:
        load_dataset(path)
    assert str(path) in str(raised.value)


def test_load_rejects_targets_of_wrong_length(default_dataset, tmp_path):
    path = save_edited(tmp_path / "dataset.npz", default_dataset, targets=default_dataset.targets[:-1])

    with pytest.raises(InputFileError, match=r"'inputs' \(1000\) and 'targets' \(999\)") as raised:
        load_dataset(path)
    assert str(path) in str(raised.value)


def test_load_rejects_rare_indices_off_targets(default_dataset, tmp_path):
    rare_indices = default_dataset.rare_indices + 1
    path = save_edited(tmp_path / "dataset.npz", default_dataset, rare_indices=rare_indices)

    with pytest.raises(InputFileError, match="'rare_indices' does not match") as raised:
        load_dataset(path)
    assert str(path) in str(raised.value)


def test_load_rejects_missing_array(default_dataset, tmp_path):
    path = tmp_path / "dataset.npz"
    save_dataset(default_dataset, path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if name != "targets.npy"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    path.write_bytes(buffer.getvalue())

    with pytest.raises(InputFileError, match=r"lacks the arrays \['targets'\]") as raised:
        load_dataset(path)
    assert str(path) in str(raised.value)


def test_load_rejects_missing_file(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(InputFileError, match="dataset not found") as raised:
        load_dataset(path)
    assert str(path) in str(raised.value)
