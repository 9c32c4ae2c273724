# Musketeer: `make demo` runs the main job on the embedded platform; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: venv demo lint test test-fast bench screenshots clean

# (Re)create the virtualenv and install the project with what the demo and tests need.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,ml,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/musketeer demo

# Style (ruff) and types (mypy --strict on the packages), as configured in pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -ra --durations=20

bench: $(STAMP)
	$(PY) bench/api_bench.py
	$(PY) bench/round_bench.py
	$(PY) bench/faults.py
	$(PY) bench/algorithms.py
	$(PY) bench/sklearn_reference.py

# A screenshot of every dashboard page (docs/screenshots/), from a real run in Debian's Chromium.
screenshots: $(STAMP)
	$(PY) docs/screenshots.py

clean:
	rm -rf $(VENV) .musketeer .musketeer-demo
