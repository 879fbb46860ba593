# fvis: set-up, tests, example renders.
VENV ?= .venv
PY := $(VENV)/bin/python
FVIS := $(VENV)/bin/fvis
# The virtual environment as a file: every target that runs fvis or its tools depends on it, so
# a fresh clone needs no `make install` first, and pyproject.toml newer than it reinstalls.
INSTALLED := $(VENV)/.installed

.PHONY: install test test-all lint render gallery schema readme-images clean sweep-conv3 sweep-classes bench bench-quality bench-data bench-atlas bench-prior bench-microscope bench-cluster microscope
.PHONY: regress regress-update regress-render regress-portable drift
.PHONY: parameterizations shapes-spectrum

install: $(INSTALLED)  ## a virtual environment with fvis, its dev tools and Ray (other targets make it too)

$(INSTALLED): pyproject.toml
	@echo "make: installing fvis and its dev tools into $(VENV) (about a minute and a half)"
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $@

test: $(INSTALLED)  ## the default (fast) test suite
	$(PY) -m pytest -q

test-all: $(INSTALLED)  ## every test, slow ones included
	$(PY) -m pytest -q -m ''

lint: $(INSTALLED)  ## ruff (lint and format), the import layers contract (pyproject.toml) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(VENV)/bin/mypy fvis

render: $(INSTALLED)  ## the README's main command
	$(FVIS) render configs/quickstart.yaml --force

gallery: $(INSTALLED)  ## every example config, in one process (each into outputs/<name>/)
	$(FVIS) render configs/*.yaml --force --quiet

sweep-conv3: $(INSTALLED)  ## every channel of the built-in model's conv3, 16 per optimization
	$(FVIS) sweep configs/objectives/channel.yaml --over objective.channel=0:64 --out outputs/sweep-conv3

sweep-classes: $(INSTALLED)  ## every class of the built-in model
	$(FVIS) sweep configs/quickstart.yaml --over objective.index=0:10 --out outputs/sweep-classes

bench: $(INSTALLED)  ## fvis vs torch-lucent vs the floor (installs the bench extra); writes benchmarks/results.md
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/bench.py

bench-quality: $(INSTALLED)  ## fvis vs torch-lucent picture quality on the built-in model, then on a random resnet18 (installs the bench extra; over an hour on 2 CPU cores); writes benchmarks/quality.md and quality-torchvision.md
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/quality_torchvision.py

bench-data: $(INSTALLED)  ## fvis examples vs the bare forward over the same data, memory at 2k and 20k images; writes benchmarks/data.md
	$(PY) benchmarks/data.py

bench-prior: $(INSTALLED)  ## the shipped learned prior at several weights, and its control; writes benchmarks/prior.md
	$(PY) benchmarks/prior.py

bench-atlas: $(INSTALLED)  ## the time of a 20x20 activation atlas of conv4 over 5,000 zoo images; writes benchmarks/atlas.md
	$(PY) benchmarks/atlas.py

microscope: $(INSTALLED)  ## the built-in model's site: every channel and class, examples and attributions over 2,000 images (outputs/microscope)
	$(FVIS) microscope configs/quickstart.yaml --data zoo:shapes:2000 --attribution --out outputs/microscope

bench-microscope: $(INSTALLED)  ## the microscope's build and rebuild times, size and screenshots; writes benchmarks/microscope.md
	rm -rf outputs/microscope
	$(PY) benchmarks/microscope.py

bench-cluster: $(INSTALLED)  ## a sweep and a pass over data, local vs Ray with 1 and 2 workers; writes benchmarks/cluster.md
	$(PY) benchmarks/cluster.py

schema: $(INSTALLED)  ## the JSON schemas editors read (fvis.schema.json, fvis.attribution.schema.json)
	$(FVIS) schema > fvis.schema.json
	$(FVIS) schema --attribution > fvis.attribution.schema.json

parameterizations: $(INSTALLED)  ## every parameterization and frequency cure on one objective (docs/parameterizations.md)
	$(PY) -m fvis.zoo.parameterizations outputs/parameterizations docs/images/parameterizations.png

shapes-spectrum: $(INSTALLED)  ## MACO's magnitude template for the built-in model, from 500 dataset images
	rm -rf outputs/shapes-samples
	$(PY) -c "from fvis.zoo.parameterizations import write_samples; write_samples('outputs/shapes-samples', 500)"
	$(FVIS) spectrum outputs/shapes-samples --size 64 -o configs/shapes.spectrum.safetensors

readme-images: $(INSTALLED)  ## the grids shown in README.md
	$(FVIS) render configs/quickstart.yaml --force --quiet
	$(FVIS) render configs/classes.yaml --force --quiet
	cp outputs/quickstart/grid.png docs/images/quickstart.png
	cp outputs/classes/grid.png docs/images/classes.png

clean:
	rm -rf outputs/*/

REGRESS_CONFIGS := tests/regression/configs
REGRESS_GOLDENS := tests/regression/goldens
REGRESS_OUT := outputs/regression
REGRESS_FLAGS ?=

regress-render: $(INSTALLED)  ## render every regression config into outputs/regression/<name>/, in one process
	rm -rf $(REGRESS_OUT)
	$(FVIS) render $(REGRESS_CONFIGS)/*.yaml --out $(REGRESS_OUT) --force --quiet

regress: regress-render  ## render the regression configs and compare them with their goldens
	$(FVIS) compare $(REGRESS_OUT) $(REGRESS_GOLDENS) $(REGRESS_FLAGS)

# The CPU code paths besides this processor's own that PyTorch's kernels (ATen), oneDNN and MKL
# pick per processor: another machine renders like one of them.
CPU_CODE_PATHS := "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41" "MKL_CBWR=COMPATIBLE" \
  "MKL_CBWR=AVX2"

regress-portable: regress  ## make regress, then again under each other CPU code path (goldens that hold on any CPU)
	for vars in $(CPU_CODE_PATHS); do \
	  echo "== $$vars"; env $$vars $(MAKE) --no-print-directory regress || exit 1; \
	done

drift: $(INSTALLED)  ## how far the regression renders move between CPU code paths, float32 and float64
	$(PY) benchmarks/drift.py

regress-update: regress-render  ## after an intended change: show what changed, then keep the new renders as goldens
	$(FVIS) compare $(REGRESS_OUT) $(REGRESS_GOLDENS) $(REGRESS_FLAGS) \
	  || echo "regress-update: the differences above become the new goldens"
	rm -rf $(REGRESS_GOLDENS)
	for d in $(REGRESS_OUT)/*/; do \
	  [ -f $$d/run.json ] || continue; \
	  mkdir -p $(REGRESS_GOLDENS)/$$(basename $$d) || exit 1; \
	  cp $$d/image_*.png $$d/run.json $(REGRESS_GOLDENS)/$$(basename $$d)/ || exit 1; \
	done
