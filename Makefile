# Two entry points: `make serve` (set up, then run the reference server) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TASKBOARD := examples/taskboard
NPM_CI := npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

.PHONY: setup browser js taskboard demo e2e screenshots test lint typecheck pytest docs serve chaos fuzz-long clean \
	bench-setup bench bench-profile

setup: $(STAMP)

$(STAMP): pyproject.toml tests/asyncapi/package-lock.json docs/package-lock.json reference/js/package-lock.json \
		$(TASKBOARD)/package-lock.json
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(NPM_CI) --prefix tests/asyncapi
	$(NPM_CI) --prefix docs
	$(NPM_CI) --prefix reference/js
	npm --prefix reference/js run --silent build
	$(NPM_CI) --prefix $(TASKBOARD)
	touch $@

# The browser tests and the Chromium client adapter drive Debian's Chromium through
# playwright-core (never a downloaded browser); install it when missing (needs root).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# The TypeScript client: generated types up to date, tsc strict, eslint, unit tests; dist/.
js: setup
	npm --prefix reference/js run --silent build
	cd reference/js && node tools/gen-types.mjs --check && npx tsc --noEmit -p . && npx eslint . \
		&& node --test --test-reporter=dot test/

# The example application: build its page, then serve it on http://127.0.0.1:8000/.
taskboard: js
	npm --prefix $(TASKBOARD) run --silent typecheck
	npm --prefix $(TASKBOARD) run --silent build

demo: taskboard
	cd $(TASKBOARD) && $(abspath $(PY)) -m taskboard --port 8000 --data .taskboard-data

# Browser tests in Debian's Chromium through playwright-core: the task board and the docs
# site, the two files in parallel.
e2e: setup browser taskboard
	node --test --test-concurrency=2 --test-reporter=spec tests/browser/ $(TASKBOARD)/tests/

# Refresh the task board screenshots that the docs show.
screenshots: setup browser taskboard
	UNISOCK_SCREENSHOTS=docs/images/taskboard node --test $(TASKBOARD)/tests/

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy

docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

pytest: setup browser js
	UNISOCK_REQUIRE_BROWSER=1 UNISOCK_REQUIRE_REDIS=1 $(PY) -m pytest --durations=25

test: lint typecheck js docs pytest e2e matrix

serve: setup
	$(VENV)/bin/unisock serve

# A longer randomized fault run than CI's (two nodes on a private Redis, history checker).
CHAOS_SECONDS ?= 180
chaos: setup
	$(PY) tests/chaos.py --duration $(CHAOS_SECONDS) --subscribers 4 --publishers 3

# Peer benchmarks (bench/README.md): the Node peers and the bench extra, then every scenario
# against every peer (about 30 minutes on a quiet machine); BENCH_ARGS=--quick for a short run.
BENCH_ARGS ?=
bench-setup: setup
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m bench setup

bench: bench-setup
	$(PY) -m bench run $(BENCH_ARGS)

bench-profile: bench-setup
	$(PY) -m bench profile $(BENCH_ARGS)

# A long fuzz campaign: schema-driven core, live and frame campaigns with fresh seeds, then
# coverage-guided fuzzing (atheris) of the parser and the filter compiler; crash files land
# in .fuzz/. Stops at the first property violation and prints its seed.
FUZZ_MINUTES ?= 15
fuzz-long: setup
	$(PY) -m pip install --quiet -e '.[fuzz]'
	cd tests && nice -n 15 ../$(PY) fuzz/long.py --minutes $(FUZZ_MINUTES)
	mkdir -p .fuzz/parser .fuzz/filter
	cp schemas/v1/examples/*.json .fuzz/parser/
	cd .fuzz && for target in parser filter; do nice -n 15 ../$(PY) ../tests/fuzz/atheris_targets.py \
		$$target $$target -max_total_time=$$(( $(FUZZ_MINUTES) * 30 )) -rss_limit_mb=4096 || exit 1; done

# The reference server under every configuration of tests/matrix/, graded by the quick profile
# one configuration at a time (UNISOCK_MATRIX_PARALLEL=2 for two);
# MATRIX_WRITE=docs/_data/conformance-matrix.json records it.
matrix: setup
	UNISOCK_MATRIX_WRITE=$(MATRIX_WRITE) $(PY) -m pytest -p no:cacheprovider tests/conformance_matrix.py

clean:
	rm -rf $(VENV) site tests/asyncapi/node_modules docs/node_modules reference/js/node_modules reference/js/dist \
		$(TASKBOARD)/node_modules $(TASKBOARD)/web/dist bench/node/node_modules
