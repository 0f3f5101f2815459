"""DVC pipeline for the gradient-clipping experiment, tracked in MLflow."""

import os

# Python runs this file before any module of the package, so these defaults
# hold whichever module imports mlflow first.
# MLflow 3 decides at import time whether to send usage telemetry, and this
# project sends nothing off the machine.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# When it ends a run on a tracking server, MLflow prints the run's URL with the
# user and password of MLFLOW_TRACKING_URI. The stages log the run id instead.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
