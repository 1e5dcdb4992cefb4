# Two entry points, each creating (or reusing) the virtual environment in .venv:
#   make demo   runs the main job: train the tiny default model, then sample it with
#               FeF and the baselines and print the sampler table
#   make test   runs the whole test suite
# and `make exactness` runs the exactness experiment on oracle distributions.
# The demo installs the runtime dependencies only; the tests add the test extras
# (CPU torch and transformers, the references of the imported models).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.runtime: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

.PHONY: demo exactness test venv
venv: $(VENV)/.test

demo: $(VENV)/.runtime
	$(PY) -m experiments.train --config=experiments/configs/tiny.py --workdir=runs/tiny

exactness: $(VENV)/.runtime
	$(PY) -m experiments.exactness --workdir=runs/exactness

test: $(VENV)/.test
	$(PY) -m pytest -q -n 2 --durations=15
