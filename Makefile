# One front door: every set-up, test and demo step the README shows.
SHELL := /bin/bash
VENV := .venv
REBUILD := $(VENV)/bin/rebuild
PYTEST_ARGS ?=

.PHONY: setup engine images demo test test-fast lint bench realworld pypi-probe clean

setup:
	@scripts/setup-host

engine:
	@scripts/start-engine

images: setup
	@scripts/demo images

demo: setup
	@scripts/demo

test: setup
	scripts/test $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not docker" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check rebuild tests bench
	$(VENV)/bin/mypy --strict bench/*.py
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q tests/test_architecture.py

bench: setup
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/auditlog.py

# tests/realworld/RESULTS.md: the real-world corpus beside reprotest (tens of minutes).
realworld: setup
	$(VENV)/bin/python bench/realworld.py

# bench/results/pypi_probe.md: the most downloaded pure-Python packages (hours; not in CI).
pypi-probe: setup
	$(VENV)/bin/python bench/pypi_probe.py

clean:
	rm -rf .rebuild $(VENV)
