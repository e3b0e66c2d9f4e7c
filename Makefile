# evoplastic: `make run` installs into .venv and runs the default experiment; `make test` passes the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the versions the committed figures and the tests were made with (pip constraints: they pin
# what is installed, and install nothing by themselves)
CONSTRAINTS := constraints.txt
PIP := $(BIN)/python -m pip install --quiet -c $(CONSTRAINTS)

TEST_STAMP := $(VENV)/.test-installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: install run test test-fast test-slow lint bench docs clean

# the lean core: what `evoplastic run` needs on one machine (no Ray, no MLflow)
install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP) -e .
	touch $(STAMP)

# the test extras (pytest, ruff, hypothesis, Ray, MLflow) on top
$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test]'
	touch $(TEST_STAMP)

run: install
	$(BIN)/evoplastic run experiments/oja.yaml

# two pytest-xdist workers for everything but Ray and, beside them, one process for the Ray
# tests (they start and stop Ray instances of their own, and much of their time is spent
# waiting for those; their Ray workers run at the same priority as the tests, not Ray's
# default niceness of 15); the Ray tests' report follows the others'. Both share one
# compilation cache, removed after.
test: $(TEST_STAMP)
	@cache=$$(mktemp -d); ray_dir=$$(mktemp -d); \
	EVOPLASTIC_TEST_CACHE_DIR=$$cache RAY_worker_niceness=0 $(BIN)/python -m pytest -q -p no:cacheprovider \
	  --basetemp=$$ray_dir/tmp -m "ray and not slow" > $$ray_dir/report 2>&1 & ray_pid=$$!; \
	echo "$(BIN)/python -m pytest -q -n 2 --dist worksteal -m \"not slow and not ray\""; \
	EVOPLASTIC_TEST_CACHE_DIR=$$cache $(BIN)/python -m pytest -q -n 2 --dist worksteal \
	  -m "not slow and not ray"; rc=$$?; \
	wait $$ray_pid; ray_rc=$$?; \
	echo "$(BIN)/python -m pytest -q -m \"ray and not slow\" (run beside the above)"; \
	cat $$ray_dir/report; rm -rf $$cache $$ray_dir; \
	test $$rc -eq 0 && test $$ray_rc -eq 0

# the fast tier, on every change: unit tests only (no whole runs, no Ray), under 2 minutes
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow and not ray and not integration"

test-slow: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "slow and not ray"
	$(BIN)/python -m pytest -q -m "slow and ray"

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@! git grep -n -E '^(<<<<<<<|>>>>>>>)( |$$)' -- . || (echo "merge conflict markers (above)"; false)

bench: install
	$(BIN)/evoplastic bench

# the documentation site (mkdocs + material + mkdocstrings) in site/; warnings are errors
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

$(DOCS_STAMP): $(STAMP)
	$(PIP) -e '.[docs]'
	touch $(DOCS_STAMP)

clean:
	rm -rf $(VENV) build site *.egg-info
