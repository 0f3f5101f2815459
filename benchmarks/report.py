"""Benchmark results: one line per target, printed as a table and saved as JSON."""

import json
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Line:
    """One measured target: a median, the median it is compared with, and their ratio."""

    row: str  # issue row and target, e.g. "1a"
    measure: str
    value: float  # median of `samples`
    unit: str
    baseline_name: str
    baseline: float | None  # median of `baseline_samples`; None when the target is absolute
    ratio: float | None
    target: str  # human-readable, e.g. "<= 1.8x"
    met: bool
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    note: str = ""


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def at_most(row: str, measure: str, samples: list[float], baseline_name: str, baseline_samples: list[float],
            limit: float, unit: str = "s", note: str = "") -> Line:
    """Compare medians; the target is met when value / baseline <= limit."""
    value, baseline = median(samples), median(baseline_samples)
    ratio = value / baseline
    return Line(row, measure, value, unit, baseline_name, baseline, ratio, f"<= {limit:g}x", ratio <= limit,
                samples, baseline_samples, note)


def at_least_faster(row: str, measure: str, samples: list[float], baseline_name: str, baseline_samples: list[float],
                    factor: float, unit: str = "s", note: str = "") -> Line:
    """Compare median times; the target is met when baseline / value >= factor."""
    value, baseline = median(samples), median(baseline_samples)
    ratio = baseline / value
    return Line(row, measure, value, unit, baseline_name, baseline, ratio, f">= {factor:g}x faster",
                ratio >= factor, samples, baseline_samples, note)


def format_table(lines: list[Line]) -> str:
    header = ("#", "measure", "median", "compared with", "median", "ratio", "target", "result")
    rows = [header]
    for line in lines:
        rows.append((
            line.row,
            line.measure,
            _format_value(line.value, line.unit, len(line.samples)),
            line.baseline_name,
            "" if line.baseline is None else _format_value(line.baseline, line.unit, len(line.baseline_samples)),
            "" if line.ratio is None else f"{line.ratio:.2f}x",
            line.target,
            "met" if line.met else "MISSED",
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    rendered = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    rendered.insert(1, "-+-".join("-" * width for width in widths))
    notes = [f"{line.row}: {line.note}" for line in lines if line.note]
    return "\n".join(rendered + ([""] + notes if notes else []))


def format_markdown(lines: list[Line]) -> str:
    """Return the table as Markdown, for the README."""
    out = ["| # | measure | median | compared with | median | ratio | target | result |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for line in lines:
        baseline = "" if line.baseline is None else _format_value(line.baseline, line.unit, len(line.baseline_samples))
        ratio = "" if line.ratio is None else f"{line.ratio:.2f}x"
        out.append(
            f"| {line.row} | {line.measure} | {_format_value(line.value, line.unit, len(line.samples))} | "
            f"{line.baseline_name} | {baseline} | {ratio} | {line.target} | {'met' if line.met else 'missed'} |"
        )
    return "\n".join(out)


def _format_value(value: float, unit: str, runs: int) -> str:
    if unit == "s":
        text = f"{value:.2f} s"
    elif unit == "steps/s":
        text = f"{value:,.0f} steps/s"
    elif unit == "MB":
        text = f"{value:.1f} MB"
    else:
        text = f"{value:g} {unit}".rstrip()
    return f"{text} (n={runs})"


def write_json(path: Path, lines: list[Line], context: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"context": context, "lines": [asdict(line) for line in lines]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def read_json(path: Path) -> list[Line]:
    return [Line(**line) for line in json.loads(path.read_text())["lines"]]


def machine_context() -> dict:
    import os

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
