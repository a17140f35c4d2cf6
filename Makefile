# The README's quick start: `make` runs the main job, `make test` runs the tests.
# Both create .venv on first use (.ci/install) and reuse it afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint clean-venv

run: $(VENV)/.installed
	$(PY) -m harness run

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check .

$(VENV)/.installed: pyproject.toml .ci/install
	PYTHON=$(PYTHON) bash .ci/install $(VENV)
	touch $@

clean-venv:
	rm -rf $(VENV)
