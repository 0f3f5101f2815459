"""Shared entry-point behaviour of the stage modules: logging and clean failure."""

import logging
import signal
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so cleanup code runs as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated(f"received signal {signal.Signals(signum).name}")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); print input errors without a traceback and exit non-zero."""
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
