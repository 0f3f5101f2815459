"""Temporary copies of the repository for the benchmarks, and timed child processes."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Each SQLite commit waits for an fsync; on this machine's shared disk one
# took 3 to 25 ms depending on what else ran. tmpfs takes that noise out of
# every comparison, and it favours the per-call logging baselines most.
PREFERRED_TEMP_ROOT = Path("/dev/shm")


def temp_root() -> Path:
    """Return the folder that benchmark workspaces go into: tmpfs when there is one."""
    if PREFERRED_TEMP_ROOT.is_dir() and os.access(PREFERRED_TEMP_ROOT, os.W_OK):
        return PREFERRED_TEMP_ROOT
    return Path(tempfile.gettempdir())


def isolated_env(**extra: str) -> dict[str, str]:
    """Return the environment for child processes: this interpreter first on PATH, nothing sent out."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DVC_", "MLFLOW_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        GIT_AUTHOR_NAME="Pipeline Automation",
        GIT_AUTHOR_EMAIL="automation@example.invalid",
        GIT_COMMITTER_NAME="Pipeline Automation",
        GIT_COMMITTER_EMAIL="automation@example.invalid",
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class Timed:
    seconds: float  # wall time from start to exit
    max_rss_mb: float  # peak resident set of the process and the children it waited for
    stdout: str
    stderr: str


class CommandFailed(RuntimeError):
    pass


def run_timed(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> Timed:
    """Run `command` to completion and return its wall time, peak RSS and output; raise if it fails.

    os.wait4 returns the resource usage of exactly this child, so the peak RSS
    is the child's own, not the benchmark's.
    """
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                raise CommandFailed(f"{' '.join(command)} timed out after {timeout:.0f} s in {cwd}")
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        # Popen must not wait for a process that os.wait4 has already reaped.
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        result = Timed(seconds, usage.ru_maxrss / 1024, stdout.read(), stderr.read())

    if process.returncode != 0:
        raise CommandFailed(
            f"{' '.join(command)} exited {process.returncode} in {cwd}\n--- stdout\n{result.stdout}\n"
            f"--- stderr\n{result.stderr}"
        )
    return result


def project_files() -> list[str]:
    """Return the project's files as git sees them: tracked plus untracked, not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return [name for name in listed.split("\0") if name and (PROJECT_ROOT / name).is_file()]


class Workspace:
    """A git + DVC repository in a temporary folder, made from this project's files, with its own MLflow store."""

    def __init__(self, path: Path):
        self.path = path
        self.env = isolated_env(MLFLOW_TRACKING_URI=self.tracking_uri)

    @classmethod
    def create(cls, parent: Path, name: str, overrides: dict[str, object] | None = None) -> "Workspace":
        """Copy the project into `parent/name`, set the dotted params in `overrides` and commit it all."""
        workspace = cls(parent / name)
        for file_name in project_files():
            target = workspace.path / file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / file_name, target)
        for key, value in (overrides or {}).items():
            workspace.set_param(key, value)
        workspace.run("git", "init", "-q", "-b", "main")
        workspace.commit("copy of the project")
        return workspace

    def clone_to(self, path: Path) -> "Workspace":
        """Copy this workspace, its DVC cache included, without its MLflow store."""
        shutil.copytree(self.path, path, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts"))
        return Workspace(path)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.path / 'mlflow.db'}"

    def run(self, *command: str, timeout: float = 900) -> Timed:
        return run_timed(list(command), self.path, self.env, timeout)

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_param(self, dotted_key: str, value: object) -> None:
        params = self.params()
        *parents, last = dotted_key.split(".")
        section = params
        for key in parents:
            section = section[key]
        section[last] = value
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)
