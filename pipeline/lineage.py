"""Lineage of a training run: the git commit, DVC experiment, data and params that produced it.

Every arm's MLflow run gets these tags, besides the params:

- `mlflow.source.git.commit`: HEAD of the workspace the stage runs in. Inside
  `dvc exp run --queue` that is DVC's temporary copy, whose HEAD is the
  experiment's baseline commit.
- `git.dirty`: "true" when a tracked file differs from that commit, and
  `git.dirty_files` lists those files, comma-separated and cut at 2000
  characters. The files that DVC stages write (dvc.lock and the stage outputs
  it records) do not count: `dvc repro` rewrites them while it runs, and they
  are results rather than inputs.
- `dvc.stage`: from DVC_STAGE, which DVC sets for every stage command, such as
  `train@clip`. A run started by hand, outside DVC, has none.
- `dvc.exp_name`, `dvc.baseline_rev`: from DVC_EXP_NAME and DVC_EXP_BASELINE_REV,
  which `dvc exp run` sets.
- `dataset.md5`: MD5 of the dataset file the stage read. DVC 3 records a file
  output's hash as the MD5 of its bytes, so this equals the dataset's `md5` in
  dvc.lock after `dvc repro`. Hashing the file, rather than reading dvc.lock,
  describes the data the run saw even when the stage runs outside DVC.
- `params.hash`: see params_hash().
- `version.python`, `version.torch`, `version.mlflow`, `version.dvc`.
- `mlflow.source.name`, `mlflow.source.type`: the stage's script, relative to
  the workspace, as a local source. The UI shows the git commit next to it.

The dataset is also logged as an MLflow input with the MD5 as its digest, and
the text of the params file the stage read is logged as the artifact `params.yaml`.
Without git, or outside a git repository, the git tags are left out with a warning.
"""

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, SourceType
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

log = logging.getLogger(__name__)

PARAMS_ARTIFACT = "params.yaml"
DVC_LOCK = "dvc.lock"
VERSIONED_PACKAGES = ("torch", "mlflow", "dvc")
GIT_TIMEOUT_SECONDS = 30
# MLflow 3.17 limits a tag value to 8000 characters, so a long list of changed files is cut well below that.
MAX_DIRTY_FILES_CHARS = 2000


@dataclass(frozen=True)
class Lineage:
    """Record of a run's origin: its tags, the params text it read and the dataset it trained on."""

    tags: dict[str, str]
    params_text: str  # the params file as the stage read it
    dataset_path: Path
    dataset_md5: str


@dataclass(frozen=True)
class GitState:
    commit: str
    dirty_files: list[str]  # tracked files that differ from `commit`, outputs of DVC stages excluded


def collect_lineage(params_path: Path, dataset_path: Path, run_params: dict[str, object], script: Path) -> Lineage:
    """Gather the lineage of a run of `script` that reads `params_path` and `dataset_path` and logs `run_params`."""
    dataset_md5 = file_md5(dataset_path)
    tags = {"dataset.md5": dataset_md5, "params.hash": params_hash(run_params)}
    tags.update(dvc_tags(os.environ))
    tags.update(git_tags(Path.cwd()))
    tags.update(source_tags(script, Path.cwd()))
    tags.update(version_tags())
    return Lineage(tags, params_path.read_text(encoding="utf-8"), dataset_path, dataset_md5)


def record_lineage(client: MlflowClient, run_id: str, lineage: Lineage) -> None:
    """Log the dataset as the run's training input and the params file as an artifact."""
    # The source, in the form of MLflow's local dataset source, is the path as the
    # stage received it, which is relative to the workspace under DVC. With the
    # commit and the digest it names one version of a DVC-tracked file. An
    # absolute path inside a queued experiment's temporary copy would point
    # nowhere once DVC removes the copy.
    dataset = Dataset(
        name=lineage.dataset_path.stem,
        digest=lineage.dataset_md5,
        source_type="local",
        source=json.dumps({"uri": lineage.dataset_path.as_posix()}),
    )
    context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])
    client.log_text(run_id, lineage.params_text, PARAMS_ARTIFACT)


