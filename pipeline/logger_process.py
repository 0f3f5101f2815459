"""The training process's handle on the logger process that owns an arm's MLflow run.

pipeline/run_logger.py describes the process and its protocol. At most
MAX_CHUNKS_IN_FLIGHT `steps` requests wait for their reply, so a slow store
makes training wait instead of buffering a long run's metrics.
"""

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.cli import Terminated, deferred_signals
from pipeline.errors import StageFailure, TrackingError
from pipeline.run_logger import (
    STATUS_FAILED,
    STATUS_FINISHED,
    STATUS_KILLED,
    encode_frame,
    encode_steps,
)
from pipeline.steps import SERIES, StepChunk

log = logging.getLogger(__name__)

# A chunk is at most 10 000 steps (pipeline/training.py), 30 000 points, which
# a local SQLite store writes in about 2 s. An interrupted run ends only after
# the logger has stored the chunks already sent.
MAX_CHUNKS_IN_FLIGHT = 2


def _last_step_of(chunk: StepChunk) -> StepChunk:
    # Copies: the training loop may reuse the chunk's buffers.
    last = len(chunk) - 1
    return StepChunk(
        start=chunk.start + last,
        epoch=chunk.epoch,
        **{key: getattr(chunk, key)[last:].copy() for key in SERIES},
    )


class LoggerError(StageFailure):
    """The logger process failed to create, write or end the MLflow run."""


class RunLogger:
    """A started logger process; used as a context manager, it ends the run by how the block ended.

    The block's normal end ends the run FINISHED, Ctrl-C or SIGTERM KILLED and
    any other exception FAILED. Before request_run(), no run exists and the
    process is simply killed.
    """

    def __init__(self, process: subprocess.Popen):
        self._process = process
        self._replies = b""  # reply bytes read but not yet taken
        self._unanswered = 0  # requests sent whose reply has not been taken
        self._run_requested = False
        self._run_id: str | None = None
        self._frame_cut = False  # a frame was cut short, so the logger can read no further request
        self._last_step: StepChunk | None = None  # the latest step, when thinning left it out

    @classmethod
    def start(cls) -> "RunLogger":
        # A new interpreter rather than a fork: torch's threads would not survive a fork.
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.run_logger"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        return cls(process)

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            status = STATUS_FINISHED
        elif issubclass(kind, (KeyboardInterrupt, Terminated)):
            status = STATUS_KILLED
        else:
            status = STATUS_FAILED
        # Held signals: a second Ctrl-C cannot leave the run RUNNING.
        with deferred_signals():
            try:
                self.end(status)
            except LoggerError as end_error:
                if kind is None:
                    raise
                log.error("%s", end_error)  # the block's own exception is the one to report

    def request_run(self, arm: str, experiment_name: str, params_path: Path, dataset_path: Path,
                    run_params: dict[str, object]) -> None:
        """Ask for the arm's run; it is created while this process goes on, and wait_for_run() returns its id."""
        self._run_requested = True
        self._send({
            "type": "open",
            "arm": arm,
            "experiment_name": experiment_name,
            "params_path": str(params_path),
            "dataset_path": str(dataset_path),
            "run_params": run_params,
            "script": sys.argv[0],
        })

    def wait_for_run(self) -> str:
        """Return the run's id once it exists.

        Raises TrackingError for an unreachable server and LoggerError for any other failure.
        """
        reply = self._take_reply(block=True, check=False)
        if "error" in reply:
            if reply.get("input_error"):
                raise TrackingError(reply["error"])
            raise LoggerError(f"creating the MLflow run failed: {reply['error']}")
        self._run_id = reply["run_id"]
        return self._run_id

    def log_steps(self, chunk: StepChunk, every_n_steps: int) -> None:
        """Send the chunk's steps that are multiples of `every_n_steps` to be stored.

        The run's last step is sent by log_result() if thinning left it out, so
        that MLflow's latest value of each series is the final one. First
        raises the error of any request that failed since the last call, so a
        store failure stops training at the next chunk.
        """
        while self._take_reply(block=False) is not None:
            pass
        while self._unanswered >= MAX_CHUNKS_IN_FLIGHT:
            self._take_reply(block=True)

        keep = chunk.steps % every_n_steps == 0
        if len(chunk):
            self._last_step = None if keep[-1] else _last_step_of(chunk)
        self._send_steps(chunk, keep)

    def log_result(self, summary: dict, tags: dict[str, str]) -> None:
        """Store the last step if thinning left it out, the summary metrics and the result tags.

        Returns once every request so far is stored.
        """
        if self._last_step is not None:
            self._send_steps(self._last_step, np.ones(1, dtype=bool))
            self._last_step = None
        self._send({"type": "result", "summary": summary, "tags": tags})
        while self._unanswered:
            self._take_reply(block=True)

    def end(self, status: str) -> None:
        """End the run as `status` and wait for the logger process to exit."""
        if not self._run_requested:
            self._process.kill()
            self._process.wait()
            return
        if not self._frame_cut:
            try:
                self._send({"type": "end", "status": status}, expect_reply=False)
            except LoggerError:
                pass  # the process has exited, and its last reply below gives the reason
        # EOF on the requests pipe: a logger that missed the end request ends the run KILLED.
        self._process.stdin.close()
        rest = self._replies + self._process.stdout.read()
        returncode = self._process.wait()

        replies = [json.loads(line) for line in rest.splitlines() if line]
        # The reply to `open` is still here if this process stopped before wait_for_run() took it.
        run_created = self._run_id is not None or (bool(replies) and replies[0].get("ok") == "open")
        if not run_created or replies[-1:] == [{"ok": "end"}]:
            return
        errors = [reply["error"] for reply in replies if "error" in reply]
        reason = errors[-1] if errors else f"the logger process {_exit_description(returncode)}"
        raise LoggerError(f"MLflow run {self._run_id or ''} could not be ended as {status} and stays RUNNING: {reason}")

    def _send_steps(self, chunk: StepChunk, keep: np.ndarray) -> None:
        count = int(keep.sum())
        if count == 0:
            return
        payload = encode_steps(chunk.steps[keep], {key: getattr(chunk, key)[keep] for key in SERIES})
        self._send({"type": "steps", "count": count, "timestamp": int(time.time() * 1000)}, payload)

    def _send(self, header: dict, payload: bytes = b"", expect_reply: bool = True) -> None:
        view = memoryview(encode_frame(header, payload))
        # A signal can stop the loop between two writes. The logger reads a cut
        # frame as the end of the pipe and ends the run KILLED.
        self._frame_cut = True
        try:
            while view:
                written = os.write(self._process.stdin.fileno(), view)
                view = view[written:]
        except BrokenPipeError:
            raise self._exited_error() from None
        self._frame_cut = False
        if expect_reply:
            self._unanswered += 1

    def _take_reply(self, block: bool, check: bool = True) -> dict | None:
        """Return the next reply, or None if none has arrived and `block` is false.

        With `check`, an error reply is raised as LoggerError.
        """
        descriptor = self._process.stdout.fileno()
        while b"\n" not in self._replies:
            if not block and not select.select([descriptor], [], [], 0)[0]:
                return None
            data = os.read(descriptor, 1 << 16)
            if not data:
                raise self._exited_error()
            self._replies += data
        line, self._replies = self._replies.split(b"\n", 1)
        self._unanswered -= 1
        reply = json.loads(line)
        if check and "error" in reply:
            raise LoggerError(f"MLflow logging failed: {reply['error']}")
        return reply

    def _exited_error(self) -> LoggerError:
        return LoggerError(f"the logger process {_exit_description(self._process.wait())} unexpectedly")


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"
