"""Row 6: the train stage of one arm at 3k, 30k and 300k steps, as its own process.

Each size runs `python -m pipeline.train` once in the same copy of the project
and records the wall time and the peak RSS of that process. While the largest
run trains, a thread watches the temporary per-step file grow, which shows that
rows reach the disk during training rather than at the end.
"""

import sys
import threading
from pathlib import Path

from benchmarks.report import Line
from benchmarks.workspace import Workspace

ARM = "clip"
EPOCHS = (3, 30, 300)  # 1000 samples per epoch: 3k, 30k and 300k steps
# Logging every step would send 900k points from the largest run, about 85 s
# of CPU on its own. Every tenth step still scales with the run length.
LOG_EVERY_N_STEPS = 10


class FileGrowthWatcher(threading.Thread):
    """Record the largest size of any temporary per-step file in a folder until stopped."""

    def __init__(self, folder: Path, pattern: str, interval: float = 0.5):
        super().__init__(daemon=True)
        self.folder, self.pattern, self.interval = folder, pattern, interval
        self.largest_bytes = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            for path in self.folder.glob(self.pattern):
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue  # renamed onto the output between glob and stat
                self.largest_bytes = max(self.largest_bytes, size)
                self.samples += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def measure(parent: Path, echo) -> tuple[list[Line], dict]:
    workspace = Workspace.create(parent, "scaling", {"tracking.log_every_n_steps": LOG_EVERY_N_STEPS})
    workspace.run(sys.executable, "-m", "pipeline.dataset", "--out", "data/dataset.npz")
    steps_file = workspace.path / "outputs" / "steps" / f"{ARM}.csv"
    steps_file.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pipeline.train", "--arm", ARM, "--dataset", "data/dataset.npz",
        "--steps-dir", str(steps_file.parent.relative_to(workspace.path)), "--metrics-dir", "metrics",
    ]

    seconds, peak_mb = {}, {}
    watcher = None
    for epochs in EPOCHS:
        workspace.set_param("train.epochs", epochs)
        if epochs == EPOCHS[-1]:
            watcher = FileGrowthWatcher(steps_file.parent, f".{steps_file.name}.*.tmp")
            watcher.start()
        result = workspace.run(*command)
        steps = epochs * 1000
        seconds[steps], peak_mb[steps] = result.seconds, result.max_rss_mb
        echo(f"train stage at {steps} steps: {result.seconds:.1f} s, peak RSS {result.max_rss_mb:.0f} MB")
    watcher.stop()

    small, large = min(seconds), max(seconds)
    final_bytes = steps_file.stat().st_size
    growth_mb = peak_mb[large] - peak_mb[small]
    streamed_share = watcher.largest_bytes / final_bytes
    time_ratio = seconds[large] / seconds[small]
    marginal = {
        f"{low}-{high}": (seconds[high] - seconds[low]) / (high - low) * 1e6
        for low, high in zip(sorted(seconds), sorted(seconds)[1:])
    }
    scaling_note = ", ".join(f"{span} steps: {micros:.0f} us/step" for span, micros in marginal.items())
    lines = [
        Line("6a", f"train stage, {large} steps", seconds[large], "s", f"{small} steps", seconds[small], time_ratio,
             f"<= {large / small * 1.05:g}x", time_ratio <= large / small * 1.05, [seconds[large]], [seconds[small]],
             note=f"marginal time {scaling_note}"),
        Line("6b", f"peak RSS, {large} steps", peak_mb[large], "MB", f"{small} steps", peak_mb[small], None,
             "growth <= 50 MB", growth_mb <= 50, [peak_mb[large]], [peak_mb[small]],
             note=f"peak RSS grows by {growth_mb:.1f} MB"),
        Line("6c", "per-step file on disk while training", watcher.largest_bytes / 1e6, "MB", "final file",
             final_bytes / 1e6, streamed_share, "streams (> 50% before the end)", streamed_share > 0.5,
             [watcher.largest_bytes / 1e6], [final_bytes / 1e6]),
    ]
    extra = {"seconds_by_steps": seconds, "peak_rss_mb_by_steps": peak_mb, "log_every_n_steps": LOG_EVERY_N_STEPS}
    return lines, extra
