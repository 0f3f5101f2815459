"""The logger process: owns one arm's MLflow run, so the training process never imports mlflow.

The train stage starts it with `python -m pipeline.run_logger` (see
pipeline/logger_process.py) and talks to it over two pipes:

- Requests, on the logger's stdin, are frames: two big-endian uint32 lengths,
  a JSON header of that many bytes, then a binary payload. The `type` of the
  header is one of `open`, `steps`, `result` and `end`. A `steps` payload is
  the kept steps as int64, then the loss, gradient norm and weight norm of
  those steps as float32, little-endian, with `count` values each.
- Replies, on the logger's stdout, are one JSON object per line, `{"ok": ...}`
  or `{"error": ...}`: one for each request, until a failed `open` ends the
  process.

The logger ignores SIGINT and SIGTERM: it shares the stage's process group,
so Ctrl-C reaches it too, and the training process decides how the run ends.
If the requests pipe closes without an `end` request, because the training
process was killed, the logger ends the run KILLED.
"""

import json
import logging
import os
import signal
import struct
import sys
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from pipeline.cli import STOP_SIGNALS, redacted_output
from pipeline.errors import TrackingError
from pipeline.steps import SERIES

log = logging.getLogger(__name__)

_FRAME_LENGTHS = struct.Struct(">II")
STEP_DTYPE = np.dtype("<i8")
VALUE_DTYPE = np.dtype("<f4")

STATUS_FINISHED = "FINISHED"
STATUS_FAILED = "FAILED"
STATUS_KILLED = "KILLED"


def encode_frame(header: dict, payload: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode("utf-8")
    return _FRAME_LENGTHS.pack(len(encoded), len(payload)) + encoded + payload


def read_frame(stream: BinaryIO) -> tuple[dict, bytes] | None:
    """Return the next request, or None when the stream ends, even in the middle of a frame."""
    lengths = stream.read(_FRAME_LENGTHS.size)
    if len(lengths) < _FRAME_LENGTHS.size:
        return None
    header_length, payload_length = _FRAME_LENGTHS.unpack(lengths)
    header = stream.read(header_length)
    payload = stream.read(payload_length)
    if len(header) < header_length or len(payload) < payload_length:
        return None
    return json.loads(header), payload


def encode_steps(steps: np.ndarray, series: dict[str, np.ndarray]) -> bytes:
    parts = [steps.astype(STEP_DTYPE, copy=False).tobytes()]
    parts += [series[key].astype(VALUE_DTYPE, copy=False).tobytes() for key in SERIES]
    return b"".join(parts)


def decode_steps(payload: bytes, count: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    steps = np.frombuffer(payload, dtype=STEP_DTYPE, count=count)
    offset = count * STEP_DTYPE.itemsize
    series = {}
    for key in SERIES:
        series[key] = np.frombuffer(payload, dtype=VALUE_DTYPE, count=count, offset=offset)
        offset += count * VALUE_DTYPE.itemsize
    return steps, series


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _Replies:
    """The reply stream; once the training process has gone, replies are dropped."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self.parent_gone = False

    def send(self, reply: dict) -> None:
        if self.parent_gone:
            return
        try:
            self._stream.write(json.dumps(reply) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            self.parent_gone = True


def serve(requests: BinaryIO, replies: _Replies) -> int:
    """Open the requested run, store what arrives, and end the run as requested or KILLED.

    Returns the exit status: 1 if the run could not be ended, else 0.
    """
    request = read_frame(requests)
    if request is None:
        return 0  # the training process stopped before it requested a run
    header, _ = request
    run = _open_run(header, replies)
    if run is None:
        return 0

    failure = None
    status = STATUS_KILLED
    while True:
        request = read_frame(requests)
        if request is None:
            log.warning("the training process exited without ending MLflow run %s", run.run_id)
            break
        header, payload = request
        if header["type"] == "end":
            status = header["status"]
            break
        # After a failure nothing more is stored: the training process stops at
        # this error, and the run ends FAILED.
        if failure is None:
            try:
                _store(run, header, payload)
            except Exception as error:
                failure = describe(error)
        replies.send({"error": failure} if failure else {"ok": header["type"]})

    try:
        run.finish(status)
    except Exception as error:
        log.error("MLflow run %s could not be ended as %s: %s", run.run_id, status, describe(error))
        replies.send({"error": describe(error)})
        return 1
    replies.send({"ok": "end"})
    return 0


def _open_run(header: dict, replies: _Replies):
    """Create the run with its params and lineage; reply with its id or the error."""
    # Imported here: the import takes 1 to 2 s, which this process spends
    # while the training process imports torch and loads the dataset.
    from pipeline.lineage import collect_lineage, record_lineage
    from pipeline.tracking import ArmRun, open_experiment, repository_root, tracking_uri

    run = None
    try:
        root = repository_root()
        client, experiment_id = open_experiment(tracking_uri(root), header["experiment_name"], root)
        run_params = header["run_params"]
        lineage = collect_lineage(
            Path(header["params_path"]), Path(header["dataset_path"]), run_params, Path(header["script"])
        )
        arm = header["arm"]
        experiment_name = os.environ.get("DVC_EXP_NAME")
        run_name = f"{arm} ({experiment_name})" if experiment_name else arm
        tags = {"arm": arm, **lineage.tags}
        run = ArmRun(client, experiment_id, run_name, tags=tags)
        run.log_params(run_params)
        record_lineage(client, run.run_id, lineage)
    except TrackingError as error:
        replies.send({"error": str(error), "input_error": True})
        return None
    except Exception as error:
        if run is not None:
            run.finish(STATUS_FAILED)
        replies.send({"error": describe(error)})
        return None
    replies.send({"ok": "open", "run_id": run.run_id})
    return run


def _store(run, header: dict, payload: bytes) -> None:
    if header["type"] == "steps":
        steps, series = decode_steps(payload, header["count"])
        run.log_steps(steps, series, header["timestamp"])
    elif header["type"] == "result":
        run.log_summary(header["summary"])
        run.set_tags(header["tags"])
    else:
        raise ValueError(f"unknown request type {header['type']!r}")


def main() -> None:
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    # Replies get stdout to themselves: anything else written to it, by this
    # module or by MLflow, goes to stderr instead.
    replies = _Replies(os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8"))
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with redacted_output():
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        status = serve(sys.stdin.buffer, replies)

    # Every request has been stored or has failed by now. The normal interpreter
    # shutdown tears down the modules that mlflow imported, which took about
    # 0.7 s on the project's two-core machine, and the train stage waits for it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
