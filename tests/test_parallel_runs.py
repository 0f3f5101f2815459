"""Queued experiments run three at a time against one new SQLite store and lose no run."""

import sqlite3
import time

import pytest

LEARNING_RATES = (0.05, 0.08, 0.12, 0.15, 0.2, 0.3)
QUEUE_TIMEOUT_SECONDS = 900


def queue_statuses(repo) -> list[str]:
    """Return the status column of `dvc queue status`, one entry per task."""
    lines = repo.run("dvc", "queue", "status").stdout.splitlines()
    # Rows look like "<task>  <name>  <created>  <status>"; the header starts with "Task".
    return [line.split()[-1] for line in lines if line.strip() and not line.startswith(("Task", "Worker", "No "))
            and len(line.split()) >= 4]


@pytest.mark.slow
def test_queue_three_workers_fresh_store(reproduced_repo):
    repo = reproduced_repo
    store = repo.path / "mlflow.db"
    assert not store.exists()  # every worker finds no store and races to create it
    for lr in LEARNING_RATES:
        repo.run("dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}")

    repo.run("dvc", "queue", "start", "-j", "3")
    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    statuses = queue_statuses(repo)
    while any(status in ("Queued", "Running") for status in statuses) and time.monotonic() < deadline:
        time.sleep(5)
        statuses = queue_statuses(repo)

    logs = "\n".join(path.read_text(errors="replace") for path in (repo.path / ".dvc/tmp/exps").rglob("*.out"))
    assert statuses == ["Success"] * len(LEARNING_RATES), logs
    assert "database is locked" not in logs
    with sqlite3.connect(store) as connection:
        runs = connection.execute(
            "SELECT runs.status, runs.end_time, tags.value, params.value FROM runs "
            "JOIN tags ON tags.run_uuid = runs.run_uuid AND tags.key = 'arm' "
            "JOIN params ON params.run_uuid = runs.run_uuid AND params.key = 'train.lr'"
        ).fetchall()
        experiments = connection.execute("SELECT name FROM experiments WHERE name != 'Default'").fetchall()
    assert sorted((status, arm, lr) for status, _, arm, lr in runs) == sorted(
        ("FINISHED", arm, str(lr)) for lr in LEARNING_RATES for arm in ("no_clip", "clip")
    )
    assert all(end_time is not None for _, end_time, _, _ in runs)
    assert experiments == [("gradient-clipping",)]
