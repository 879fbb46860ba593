# fvis: set-up, tests, example renders.
VENV ?= .venv
PY := $(VENV)/bin/python
FVIS := $(VENV)/bin/fvis

.PHONY: install test test-all lint render gallery clean

install:  ## a virtual environment with fvis and its dev tools
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'

test:  ## the default (fast) test suite
	$(PY) -m pytest -q

test-all:  ## every test, slow ones included
	$(PY) -m pytest -q -m ''

lint:
	$(VENV)/bin/ruff check .

render:  ## the README's main command
	$(FVIS) render configs/quickstart.yaml --force

gallery:  ## every example config
	for f in configs/*.yaml; do $(FVIS) render $$f --force --quiet || exit 1; done

clean:
	rm -rf outputs/*/
