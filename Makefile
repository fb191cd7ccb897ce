PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install test demo bench readme-check

install:
	$(PIP) install -q -r requirements.txt

test: install
	$(PYTHON) -m pytest -q

demo: install
	bash scripts/demo.sh

bench: install
	$(PYTHON) bench.py

readme-check: install
	$(PYTHON) -m pytest -q tests/test_readme.py
