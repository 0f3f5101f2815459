"""Bad params and input files: one clear error naming the key or file, nothing written, no MLflow run.

The table runs each stage in-process, as `python -m pipeline.<stage>` would with
the arguments from dvc.yaml, in one repository copy whose stages have run once
and which every case restores. The slow tests at the end go through
`dvc repro` and `make repro`.
"""

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import RepoCopy, copy_reproduced, make_repo_copy
from repo_state import changed_files, file_digests, run_stage_in_process, run_statuses

# Files the cases edit; each is restored from its original bytes after a case.
EDITED_FILES = ("params.yaml", "data/dataset.npz", "outputs/steps/clip.csv", "metrics/clip.json")


@pytest.fixture(scope="module")
def checked_repo(tmp_path_factory) -> RepoCopy:
    """A small copy whose dataset and train stages ran in-process, with their two runs in its store."""
    repo = make_repo_copy(tmp_path_factory.mktemp("bad-input") / "repo")
    for stage, arm in (("dataset", ""), ("train", "no_clip"), ("train", "clip")):
        assert run_stage_in_process(repo.path, stage, arm) == 0
    assert run_statuses(repo.path / "mlflow.db") == ["FINISHED", "FINISHED"]
    return repo


@pytest.fixture
def repo(checked_repo) -> RepoCopy:
    """The shared copy; whatever a case edits is put back afterwards."""
    originals = {name: (checked_repo.path / name).read_bytes() for name in EDITED_FILES}
    yield checked_repo
    for name, content in originals.items():
        _replace_file(checked_repo.path / name, content)


@pytest.fixture
def dvc_repo(reproduced_template, tmp_path) -> RepoCopy:
    """A reproduced copy with DVC's lock and run cache, and no MLflow store yet."""
    return copy_reproduced(reproduced_template, tmp_path / "repo")


def _replace_file(path: Path, content: bytes) -> None:
    # Unlink first: a DVC output may be a link into the cache, which must not change.
    path.unlink(missing_ok=True)
    path.write_bytes(content)


# --- edits of params.yaml -------------------------------------------------

def set_param(dotted_key: str, value) -> Callable[[RepoCopy], None]:
    return lambda repo: repo.set_param(dotted_key, value)


def delete_param(dotted_key: str) -> Callable[[RepoCopy], None]:
    def edit(repo: RepoCopy) -> None:
        params = repo.params()
        *parents, last = dotted_key.split(".")
        section = params
        for key in parents:
            section = section[key]
        del section[last]
        repo.write_params(params)

    return edit


def rename_arm(new_name: str) -> Callable[[RepoCopy], None]:
    def edit(repo: RepoCopy) -> None:
        params = repo.params()
        params["arms"] = {new_name if name == "clip" else name: arm for name, arm in params["arms"].items()}
        repo.write_params(params)

    return edit


def write_params_text(text: str) -> Callable[[RepoCopy], None]:
    return lambda repo: _replace_file(repo.path / "params.yaml", text.encode())


def break_yaml_at_lr(repo: RepoCopy) -> None:
    lines = (repo.path / "params.yaml").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith("lr:"))
    lines[index] = "  lr: 0.1: 2"  # a second colon: "mapping values are not allowed here"
    _replace_file(repo.path / "params.yaml", ("\n".join(lines) + "\n").encode())


def repeat_lr_line(repo: RepoCopy) -> None:
    lines = (repo.path / "params.yaml").read_text().splitlines()
    index = lr_line(repo) - 1
    lines.insert(index + 1, lines[index].replace("lr:", "lr: 0.5 #"))
    _replace_file(repo.path / "params.yaml", ("\n".join(lines) + "\n").encode())


