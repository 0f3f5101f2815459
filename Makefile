# Every target runs inside the project's own .venv, so it works the same
# whether or not another virtual environment is active.

VENV := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BASE_PYTHON ?= python3
UI_PORT ?= 5000

export PATH := $(VENV)/bin:$(PATH)
export VIRTUAL_ENV := $(VENV)
# Nothing leaves the machine: no MLflow telemetry, no DVC analytics or update check.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1

TRACKING_URI = $(or $(MLFLOW_TRACKING_URI),sqlite:///$(CURDIR)/mlflow.db)

.PHONY: install repro test ui runs bench clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml requirements.lock
	test -x $(PYTHON) || $(BASE_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# The params check first: for some invalid arm names DVC fails before any stage
# runs, with a message that does not name the key. Then the dvc.lock entries
# and outputs of arms removed from params.yaml go, which DVC itself keeps.
repro: $(INSTALLED)
	python -m pipeline.params
	python -m pipeline.stale_arms
	dvc repro

test: $(INSTALLED)
	python -m pytest

ui: $(INSTALLED)
	mlflow ui --backend-store-uri '$(TRACKING_URI)' --host 127.0.0.1 --port $(UI_PORT)

# `make runs` lists the runs that match the workspace; `make runs RUN=<run id>`
# prints how to reproduce one run.
runs: $(INSTALLED)
	python -m pipeline.runs $(RUN)

bench: $(INSTALLED)
	python -m benchmarks

clean:
	rm -rf $(VENV)
