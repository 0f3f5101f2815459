"""Stage `dataset`: draw the seeded imbalanced next-token dataset and save it as .npz.

The artifact is a plain NumPy archive readable with `numpy.load(path)`:
`inputs` and `targets` (int64 token ids, one per sample, in training order),
`rare_indices` (sorted positions whose target is the rare token), `vocab`
(token names, index = token id) and `seed` (the seed the draw used).
"""

import argparse
import logging
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cli import run_stage
from pipeline.errors import InputFileError
from pipeline.files import atomic_output
from pipeline.params import DatasetParams, load_params

log = logging.getLogger(__name__)

COMMON_TARGET = 0  # every target is the first vocabulary token ...
RARE_TARGET = 1  # ... except at the rare positions, which get the second

# Fixed member timestamp, so the same arrays always give the same bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Dataset:
    inputs: np.ndarray  # (n_samples,) int64 token ids
    targets: np.ndarray  # (n_samples,) int64 token ids
    rare_indices: np.ndarray  # (n_rare,) int64, sorted
    vocab: tuple[str, ...]
    seed: int

    @property
    def n_samples(self) -> int:
        return len(self.inputs)


def make_dataset(params: DatasetParams) -> Dataset:
    """Draw the dataset; the RNG calls and their order fix the exact samples for a seed."""
    # Imported here: the plots stage reads datasets and never needs torch (about 1 s to import).
    import torch

    # Seed all three generators: torch draws the inputs, random draws the rare positions.
    torch.manual_seed(params.seed)
    np.random.seed(params.seed)
    random.seed(params.seed)

    inputs = torch.randint(0, len(params.vocab), (params.n_samples,))
    rare_indices = sorted(random.sample(range(params.n_samples), params.n_rare))

    targets = np.full(params.n_samples, COMMON_TARGET, dtype=np.int64)
    targets[rare_indices] = RARE_TARGET
    return Dataset(
        inputs=inputs.numpy().astype(np.int64),
        targets=targets,
        rare_indices=np.array(rare_indices, dtype=np.int64),
        vocab=tuple(params.vocab),
        seed=params.seed,
    )


def save_dataset(dataset: Dataset, path: str | Path) -> None:
    """Write `dataset` as a byte-reproducible .npz: fixed member timestamps, no pickled objects."""
    arrays = {
        "inputs": dataset.inputs,
        "targets": dataset.targets,
        "rare_indices": dataset.rare_indices,
        "vocab": np.array(dataset.vocab, dtype=str),
        "seed": np.array(dataset.seed, dtype=np.int64),
    }
    with atomic_output(path) as temporary, zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w") as stream:
                np.lib.format.write_array(stream, array, allow_pickle=False)


def load_dataset(path: str | Path) -> Dataset:
    """Read and check a dataset artifact; raise InputFileError naming the file and the fault."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise InputFileError(f"{path}: dataset not found; run `dvc repro dataset` first") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputFileError(f"{path}: not a readable .npz dataset ({error}); run `dvc repro -f dataset`") from None

    dataset = _dataset_from_arrays(path, arrays)
    _check_consistent(path, dataset)
    return dataset


def _dataset_from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Dataset:
    expected = {"inputs", "targets", "rare_indices", "vocab", "seed"}
    missing = sorted(expected - arrays.keys())
    if missing:
        raise InputFileError(f"{path}: dataset lacks the arrays {missing}; expected {sorted(expected)}")
    for name in ("inputs", "targets", "rare_indices"):
        if arrays[name].ndim != 1 or not np.issubdtype(arrays[name].dtype, np.integer):
            raise InputFileError(f"{path}: '{name}' must be a 1-D integer array, got {arrays[name].dtype} of shape {arrays[name].shape}")
    return Dataset(
        inputs=arrays["inputs"].astype(np.int64),
        targets=arrays["targets"].astype(np.int64),
        rare_indices=arrays["rare_indices"].astype(np.int64),
        vocab=tuple(str(token) for token in arrays["vocab"].reshape(-1)),
        seed=int(arrays["seed"]),
    )


def _check_consistent(path: Path, dataset: Dataset) -> None:
    vocab_size = len(dataset.vocab)
    if vocab_size < 2:
        raise InputFileError(f"{path}: 'vocab' must hold at least 2 tokens, got {vocab_size}")
    if dataset.n_samples == 0 or len(dataset.targets) != dataset.n_samples:
        raise InputFileError(
            f"{path}: 'inputs' ({dataset.n_samples}) and 'targets' ({len(dataset.targets)}) "
            "must have the same, non-zero length"
        )
    for name in ("inputs", "targets"):
        values = getattr(dataset, name)
        if values.min() < 0 or values.max() >= vocab_size:
            raise InputFileError(f"{path}: '{name}' holds token ids outside 0..{vocab_size - 1}")

    actual_rare = np.flatnonzero(dataset.targets == RARE_TARGET)
    if not np.array_equal(actual_rare, dataset.rare_indices):
        raise InputFileError(f"{path}: 'rare_indices' does not match the positions of rare targets")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--out", required=True, help="path of the .npz artifact to write")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    dataset = make_dataset(params.dataset)
    save_dataset(dataset, args.out)
    log.info(
        "wrote %s: %d samples, %d rare at %s",
        args.out, dataset.n_samples, len(dataset.rare_indices), dataset.rare_indices.tolist()[:20],
    )


if __name__ == "__main__":
    run_stage(main)
