# fvis: set-up, tests, example renders.
VENV ?= .venv
PY := $(VENV)/bin/python
FVIS := $(VENV)/bin/fvis

.PHONY: install test test-all lint render gallery schema readme-images clean

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

schema:  ## the JSON schema editors read (fvis.schema.json)
	$(FVIS) schema > fvis.schema.json

readme-images:  ## the grids shown in README.md
	$(FVIS) render configs/quickstart.yaml --force --quiet
	$(FVIS) render configs/classes.yaml --force --quiet
	cp outputs/quickstart/grid.png docs/images/quickstart.png
	cp outputs/classes/grid.png docs/images/classes.png

clean:
	rm -rf outputs/*/
