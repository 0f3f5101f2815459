"""Ctrl-C, SIGTERM, SIGKILL and a failure in the middle of training leave nothing behind.

Each test starts the train stage of the arm `clip` in a real subprocess, waits
until its per-step file is half written, then sends a real signal or breaks the
MLflow store under it. The MLflow run must end KILLED or FAILED with an end time,
no output or temporary file may remain, DVC must record nothing, and the next
`dvc repro` must run the stage again and give a clean run's exact bytes.
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SMALL_PARAMS, RepoCopy, make_repo_copy
from repo_state import changed_files, file_digests, stage_argv

# Long enough that training lasts a few seconds after the first rows reach the disk.
LONG_PARAMS = {**SMALL_PARAMS, ("train", "epochs"): 12}
OUTPUTS = ("outputs/steps/clip.csv", "metrics/clip.json")
WAIT_SECONDS = 120

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset_template(tmp_path_factory) -> RepoCopy:
    """A repository whose dataset stage has run and been committed, and nothing else."""
    repo = make_repo_copy(tmp_path_factory.mktemp("interrupt-template") / "repo", LONG_PARAMS)
    repo.repro("dataset")
    repo.commit("reproduce the dataset")
    return repo


@pytest.fixture(scope="module")
def clean_outputs(dataset_template, tmp_path_factory) -> dict[str, bytes]:
    """The outputs of an uninterrupted `dvc repro train@clip`."""
    destination = tmp_path_factory.mktemp("interrupt-clean") / "repo"
    shutil.copytree(dataset_template.path, destination, symlinks=True)
    repo = RepoCopy(destination)
    assert repo.repro("train@clip").ran == ["train@clip"]
    return {name: (repo.path / name).read_bytes() for name in OUTPUTS}


@pytest.fixture
def repo(dataset_template, tmp_path) -> RepoCopy:
    destination = tmp_path / "repo"
    shutil.copytree(dataset_template.path, destination, symlinks=True)
    return RepoCopy(destination)


def start(repo: RepoCopy, command: list[str]) -> subprocess.Popen:
    # A session of its own, so a signal to the group reaches DVC and its stage
    # together, as Ctrl-C in a terminal reaches the whole foreground job.
    return subprocess.Popen(
        command, cwd=repo.path, env=repo.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, preexec_fn=_default_interrupt_handling,
    )


def _default_interrupt_handling() -> None:
    # A shell without job control starts background jobs with SIGINT ignored,
    # and children inherit that (nohup, CI runners). Restore the terminal's
    # behaviour so the test does not depend on how pytest itself was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def train_command(repo: RepoCopy) -> list[str]:
    return ["python", "-m", "pipeline.train", *stage_argv(repo.path, "train")]


def wait_for_half_written_steps(repo: RepoCopy, process: subprocess.Popen) -> Path:
    """Return the per-step temporary file once training has written rows into it."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the stage ended before it was interrupted:\n{process.stdout.read()}"
        temporaries = list((repo.path / "outputs/steps").glob(".clip.csv.*.tmp"))
        if temporaries and temporaries[0].stat().st_size > 1000:
            return temporaries[0]
        time.sleep(0.02)
    raise AssertionError("training wrote no per-step rows in time")


def wait_for_group(process: subprocess.Popen) -> tuple[int, str]:
    """Wait for the process and every other process of its group; return its status and output."""
    output, _ = process.communicate(timeout=WAIT_SECONDS)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return process.returncode, output
        time.sleep(0.05)
    raise AssertionError("a process of the interrupted group is still running")


def runs(repo: RepoCopy) -> list[tuple[str, int | None]]:
    with sqlite3.connect(repo.path / "mlflow.db") as connection:
        return list(connection.execute("SELECT status, end_time FROM runs"))


def assert_left_nothing(
    repo: RepoCopy, files_before: dict[str, str], run_status: str, output: str, through_dvc: bool = False
) -> None:
    changed = changed_files(files_before, file_digests(repo.path))
    if through_dvc:
        # DVC deletes a stage's old outputs before it runs the stage; here only
        # the summary from git existed. dvc.lock is among the files compared.
        assert changed == ["metrics/clip.json"], output
        assert not (repo.path / "metrics/clip.json").exists()
    else:
        assert changed == [], output
    assert list((repo.path / "outputs/steps").glob("*clip.csv*")) == []  # neither output nor temporary file
    [(status, end_time)] = runs(repo)
    assert status == run_status, output
    assert end_time is not None


def assert_rerun_matches_clean(repo: RepoCopy, clean_outputs: dict[str, bytes], interrupted_status: str) -> None:
    # dvc.lock is unchanged, so DVC treats the stage as never run and runs it.
    result = repo.repro("train@clip")
    assert result.ran == ["train@clip"]
    for name, content in clean_outputs.items():
        assert (repo.path / name).read_bytes() == content, name
    assert sorted(status for status, _ in runs(repo)) == sorted([interrupted_status, "FINISHED"])


