# One task runner. Every target installs what it needs into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install  ## import sample_data/ into the built-in sandbox, end to end
	$(VENV)/bin/consent-import demo --out out

test: install  ## the test suite (the README's test command; CI runs it)
	$(PY) -m pytest -q

lint: install  ## ruff, mypy (strict on importer/) and the import contracts (pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install  ## the speed figures in the README
	$(PY) benchmarks/bench_validate.py
	$(PY) benchmarks/bench_sandbox.py
	$(PY) benchmarks/bench_import.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
