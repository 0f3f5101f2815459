"""The progress line of long training runs: quiet when short, one log line per interval, or a redrawn terminal line."""

import io
import logging

from pipeline.progress import LOG_INTERVAL_SECONDS, QUIET_SECONDS, Progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_quiet_for_short_runs(caplog):
    clock = FakeClock()
    stream = io.StringIO()
    progress = Progress("clip", total_steps=3000, stream=stream, clock=clock)
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        for steps in range(1000, 3001, 1000):
            clock.now += (QUIET_SECONDS - 0.1) / 3
            progress.update(steps, 0.5)
        progress.clear()

    assert caplog.records == []
    assert stream.getvalue() == ""


def test_progress_logs_once_per_interval(caplog):
    clock = FakeClock()
    progress = Progress("clip", total_steps=100_000, stream=io.StringIO(), clock=clock)
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        for steps in range(1000, 100_001, 1000):
            clock.now += 0.25  # 4000 steps/s
            progress.update(steps, 0.0672)

    messages = [record.getMessage() for record in caplog.records]
    # Reports at 5 s (the end of the quiet time), then every 10 s, within a 25 s run.
    assert len(messages) == 3
    assert messages[0] == "clip: step 20000/100000 (20%), loss 0.0672, 4,000 steps/s, 20s left"
    assert messages[1].startswith("clip: step 60000/100000 (60%)")
    assert messages[2].endswith("0s left")


def test_progress_redraws_terminal_line():
    clock = FakeClock()
    stream = TerminalStream()
    progress = Progress("no_clip", total_steps=1_000_000, stream=stream, clock=clock)

    clock.now += QUIET_SECONDS
    progress.update(20_000, 1.25)
    clock.now += 0.1  # within the redraw interval: no output
    progress.update(20_400, 1.25)
    progress.clear()
    clock.now += 0.1  # a cleared line is redrawn at the next update
    progress.update(20_800, 1.0)

    assert stream.getvalue() == (
        "\rno_clip: step 20000/1000000 (2%), loss 1.2500, 4,000 steps/s, 4m05s left\x1b[K"
        "\r\x1b[K"
        "\rno_clip: step 20800/1000000 (2%), loss 1.0000, 4,000 steps/s, 4m05s left\x1b[K"
    )


def test_progress_interval_on_log_stream(caplog):
    clock = FakeClock()
    progress = Progress("clip", total_steps=10_000_000, stream=io.StringIO(), clock=clock)
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        clock.now += QUIET_SECONDS
        progress.update(1000, 0.1)
        clock.now += LOG_INTERVAL_SECONDS - 0.01
        progress.update(2000, 0.1)
        progress.clear()  # a log stream has no line to erase, so this does not force a report
        progress.update(2000, 0.1)
        clock.now += 0.01
        progress.update(3000, 0.1)

    assert [record.getMessage().split(",")[0] for record in caplog.records] == [
        "clip: step 1000/10000000 (0%)",
        "clip: step 3000/10000000 (0%)",
    ]
