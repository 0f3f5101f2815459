"""Shared entry-point behaviour of the stage modules: logging and clean failure."""

import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TextIO
from urllib.parse import unquote, urlsplit

from pipeline.errors import PipelineError, StageFailure

log = logging.getLogger("pipeline")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# DVC sets it for every stage command to the stage's address, such as train@clip.
STAGE_VARIABLE = "DVC_STAGE"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so cleanup code runs as for Ctrl-C."""


def _stop(signum, frame):
    # The first stop signal starts a clean shutdown, and any later one is
    # ignored: a Ctrl-C during the cleanup would escape it as an uncaught
    # KeyboardInterrupt, on which Python exits by killing itself with SIGINT.
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(f"received signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def _stop_handlers() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a clean shutdown for the block.

    A signal that the process inherited as ignored stays ignored, as the
    shell that started it intended (nohup, background jobs). The previous
    handlers come back after the block unless a stop signal arrived: the
    process is then exiting, and a later Ctrl-C must not cut that short.
    """
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(number, _stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            if signal.getsignal(number) is _stop:
                signal.signal(number, handler)


def _end_with_dvc() -> None:
    """Ask Linux to send this stage SIGTERM when DVC, its parent process, ends.

    DVC does not pass a SIGTERM of its own on to the stage: without this, a
    stage outlives a `kill <dvc pid>` and writes outputs that DVC never records.
    The stage commands in dvc.yaml use exec, so DVC is the parent.
    """
    if STAGE_VARIABLE not in os.environ or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        log.warning(
            "prctl(PR_SET_PDEATHSIG) failed: %s; if DVC is killed, this stage runs on to its end",
            os.strerror(ctypes.get_errno()),
        )
        return
    if os.getppid() == 1:
        raise Terminated("DVC ended before this stage started")  # it died before prctl() took effect


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
def redacted_output() -> Iterator[None]:
    """Replace credentials from the environment by *** in all text written to sys.stdout and sys.stderr."""
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
    for any other error, whose traceback is printed unless it is a StageFailure. Credentials from the
    environment are replaced by *** in everything written to sys.stdout and
    sys.stderr.
    """
    with redacted_output(), _stop_handlers():
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        try:
            _end_with_dvc()
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
        except StageFailure as error:
            log.error("%s", error)
            sys.exit(1)
        except Exception:
            log.exception("stage failed with an unexpected error")
            sys.exit(1)
