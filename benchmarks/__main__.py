"""Run the benchmark suite, print one table with every target marked met or missed, save it as JSON.

    python -m benchmarks [--runs 5] [--tracked-runs 1] [--rows 1,2,3,4,5,6,7] [--out FILE]
    python -m benchmarks --markdown FILE

Run it from the repository root inside the project's environment (`make bench`).
Every comparison measures both sides in this one invocation, in temporary
copies of the repository with their own DVC cache and MLflow store.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import loop_rows, queue_row, repro_rows, scaling_row
from benchmarks.report import format_markdown, format_table, machine_context, read_json, write_json
from benchmarks.workspace import PROJECT_ROOT, temp_root

DEFAULT_OUT = PROJECT_ROOT / "benchmarks" / "results" / "latest.json"
ALL_ROWS = "1,2,3,4,5,6,7"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per side for rows 1 to 5 (default: %(default)s)")
    parser.add_argument(
        "--tracked-runs", type=int, default=1,
        help="runs of the plain script with per-step log_metric, about a minute each (default: %(default)s)",
    )
    parser.add_argument("--rows", default=ALL_ROWS, help="comma-separated rows to run (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write (default: %(default)s)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="print a saved JSON result as Markdown and exit")
    args = parser.parse_args()
    if args.markdown:
        print(format_markdown(read_json(args.markdown)))
        return
    rows = {int(row) for row in args.rows.split(",")}
    if args.runs < 1 or args.tracked_runs < 0 or not rows <= set(range(1, 8)):
        parser.error("--runs must be >= 1, --tracked-runs >= 0 and --rows a subset of 1..7")

    def echo(message: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    parent = Path(tempfile.mkdtemp(prefix="benchmarks-", dir=temp_root()))
    lines, extra = [], {}
    try:
        log_metric_samples = []
        if rows & {1, 2, 3, 4}:
            tracked_runs = args.tracked_runs if rows & {1, 4} else 0
            samples = repro_rows.measure(parent, args.runs if rows & {1, 2, 3} else 0, tracked_runs, echo)
            log_metric_samples = samples.log_metric_per_arm
            if rows & {1, 2, 3}:
                lines += [line for line in repro_rows.lines(samples) if int(line.row[0]) in rows]
        if rows & {4, 5}:
            arm = loop_rows.DefaultArm()
            row5_lines, chunks, extra["5"] = loop_rows.row5(arm, args.runs, echo)
            if 4 in rows:
                lines += loop_rows.row4(arm, chunks, args.runs, log_metric_samples, parent, echo)
            if 5 in rows:
                lines += row5_lines
        if 6 in rows:
            row6_lines, extra["6"] = scaling_row.measure(parent, echo)
            lines += row6_lines
        if 7 in rows:
            row7_lines, extra["7"] = queue_row.measure(parent, echo)
            lines += row7_lines
    finally:
        shutil.rmtree(parent, ignore_errors=True)

    lines.sort(key=lambda line: line.row)
    total = time.perf_counter() - started
    print(format_table(lines))
    print(f"\n{sum(line.met for line in lines)} of {len(lines)} targets met in {total:.0f} s; written to {args.out}")
    context = {**machine_context(), "runs": args.runs, "tracked_runs": args.tracked_runs,
               "temp_root": str(temp_root()), "seconds": total, "extra": extra}
    write_json(args.out, lines, context)


if __name__ == "__main__":
    main()
