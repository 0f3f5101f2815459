"""Rows 1 to 3: whole-pipeline `dvc repro` timings against the plain script and `dvc status`.

Each run makes a fresh copy of the project, so "cold" means no DVC cache, no
run cache, no outputs and an empty MLflow store. The same copy then measures
`dvc status`, a no-op `dvc repro`, a plot-only change and one arm's change.
"""

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.report import Line, at_most
from benchmarks.workspace import Workspace

_RAN_STAGE = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)


@dataclass
class ReproSamples:
    naive: list[float] = field(default_factory=list)
    naive_tracked: list[float] = field(default_factory=list)
    log_metric_per_arm: list[float] = field(default_factory=list)  # seconds of 9000 log_metric calls
    cold: list[float] = field(default_factory=list)
    status: list[float] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)
    plot_change: list[float] = field(default_factory=list)
    arm_change: list[float] = field(default_factory=list)


def measure(parent: Path, runs: int, tracked_runs: int, echo) -> ReproSamples:
    samples = ReproSamples()
    for index in range(runs):
        workspace = Workspace.create(parent, f"repro-{index}")
        naive = [sys.executable, "-m", "benchmarks.naive", "--params", "params.yaml", "--out", str(parent / f"naive-{index}")]

        # Alternate the order, so a drift in machine load hits both sides alike.
        if index % 2 == 0:
            samples.naive.append(workspace.run(*naive).seconds)
            samples.cold.append(_repro(workspace, expect=None))
        else:
            samples.cold.append(_repro(workspace, expect=None))
            samples.naive.append(workspace.run(*naive).seconds)

        samples.status.append(workspace.run("dvc", "status").seconds)
        samples.noop.append(_repro(workspace, expect=[]))
        workspace.set_param("plots.dpi", workspace.params()["plots"]["dpi"] - 1)
        samples.plot_change.append(_repro(workspace, expect=["plots"]))
        workspace.set_param("arms.clip.max_norm", 0.5)
        samples.arm_change.append(_repro(workspace, expect=["train@clip", "plots"]))
        echo(f"repro run {index + 1}/{runs}: cold {samples.cold[-1]:.1f} s, plain script {samples.naive[-1]:.1f} s")
        shutil.rmtree(workspace.path)

    for index in range(tracked_runs):
        workspace = Workspace.create(parent, f"tracked-{index}")
        timings = parent / f"tracked-{index}.json"
        result = workspace.run(
            sys.executable, "-m", "benchmarks.naive", "--params", "params.yaml", "--out", str(parent / f"naive-tracked-{index}"),
            "--tracking-uri", workspace.tracking_uri, "--timings", str(timings),
        )
        samples.naive_tracked.append(result.seconds)
        samples.log_metric_per_arm += [arm["log_metric_seconds"] for arm in json.loads(timings.read_text()).values()]
        echo(f"plain script with per-step log_metric {index + 1}/{tracked_runs}: {result.seconds:.1f} s")
        shutil.rmtree(workspace.path)
    return samples


def _repro(workspace: Workspace, expect: list[str] | None) -> float:
    """Time one `dvc repro`; check which stages ran, so a benchmark never times the wrong work."""
    result = workspace.run("dvc", "repro")
    ran = _RAN_STAGE.findall(result.stdout + result.stderr)
    if expect is not None and ran != expect:
        raise RuntimeError(f"dvc repro in {workspace.path} ran {ran}, expected {expect}")
    return result.seconds


def lines(samples: ReproSamples) -> list[Line]:
    result = [
        at_most("1a", "cold dvc repro, tracking on", samples.cold,
                "plain script, no tracking", samples.naive, 1.8),
    ]
    if samples.naive_tracked:
        result.append(at_most("1b", "cold dvc repro, tracking on", samples.cold,
                              "plain script, log_metric per step", samples.naive_tracked, 0.4))
    result += [
        at_most("2", "no-op dvc repro", samples.noop, "dvc status", samples.status, 1.3),
        at_most("3a", "dvc repro after a plot-only change", samples.plot_change, "cold dvc repro", samples.cold, 0.35),
        at_most("3b", "dvc repro after one arm's max_norm change", samples.arm_change, "cold dvc repro",
                samples.cold, 0.6),
    ]
    return result
