"""Shared fixtures: isolated copies of the repository with shrunk params and their own store."""

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

# The benchmarks make repository copies the same way; one definition serves both.
from benchmarks.workspace import PROJECT_ROOT, project_files
from benchmarks.workspace import isolated_env as _shared_env

# Small enough that a full `dvc repro` takes seconds, large enough to keep rare
# samples in every epoch and the clipped arm actually clipping.
SMALL_PARAMS = {
    ("dataset", "n_samples"): 200,
    ("dataset", "n_rare"): 4,
    ("train", "epochs"): 2,
    ("plots", "dpi"): 40,
}

_RAN_STAGE = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)
_RESTORED_STAGE = re.compile(r"^Stage '([^']+)' is cached - skipping run", re.MULTILINE)


def isolated_env(**extra: str) -> dict[str, str]:
    """Return the subprocess environment of the benchmarks, without .pyc files in the copies."""
    return _shared_env(PYTHONDONTWRITEBYTECODE="1", **extra)


@dataclass
class ReproResult:
    ran: list[str]  # stages whose command ran, in order
    restored: list[str]  # stages checked out from the run cache without running
    output: str


@dataclass
class RepoCopy:
    """A git + DVC repository in a temporary folder, made from this project's files."""

    path: Path
    env: dict[str, str] = field(default_factory=isolated_env)

    def run(self, *command: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(
            command, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result

    def repro(self, *args: str) -> ReproResult:
        result = self.run("dvc", "repro", *args)
        output = result.stdout + result.stderr
        return ReproResult(_RAN_STAGE.findall(output), _RESTORED_STAGE.findall(output), output)

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_param(self, dotted_key: str, value) -> None:
        params = self.params()
        *parents, last = dotted_key.split(".")
        section = params
        for key in parents:
            section = section.setdefault(key, {})
        section[last] = value
        self.write_params(params)

    def write_params(self, params: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.path / 'mlflow.db'}"

    def mlflow_client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)


def make_repo_copy(destination: Path, overrides: dict[tuple[str, ...], object] = SMALL_PARAMS) -> RepoCopy:
    """Copy the project into `destination`, apply `overrides` to params.yaml and commit it all."""
    for name in project_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target)

    repo = RepoCopy(destination)
    params = repo.params()
    for keys, value in overrides.items():
        section = params
        for key in keys[:-1]:
            section = section[key]
        section[keys[-1]] = value
    repo.write_params(params)

    repo.run("git", "init", "-q", "-b", "main")
    repo.commit("initial copy")
    return repo


@pytest.fixture(scope="session")
def reproduced_template(tmp_path_factory) -> RepoCopy:
    """A small repository on which `dvc repro` has run once; copy it, never change it."""
    repo = make_repo_copy(tmp_path_factory.mktemp("template") / "repo")
    repo.repro()
    repo.commit("reproduce small params")
    return repo


@pytest.fixture
def fresh_repo(tmp_path) -> RepoCopy:
    """A small repository whose pipeline has never run."""
    return make_repo_copy(tmp_path / "repo")


def copy_reproduced(template: RepoCopy, destination: Path) -> RepoCopy:
    """Copy an up-to-date repository with its DVC cache, leaving its MLflow store behind."""
    shutil.copytree(template.path, destination, symlinks=True)
    # The store is not copied: its experiment points at the template's artifact
    # folder by absolute path, and each test should see only its own runs.
    for name in ("mlflow.db", "mlflow.db.lock"):
        (destination / name).unlink(missing_ok=True)
    shutil.rmtree(destination / "mlartifacts", ignore_errors=True)
    return RepoCopy(destination)


@pytest.fixture
def reproduced_repo(reproduced_template, tmp_path) -> RepoCopy:
    """A small, up-to-date repository with its DVC cache and no MLflow runs, private to the test."""
    return copy_reproduced(reproduced_template, tmp_path / "repo")


@pytest.fixture(scope="session")
def third_arm_repo(reproduced_template, tmp_path_factory) -> tuple[RepoCopy, ReproResult]:
    """The small repository after adding the arm clip_tight (max_norm 0.25) and running `dvc repro`.

    Shared by several tests because the run costs seconds; never change it.
    """
    repo = copy_reproduced(reproduced_template, tmp_path_factory.mktemp("third_arm") / "repo")
    repo.set_param("arms.clip_tight", {"max_norm": 0.25})
    return repo, repo.repro()
