PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-extras test demo bench readme-check

install:
	$(PIP) install -q -r requirements.txt

# the optional packages (167 MiB) too, so that the ONNX and TensorBoard tests run rather than skip
install-extras: install
	$(PIP) install -q -r requirements-extras.txt

test: install-extras
	$(PYTHON) -m pytest -q

demo: install
	bash scripts/demo.sh

bench: install
	$(PYTHON) bench.py

readme-check: install
	$(PYTHON) -m pytest -q tests/test_readme.py
