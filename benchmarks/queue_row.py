"""Row 7: eight queued experiments run by `dvc queue start -j 2` against `-j 1`.

Both sides start from copies of one reproduced repository with small params,
so every experiment re-runs the same two stages, `train@clip` and `plots`.
Each copy has its own DVC cache and MLflow store, so neither side finds the
other's results in a run cache.
"""

import re
import time
from pathlib import Path

from benchmarks.report import Line
from benchmarks.workspace import Workspace

EXPERIMENTS = 8
# Small enough that each experiment costs mostly what the queue itself costs:
# process start-up, imports and DVC's bookkeeping.
SMALL_PARAMS = {"dataset.n_samples": 200, "dataset.n_rare": 4, "train.epochs": 2, "plots.dpi": 40}
# Each poll is a `dvc queue status` process of about half a CPU-second, taken
# from the workers. Polling rarely keeps the -j 2 side from paying for it.
POLL_SECONDS = 5.0
TIMEOUT_SECONDS = 600.0
_UNFINISHED = re.compile(r"\b(Queued|Running)\b")
_FAILED = re.compile(r"\bFailed\b")


def measure(parent: Path, echo) -> tuple[list[Line], dict]:
    template = Workspace.create(parent, "queue-template", SMALL_PARAMS)
    template.run("dvc", "repro")
    template.commit("reproduce small params")

    seconds = {}
    for jobs in (1, 2):
        workspace = template.clone_to(parent / f"queue-j{jobs}")
        for index in range(EXPERIMENTS):
            workspace.run("dvc", "exp", "run", "--queue", "-S", f"arms.clip.max_norm={0.1 * (index + 1):.1f}")
        seconds[jobs] = _run_queue(workspace, jobs)
        echo(f"queue of {EXPERIMENTS} experiments with -j {jobs}: {seconds[jobs]:.1f} s")

    ratio = seconds[2] / seconds[1]
    line = Line("7", f"{EXPERIMENTS} queued experiments, -j 2", seconds[2], "s", "-j 1", seconds[1], ratio,
                "<= 0.65x", ratio <= 0.65, [seconds[2]], [seconds[1]])
    return [line], {"seconds_by_jobs": seconds}


def _run_queue(workspace: Workspace, jobs: int) -> float:
    """Start the queue with `jobs` workers and return the seconds until every experiment has finished."""
    started = time.perf_counter()
    workspace.run("dvc", "queue", "start", "-j", str(jobs))
    try:
        while True:
            status = workspace.run("dvc", "queue", "status").stdout
            if not _UNFINISHED.search(status):
                break
            if time.perf_counter() - started > TIMEOUT_SECONDS:
                raise RuntimeError(f"queue in {workspace.path} did not finish within {TIMEOUT_SECONDS:.0f} s")
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - started
    finally:
        # Idle workers otherwise stay alive after the queue is empty.
        workspace.run("dvc", "queue", "stop")
    if _FAILED.search(status):
        raise RuntimeError(f"queued experiments failed in {workspace.path}:\n{status}")
    return elapsed
