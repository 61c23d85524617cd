# Two entry points: `make serve` (set up, then run the reference server) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint typecheck pytest docs serve clean

setup: $(STAMP)

$(STAMP): pyproject.toml tests/asyncapi/package-lock.json
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	npm ci --prefix tests/asyncapi --no-audit --no-fund --loglevel=error
	touch $@

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check reference conformance tests

typecheck: setup
	$(PY) -m mypy

pytest: setup
	UNISOCK_REQUIRE_REDIS=1 $(PY) -m pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) site tests/asyncapi/node_modules

serve: setup
	$(VENV)/bin/unisock serve