def lr_line(repo: RepoCopy) -> int:
    lines = (repo.path / "params.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if line.strip().startswith("lr:"))


# --- edits of the dataset and per-step files ----------------------------------

def edit_dataset(change: Callable[[dict], None]) -> Callable[[RepoCopy], None]:
    def edit(repo: RepoCopy) -> None:
        path = repo.path / "data/dataset.npz"
        with np.load(path) as archive:
            arrays = {name: archive[name] for name in archive.files}
        change(arrays)
        path.unlink()
        np.savez(path, **arrays)

    return edit


def shorten_targets(arrays: dict) -> None:
    arrays["targets"] = arrays["targets"][:-20]


def target_outside_vocab(arrays: dict) -> None:
    arrays["targets"][3] = len(arrays["vocab"])


def truncate_dataset_file(repo: RepoCopy) -> None:
    path = repo.path / "data/dataset.npz"
    _replace_file(path, path.read_bytes()[:500])


def drop_steps_column(column: str) -> Callable[[RepoCopy], None]:
    def edit(repo: RepoCopy) -> None:
        path = repo.path / "outputs/steps/clip.csv"
        rows = [line.split(",") for line in path.read_text().splitlines()]
        index = rows[0].index(column)
        _replace_file(path, "".join(",".join(row[:index] + row[index + 1 :]) + "\n" for row in rows).encode())

    return edit


def drop_last_steps(count: int) -> Callable[[RepoCopy], None]:
    def edit(repo: RepoCopy) -> None:
        path = repo.path / "outputs/steps/clip.csv"
        lines = path.read_text().splitlines(keepends=True)
        _replace_file(path, "".join(lines[:-count]).encode())

    return edit


def put_nan_in_steps(repo: RepoCopy) -> None:
    path = repo.path / "outputs/steps/clip.csv"
    lines = path.read_text().splitlines(keepends=True)
    step, epoch, _, grad, weight = lines[11].rstrip("\n").split(",")
    lines[11] = f"{step},{epoch},nan,{grad},{weight}\n"
    _replace_file(path, "".join(lines).encode())


@dataclass(frozen=True)
class Case:
    id: str
    stage: str  # the stage module that must reject the input
    edit: Callable[[RepoCopy], None]
    expected: tuple[str, ...]  # fragments of the error message: the key or file, and what is allowed


ARM_NAME_RULE = "use ASCII letters, digits, '_' and '-', at most 100 characters, not starting with '-'"

CASES = [
    # params.yaml itself
    Case("params missing", "train", lambda repo: (repo.path / "params.yaml").unlink(),
         ("params.yaml: file not found",)),
    Case("params not yaml", "train", break_yaml_at_lr,
         ("params.yaml: invalid YAML", "mapping values are not allowed here", "line {lr_line}")),
    Case("params not a mapping", "dataset", write_params_text("- dataset\n- train\n"),
         ("params.yaml: expected a mapping of sections at the top level, got list",)),
    Case("params empty", "plots", write_params_text(""),
         ("params.yaml: file is empty; expected the sections dataset, model, train, arms, tracking, plots",)),
    Case("params duplicate key", "train", repeat_lr_line,
         ("params.yaml: invalid YAML", "found duplicate key 'lr'", "line {next_lr_line}")),
    # keys
    Case("typo max_nrom", "train", lambda repo: repo.set_param("arms.clip", {"max_nrom": 1.0}),
         ("arms.clip.max_nrom: unknown key; allowed keys here: max_norm", "arms.clip.max_norm: required key is missing")),
    Case("unknown section", "dataset", set_param("optimizer", {"momentum": 0.9}),
         ("optimizer: unknown key; allowed keys here: dataset, model, train, arms, tracking, plots",)),
    Case("missing epochs", "train", delete_param("train.epochs"),
         ("train.epochs: required key is missing",)),
    # types
    Case("lr string", "train", set_param("train.lr", "0.1"),
         ("train.lr: Input should be a valid number (got '0.1')",)),
    Case("epochs 2.5", "train", set_param("train.epochs", 2.5),
         ("train.epochs: Input should be a valid integer (got 2.5)",)),
    Case("mark_rare_steps yes", "plots", set_param("plots.mark_rare_steps", "yes"),
         ("plots.mark_rare_steps: Input should be a valid boolean (got 'yes')",)),
    Case("seed string", "dataset", set_param("dataset.seed", "42"),
         ("dataset.seed: Input should be a valid integer (got '42')",)),
    # ranges
    Case("lr zero", "train", set_param("train.lr", 0),
         ("train.lr: Input should be greater than 0 (got 0)",)),
    Case("lr negative", "train", set_param("train.lr", -0.1),
         ("train.lr: Input should be greater than 0 (got -0.1)",)),
    Case("lr beyond float32", "train", set_param("train.lr", 1e39),
         ("train.lr: Input should be at most 3.40282e+38, the largest float32 value (got 1e+39)",)),
    Case("lr infinite", "train", set_param("train.lr", float("inf")),
         ("train.lr: Input should be a finite number (got inf)",)),
    Case("lr nan", "train", set_param("train.lr", float("nan")),
         ("train.lr: Input should be a finite number (got nan)",)),
    Case("epochs zero", "train", set_param("train.epochs", 0),
         ("train.epochs: Input should be greater than or equal to 1 (got 0)",)),
    Case("n_samples zero", "dataset", set_param("dataset.n_samples", 0),
         ("dataset.n_samples: Input should be greater than or equal to 1 (got 0)",)),
    Case("n_rare negative", "dataset", set_param("dataset.n_rare", -1),
         ("dataset.n_rare: Input should be greater than or equal to 0 (got -1)",)),
    Case("n_rare above n_samples", "train", set_param("dataset.n_rare", 201),
         ("dataset: n_rare (201) must not exceed n_samples (200)",)),
    Case("max_norm zero", "train", set_param("arms.clip.max_norm", 0.0),
         ("arms.clip.max_norm: Input should be greater than 0 (got 0.0)",)),
    Case("max_norm negative", "train", set_param("arms.clip.max_norm", -1.0),
         ("arms.clip.max_norm: Input should be greater than 0 (got -1.0)",)),
    Case("max_norm infinite", "train", set_param("arms.clip.max_norm", float("inf")),
         ("arms.clip.max_norm: Input should be a finite number (got inf)",)),
    Case("embedding_dim zero", "train", set_param("model.embedding_dim", 0),
         ("model.embedding_dim: Input should be greater than or equal to 1 (got 0)",)),
    Case("vocab of one token", "dataset", set_param("dataset.vocab", ["A"]),
         ("dataset.vocab: List should have at least 2 items after validation, not 1",)),
    Case("vocab duplicates", "train", set_param("dataset.vocab", ["A", "B", "A", "D"]),
         ("dataset.vocab: tokens must be unique, but ['A'] occur more than once",)),
    Case("log_every_n_steps zero", "train", set_param("tracking.log_every_n_steps", 0),
         ("tracking.log_every_n_steps: Input should be greater than or equal to 1 (got 0)",)),
    # arms
    Case("no arms", "plots", set_param("arms", {}),
         ("arms: at least one arm is required",)),
    Case("arm name empty", "train", rename_arm(""), ("arm name '' is invalid", ARM_NAME_RULE)),
    Case("arm name dot", "train", rename_arm("clip.v2"), ("arm name 'clip.v2' is invalid", ARM_NAME_RULE)),
    Case("arm name slash", "train", rename_arm("a/b"), ("arm name 'a/b' is invalid", ARM_NAME_RULE)),
    Case("arm name space", "train", rename_arm("clip 2"), ("arm name 'clip 2' is invalid", ARM_NAME_RULE)),
    Case("arm name at", "train", rename_arm("clip@2"), ("arm name 'clip@2' is invalid", ARM_NAME_RULE)),
    Case("arm name traversal", "train", rename_arm("../../outside"),
         ("arm name '../../outside' is invalid", ARM_NAME_RULE)),
    Case("arm name leading dash", "train", rename_arm("-f"), ("arm name '-f' is invalid", ARM_NAME_RULE)),
    Case("arm name not ASCII", "train", rename_arm("clipä"), ("arm name 'clipä' is invalid", ARM_NAME_RULE)),
    Case("arm name too long", "train", rename_arm("a" * 101), (f"arm name '{'a' * 101}' is invalid", ARM_NAME_RULE)),
    # input files
    Case("dataset wrong length", "train", edit_dataset(shorten_targets),
         ("data/dataset.npz: 'inputs' (200) and 'targets' (180) must have the same, non-zero length",)),
    Case("dataset target outside vocab", "train", edit_dataset(target_outside_vocab),
         ("data/dataset.npz: 'targets' holds token ids outside 0..3",)),
    Case("dataset truncated file", "train", truncate_dataset_file,
         ("data/dataset.npz: not a readable .npz dataset", "run `dvc repro -f dataset`")),
    Case("steps missing column", "plots", drop_steps_column("grad_norm"),
         ("outputs/steps/clip.csv: missing column(s) ['grad_norm']; expected columns "
          "['step', 'epoch', 'loss', 'grad_norm', 'weight_norm']",)),
    Case("steps too few", "plots", drop_last_steps(10),
         ("outputs/steps/clip.csv: expected steps 0..399 in order (400 rows), found 390 rows",)),
    Case("steps non-finite value", "plots", put_nan_in_steps,
         ("outputs/steps/clip.csv: step 10 holds a non-finite value",)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_rejected(case: Case, repo: RepoCopy, caplog):
    line = lr_line(repo)
    expected = [fragment.format(lr_line=line, next_lr_line=line + 1) for fragment in case.expected]
    case.edit(repo)
    files_before = file_digests(repo.path)
    runs_before = run_statuses(repo.path / "mlflow.db")
    caplog.clear()

    status = run_stage_in_process(repo.path, case.stage)

    message = "\n".join(record.getMessage() for record in caplog.records if record.levelname == "ERROR")
    assert status == 2, message
    for fragment in expected:
        assert fragment in message
    assert "Traceback" not in message
    assert changed_files(files_before, file_digests(repo.path)) == []
    assert run_statuses(repo.path / "mlflow.db") == runs_before


def test_case_table_size():
    # The table must keep covering every kind of bad input listed in the README.
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES)
    assert {case.stage for case in CASES} == {"dataset", "train", "plots"}


# --- through DVC -----------------------------------------------------------

def _dvc_repro_rejects(repo: RepoCopy, edit: Callable[[RepoCopy], None]) -> str:
    """Edit the repository, run `dvc repro`, and check that it failed, wrote nothing and created no run.

    Before it runs a stage DVC deletes that stage's old outputs, so a failed
    stage leaves them missing, never half-written. Once params.yaml is fixed,
    `dvc repro` restores them from the run cache without running anything.
    """
    files_clean = file_digests(repo.path)
    good_params = (repo.path / "params.yaml").read_bytes()
    edit(repo)
    files_before = file_digests(repo.path)
    runs_before = run_statuses(repo.path / "mlflow.db")

    result = repo.run("dvc", "repro", check=False)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    files_after = file_digests(repo.path)
    changed = changed_files(files_before, files_after)
    assert [name for name in changed if name in files_after] == []  # deleted, not written
    assert set(changed) <= {"outputs/steps/clip.csv", "metrics/clip.json", "outputs/steps/no_clip.csv",
                            "metrics/no_clip.json", "outputs/plots/clip.png", "outputs/plots/no_clip.png",
                            "outputs/plots/comparison.png"}
    assert run_statuses(repo.path / "mlflow.db") == runs_before

    _replace_file(repo.path / "params.yaml", good_params)
    recovery = repo.repro()
    assert recovery.ran == []
    assert file_digests(repo.path) == files_clean
    return output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda repo: repo.set_param("arms.clip", {"max_nrom": 1.0}),
         "arms.clip.max_nrom: unknown key; allowed keys here: max_norm"),
        (set_param("train.lr", "fast"), "train.lr: Input should be a valid number (got 'fast')"),
        # DVC reads `arms.${key}` as a nested key, so it fails before the stage runs.
        (rename_arm("clip.v2"), "Parameters 'arms.clip.v2' are missing from 'params.yaml'"),
        (lambda repo: (repo.path / "params.yaml").unlink(), "'params.yaml' does not exist"),
        # DVC resolves `train@clip@2` as stage `train` of arm `clip`, item `2`.
        (rename_arm("clip@2"), "Stage 'train@clip@2' not found inside 'dvc.yaml' file"),
    ],
    ids=["typo max_nrom", "lr string", "arm name dot", "params missing", "arm name at"],
)
def test_dvc_repro_rejects(edit, expected, dvc_repo: RepoCopy):
    output = _dvc_repro_rejects(dvc_repo, edit)

    assert expected in output


