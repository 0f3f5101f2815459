"""Progress of a long training run on stderr: step, loss, steps per second and time left.

Nothing here reaches a DVC output: a terminal gets one line rewritten in
place, anything else (a log file, a queued experiment) one log line per interval.
"""

import logging
import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger(__name__)

QUIET_SECONDS = 5.0  # runs that finish sooner print no progress at all
LOG_INTERVAL_SECONDS = 10.0  # between log lines when stderr is not a terminal
REDRAW_INTERVAL_SECONDS = 0.5  # between redraws of the terminal line


class Progress:
    """Report a run of `total_steps` steps under `label` as steps complete."""

    def __init__(
        self,
        label: str,
        total_steps: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label = label
        self.total_steps = total_steps
        self._stream = stream if stream is not None else sys.stderr
        self._interactive = self._stream.isatty()
        self._interval = REDRAW_INTERVAL_SECONDS if self._interactive else LOG_INTERVAL_SECONDS
        self._clock = clock
        self._started = clock()
        self._last_report = -math.inf  # the first report comes as soon as the quiet time is over
        self._line_open = False

    def update(self, steps_done: int, loss: float) -> None:
        """Record that `steps_done` steps are complete; `loss` is the latest loss to show."""
        now = self._clock()
        elapsed = now - self._started
        if elapsed < QUIET_SECONDS:
            return
        # A cleared terminal line is redrawn at once; otherwise wait out the interval.
        redraw_now = self._interactive and not self._line_open
        if not redraw_now and now - self._last_report < self._interval:
            return
        self._last_report = now
        message = self._describe(steps_done, loss, elapsed)
        if self._interactive:
            # \r returns to the line start and \x1b[K clears what a longer line left behind.
            self._stream.write(f"\r{message}\x1b[K")
            self._stream.flush()
            self._line_open = True
        else:
            log.info("%s", message)

    def clear(self) -> None:
        """Erase the terminal line, so a log message can take its place; the next update redraws it."""
        if self._line_open:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._line_open = False

    def _describe(self, steps_done: int, loss: float, elapsed: float) -> str:
        rate = steps_done / elapsed if elapsed > 0 else 0.0
        left = (self.total_steps - steps_done) / rate if rate > 0 else math.inf
        return (
            f"{self.label}: step {steps_done}/{self.total_steps} ({100 * steps_done / self.total_steps:.0f}%), "
            f"loss {loss:.4f}, {rate:,.0f} steps/s, {_format_duration(left)} left"
        )


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown time"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"