def params_hash(run_params: dict[str, object]) -> str:
    """Return the SHA-256 of `run_params` as canonical JSON, each value as the string MLflow stores.

    Hashing the stored strings lets anyone recompute the hash from a run's params.
    """
    canonical = json.dumps(
        {key: str(value) for key, value in run_params.items()},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_tags(environ: Mapping[str, str]) -> dict[str, str]:
    """Return the tags that name the DVC stage and experiment, from the variables DVC sets."""
    tags = {}
    if environ.get("DVC_STAGE"):
        tags["dvc.stage"] = environ["DVC_STAGE"]
    if environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = environ["DVC_EXP_NAME"]
    if environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = environ["DVC_EXP_BASELINE_REV"]
    return tags


def git_tags(workspace: Path) -> dict[str, str]:
    """Return the commit and dirty tags of the git workspace, or none (with a warning) without git."""
    try:
        state = git_state(workspace)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("git commit not recorded on the MLflow run: %s", _describe_git_error(error))
        return {}
    tags = {MLFLOW_GIT_COMMIT: state.commit, "git.dirty": str(bool(state.dirty_files)).lower()}
    if state.dirty_files:
        dirty_files = ",".join(state.dirty_files)
        if len(dirty_files) > MAX_DIRTY_FILES_CHARS:
            dirty_files = dirty_files[: MAX_DIRTY_FILES_CHARS - 3] + "..."
        tags["git.dirty_files"] = dirty_files
    return tags


def git_state(workspace: Path) -> GitState:
    """Return HEAD of the repository holding `workspace` and the tracked files that differ from it.

    Raises OSError when git is not installed and CalledProcessError outside a
    repository or before its first commit.
    """
    prefix, commit = _git(workspace, "rev-parse", "--show-prefix", "HEAD").split("\n")
    # Index and working tree against HEAD; untracked files are not part of any commit.
    changed = _git(workspace, "diff", "--name-only", "--no-renames", "-z", "HEAD", "--").split("\0")
    written_by_dvc = {prefix + path for path in dvc_written_files(workspace)}
    dirty = sorted(path for path in changed if path and path not in written_by_dvc)
    return GitState(commit, dirty)


def dvc_written_files(workspace: Path) -> set[str]:
    """Return dvc.lock and every output it records, as paths relative to `workspace`."""
    try:
        lock = yaml.safe_load((workspace / DVC_LOCK).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {DVC_LOCK}
    written = {DVC_LOCK}
    stages = lock.get("stages", {}) if isinstance(lock, dict) else {}
    for stage in stages.values():
        written.update(out["path"] for out in stage.get("outs", []) if "path" in out)
    return written


def source_tags(script: Path, workspace: Path) -> dict[str, str]:
    """Return MLflow's source tags for `script`, named relative to `workspace` when it lies inside."""
    script = script.resolve()
    try:
        name = script.relative_to(workspace.resolve()).as_posix()
    except ValueError:
        name = script.name
    return {MLFLOW_SOURCE_NAME: name, MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}


def version_tags() -> dict[str, str]:
    tags = {"version.python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            tags[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            log.warning("%s is not installed; its version is not recorded on the MLflow run", package)
    return tags


def _git(workspace: Path, *args: str) -> str:
    # --no-optional-locks: never take .git/index.lock, which parallel queue
    # workers or the user's own git commands may hold.
    result = subprocess.run(
        ["git", "--no-optional-locks", *args],
        cwd=workspace, capture_output=True, text=True, check=True, timeout=GIT_TIMEOUT_SECONDS,
    )
    return result.stdout.removesuffix("\n")


def _describe_git_error(error: OSError | subprocess.SubprocessError) -> str:
    if isinstance(error, FileNotFoundError):
        return "git is not installed"
    if isinstance(error, subprocess.CalledProcessError):
        return (error.stderr or "").strip() or f"git exited with status {error.returncode}"
    return str(error)
