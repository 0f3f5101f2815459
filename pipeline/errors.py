"""Errors a stage reports as one clear message, without a traceback."""


class PipelineError(Exception):
    """A problem the user fixes by changing an input, not the code."""


class ParamsError(PipelineError, ValueError):
    """params.yaml is missing, unreadable or contains an invalid value."""


class InputFileError(PipelineError, ValueError):
    """An input file of a stage is missing or does not have the expected content."""


class TrackingError(PipelineError, RuntimeError):
    """The MLflow tracking store cannot be reached or used."""


class StageFailure(RuntimeError):
    """A failure outside the user's inputs that its message describes fully, so no traceback."""