@pytest.mark.parametrize(
    ("sent", "exit_status", "run_status"),
    [(signal.SIGINT, 130, "KILLED"), (signal.SIGTERM, 143, "KILLED")],
    ids=["sigint", "sigterm"],
)
def test_stage_signal_cleans_up(sent, exit_status, run_status, repo, clean_outputs):
    files_before = file_digests(repo.path)
    process = start(repo, train_command(repo))
    wait_for_half_written_steps(repo, process)

    process.send_signal(sent)
    status, output = wait_for_group(process)

    assert status == exit_status, output
    assert_left_nothing(repo, files_before, run_status, output)
    assert_rerun_matches_clean(repo, clean_outputs, run_status)


# DVC runs a stage's command in $SHELL, else in /bin/sh, which is dash on
# Debian and on CI runners that set no SHELL. With either shell, DVC must
# report the stage's own exit status 130, after the stage has cleaned up.
@pytest.mark.parametrize("shell", [path for path in ("/bin/sh", "/bin/bash") if Path(path).exists()])
def test_dvc_repro_ctrl_c_cleans_up(shell, repo, clean_outputs):
    # DVC ignores SIGINT while its stage runs and reports the stage's failure.
    files_before = file_digests(repo.path)
    repo.env["SHELL"] = shell
    process = start(repo, ["dvc", "repro", "train@clip"])
    wait_for_half_written_steps(repo, process)

    os.killpg(process.pid, signal.SIGINT)
    status, output = wait_for_group(process)

    assert status != 0, output
    assert "failed to reproduce 'train@clip'" in output
    assert "exited with 130" in output
    assert_left_nothing(repo, files_before, "KILLED", output, through_dvc=True)
    assert_rerun_matches_clean(repo, clean_outputs, "KILLED")


def test_store_failure_cleans_up(repo, clean_outputs):
    files_before = file_digests(repo.path)
    process = start(repo, train_command(repo))
    wait_for_half_written_steps(repo, process)

    # The store loses its metrics table mid-run, as when an MLflow of another
    # version migrates it: the next metric batch fails, and training stops.
    store = repo.path / "mlflow.db"
    with sqlite3.connect(store, timeout=60) as connection:
        connection.execute("ALTER TABLE metrics RENAME TO metrics_moved")
    status, output = wait_for_group(process)
    with sqlite3.connect(store, timeout=60) as connection:
        connection.execute("ALTER TABLE metrics_moved RENAME TO metrics")

    assert status == 1, output
    assert "no such table: metrics" in output
    assert_left_nothing(repo, files_before, "FAILED", output)
    assert_rerun_matches_clean(repo, clean_outputs, "FAILED")


def test_dvc_terminated_stops_its_stage(repo, clean_outputs):
    # `kill <dvc pid>` reaches DVC alone, which exits without passing the
    # signal on; the kernel sends the stage SIGTERM when its parent ends.
    files_before = file_digests(repo.path)
    process = start(repo, ["dvc", "repro", "train@clip"])
    wait_for_half_written_steps(repo, process)

    process.send_signal(signal.SIGTERM)
    status, output = wait_for_group(process)

    assert status != 0, output
    assert "received signal SIGTERM" in output
    assert_left_nothing(repo, files_before, "KILLED", output, through_dvc=True)
    assert_rerun_matches_clean(repo, clean_outputs, "KILLED")


def test_repeated_ctrl_c_still_cleans_up(repo, clean_outputs):
    # Impatient users press Ctrl-C again while the stage is ending its run.
    files_before = file_digests(repo.path)
    process = start(repo, train_command(repo))
    wait_for_half_written_steps(repo, process)

    for _ in range(3):
        process.send_signal(signal.SIGINT)
        time.sleep(0.1)
    status, output = wait_for_group(process)

    assert status == 130, output
    assert_left_nothing(repo, files_before, "KILLED", output)
    assert_rerun_matches_clean(repo, clean_outputs, "KILLED")


def test_stage_sigkill_ends_run_killed(repo, clean_outputs):
    files_before = file_digests(repo.path)
    process = start(repo, train_command(repo))
    wait_for_half_written_steps(repo, process)

    # SIGKILL reaches the stage alone, as from the kernel's OOM killer. The
    # logger process reads the end of its requests pipe and ends the run itself.
    process.kill()
    killed_at_ms = time.time() * 1000
    status, output = wait_for_group(process)

    assert status == -signal.SIGKILL, output
    [(run_status, end_time)] = runs(repo)
    assert run_status == "KILLED", output
    assert end_time is not None
    assert end_time - killed_at_ms < 5000
    # The stage could not remove its two temporary files, and nothing else
    # changed. The next write of each output removes the leftover.
    changed = changed_files(files_before, file_digests(repo.path))
    assert len(changed) == 2, changed
    assert [name for name in changed if not name.endswith(".tmp")] == []
    assert {Path(name).name.split(".")[1] for name in changed} == {"clip"}
    assert not (repo.path / "outputs/steps/clip.csv").exists()
    # DVC may restore the stage from its run cache instead of running it, so
    # the leftovers can stay: they must not enter dvc.lock or git status.
    for name in changed:
        assert repo.run("dvc", "check-ignore", name, check=False).returncode == 0, name
    assert ".tmp" not in repo.run("git", "status", "--porcelain", "--untracked-files=all").stdout

    assert_rerun_matches_clean(repo, clean_outputs, "KILLED")
    assert [name for name in file_digests(repo.path) if name.endswith(".tmp")] == []
