"""What a failed or interrupted stage must leave untouched: files, dvc.lock and the MLflow store."""

import contextlib
import hashlib
import importlib
import os
import shlex
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import yaml

# DVC's own scratch files and the MLflow store change without any stage output changing.
_SKIPPED_PREFIXES = (".git/", ".dvc/tmp/", "mlflow.db", "mlartifacts/")


def file_digests(root: Path) -> dict[str, str]:
    """Return the MD5 of every file under `root`, hidden and temporary files included."""
    digests = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_file() and not name.startswith(_SKIPPED_PREFIXES):
            digests[name] = hashlib.md5(path.read_bytes()).hexdigest()
    return digests


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def run_statuses(store: Path) -> list[str]:
    """Return the status of every run in a SQLite MLflow store, oldest first; [] if there is no store."""
    if not store.exists():
        return []
    with sqlite3.connect(store) as connection:
        return [status for (status,) in connection.execute("SELECT status FROM runs ORDER BY start_time")]


def stage_argv(repo_path: Path, stage: str, arm: str = "clip") -> list[str]:
    """Return the arguments dvc.yaml passes to `python -m pipeline.<stage>`.

    For the train stage, `--arm` replaces the DVC_STAGE variable by which DVC
    names the arm.
    """
    stages = yaml.safe_load((repo_path / "dvc.yaml").read_text())["stages"]
    command = stages[stage]["do"]["cmd"] if stage == "train" else stages[stage]["cmd"]
    words = shlex.split(command)
    assert words[:4] == ["exec", "python", "-m", f"pipeline.{stage}"], command
    return words[4:] + (["--arm", arm] if stage == "train" else [])


@contextlib.contextmanager
def inside(repo_path: Path) -> Iterator[None]:
    """Run code as a stage in `repo_path`: that working folder, its default store, no DVC variables.

    The SIGTERM handler that run_stage() installs is put back afterwards.
    """
    cwd = os.getcwd()
    saved = {name: os.environ.pop(name) for name in _STAGE_VARIABLES if name in os.environ}
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    os.chdir(repo_path)
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.update(saved)
        signal.signal(signal.SIGTERM, sigterm_handler)


_STAGE_VARIABLES = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_STAGE")


def run_stage_in_process(repo_path: Path, stage: str, arm: str = "clip") -> int:
    """Run `python -m pipeline.<stage>` with its dvc.yaml arguments in this process; return the exit status."""
    module = importlib.import_module(f"pipeline.{stage}")
    from pipeline.cli import run_stage

    with inside(repo_path):
        try:
            run_stage(lambda: module.main(stage_argv(repo_path, stage, arm)))
        except SystemExit as exit_info:
            return exit_info.code
    return 0
