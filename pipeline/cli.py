"""Shared entry-point behaviour of the stage modules: logging and clean failure."""

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TextIO
from urllib.parse import unquote, urlsplit

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so cleanup code runs as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated(f"received signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, so a second Ctrl-C cannot cut it short.

    A held signal is raised again when the block exits, so its usual handler
    runs then. The handlers are swapped rather than the signals masked: Python
    runs handlers in the main thread whichever thread the kernel picks.
    """
    held_signals = []
    previous = {
        number: signal.signal(number, lambda signum, frame: held_signals.append(signum)) for number in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if held_signals:
            signal.raise_signal(held_signals[0])


def secrets_in_environment() -> list[str]:
    """Return the credentials no message may show, longest first.

    They are the password in MLFLOW_TRACKING_URI, as written and URL-decoded,
    and MLflow's password and token variables.
    """
    secrets = [os.environ.get(name, "") for name in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")]
    try:
        password = urlsplit(os.environ.get("MLFLOW_TRACKING_URI", "")).password
    except ValueError:  # an unparsable URI: MLflow rejects it before sending anything
        password = None
    if password:
        secrets += [password, unquote(password)]
    return sorted({secret for secret in secrets if secret}, key=len, reverse=True)


class _RedactingStream:
    """A text stream that replaces credentials in everything written through it."""

    def __init__(self, stream: TextIO, secrets: list[str]):
        self._stream = stream
        self._secrets = secrets

    def write(self, text: str) -> int:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _redacted_output() -> Iterator[None]:
    # MLflow's errors quote the tracking URI with its password, and so would a
    # run URL if MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT were turned off.
    secrets = secrets_in_environment()
    if not secrets:
        yield
        return
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (_RedactingStream(stream, secrets) for stream in streams)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); print input errors without a traceback and exit non-zero.

    Exit statuses: 2 for an input error, 130 for Ctrl-C, 143 for SIGTERM and 1
    for any other error, whose traceback is printed. Credentials from the
    environment are replaced by *** in everything written to sys.stdout and
    sys.stderr.
    """
    with _redacted_output():
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            main()
        except PipelineError as error:
            log.error("%s", error)
            sys.exit(2)
        except KeyboardInterrupt:
            log.error("interrupted")
            sys.exit(130)
        except Terminated as error:
            log.error("%s", error)
            sys.exit(143)
        except Exception:
            log.exception("stage failed with an unexpected error")
            sys.exit(1)