@pytest.mark.slow
def test_dvc_repro_empty_arm_name(dvc_repo: RepoCopy):
    repo = dvc_repo
    # DVC fails on an empty arm name with its own "unexpected error" before any
    # stage runs; the params check that `make repro` runs first names the key.
    output = _dvc_repro_rejects(repo, rename_arm(""))
    rename_arm("")(repo)
    check = repo.run(sys.executable, "-m", "pipeline.params", check=False)

    assert "unexpected error" in output
    assert check.returncode == 2
    assert "arms: arm name '' is invalid" in check.stderr


@pytest.mark.slow
def test_make_repro_checks_params_first(dvc_repo: RepoCopy):
    repo = dvc_repo
    rename_arm("clip@2")(repo)
    venv = Path(sys.prefix)
    files_before = file_digests(repo.path)

    # -o: treat the environment as installed, so make never reinstalls it here.
    result = repo.run(
        "make", "-s", "repro", f"VENV={venv}", "-o", str(venv / ".installed"), check=False
    )

    assert result.returncode != 0
    assert "arms: arm name 'clip@2' is invalid" in result.stderr
    assert ARM_NAME_RULE in result.stderr
    assert "Running stage" not in result.stdout + result.stderr
    assert changed_files(files_before, file_digests(repo.path)) == []
