PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-extras test demo bench readme-check

install:
	$(PIP) install -q -r requirements.txt

# the optional packages (167 MiB) too, so that the ONNX and TensorBoard tests run rather than skip
install-extras: install
	$(PIP) install -q -r requirements-extras.txt

# one process per core (pytest-xdist), one thread each: 2 cores take about 5 minutes instead of 9
test: install-extras
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -n auto

demo: install
	bash scripts/demo.sh

bench: install
	$(PYTHON) bench.py

readme-check: install
	$(PYTHON) -m pytest -q tests/test_readme.py
