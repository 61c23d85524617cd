# Two entry points: `make serve` (set up, then run the reference server) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NPM_CI := npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

.PHONY: setup browser test lint typecheck pytest docs serve chaos clean

setup: $(STAMP)

$(STAMP): pyproject.toml tests/asyncapi/package-lock.json docs/package-lock.json
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(NPM_CI) --prefix tests/asyncapi
	$(NPM_CI) --prefix docs
	touch $@

# The docs' browser test drives Debian's Chromium; install it when missing (needs root).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

pytest: setup browser
	UNISOCK_REQUIRE_BROWSER=1 UNISOCK_REQUIRE_REDIS=1 $(PY) -m pytest

test: lint typecheck docs pytest

serve: setup
	$(VENV)/bin/unisock serve

# A longer randomized fault run than CI's (two nodes on a private Redis, history checker).
CHAOS_SECONDS ?= 180
chaos: setup
	$(PY) tests/chaos.py --duration $(CHAOS_SECONDS) --subscribers 4 --publishers 3

clean:
	rm -rf $(VENV) site tests/asyncapi/node_modules docs/node_modules
