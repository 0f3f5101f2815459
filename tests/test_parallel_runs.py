"""Queued experiments run three at a time against one new SQLite store and lose no run.

Every experiment changes the learning rate, so it trains both arms: six
experiments give twelve runs, created concurrently by three queue workers.
"""

import re
import sqlite3
import time

import pytest

LEARNING_RATES = (0.05, 0.08, 0.12, 0.15, 0.2, 0.3)
QUEUE_TIMEOUT_SECONDS = 900


def queue_statuses(repo) -> list[str]:
    """Return the status column of `dvc queue status`, one entry per task."""
    lines = repo.run("dvc", "queue", "status").stdout.splitlines()
    # Task rows are "<task> <name> <created...> <status>", after a header and before the worker summary.
    return [line.split()[-1] for line in lines[1:] if line.strip() and not line.startswith("Worker")]


def wait_for_experiments(repo, count: int) -> str:
    """Wait until the queue workers have ended `count` experiments; return the worker logs.

    Reading the workers' logs costs nothing, where each `dvc queue status`
    would take a CPU second from the experiments.
    """
    deadline = time.monotonic() + QUEUE_TIMEOUT_SECONDS
    while True:
        logs = "\n".join(path.read_text(errors="replace") for path in (repo.path / ".dvc/tmp/exps").rglob("*.out"))
        if len(ENDED_EXPERIMENT.findall(logs)) >= count:
            return logs
        assert time.monotonic() < deadline, f"queued experiments did not end in time\n{logs}"
        time.sleep(1)


ENDED_EXPERIMENT = re.compile(r"Task dvc\.repo\.experiments\.queue\.tasks\.run_exp\[[^]]+\] (succeeded|raised)")


@pytest.mark.slow
def test_queue_three_workers_fresh_store(reproduced_repo):
    repo = reproduced_repo
    store = repo.path / "mlflow.db"
    assert not store.exists()  # every worker finds no store and races to create it
    for lr in LEARNING_RATES:
        # Only the train stages: they create runs; the plots stage would add time, not runs.
        repo.run("dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}", "train")

    repo.run("dvc", "queue", "start", "-j", "3")
    logs = wait_for_experiments(repo, len(LEARNING_RATES))

    assert queue_statuses(repo) == ["Success"] * len(LEARNING_RATES), logs
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
