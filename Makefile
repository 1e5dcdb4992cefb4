# Two entry points, each creating (or reusing) the virtual environment in .venv:
#   make demo   runs the main job (the exactness experiment on oracle distributions)
#   make test   runs the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

.PHONY: demo test venv
venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m experiments.exactness

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --durations=15
