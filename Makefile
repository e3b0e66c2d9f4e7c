# evoplastic: `make run` installs into .venv and runs the default experiment; `make test` passes the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: install run test test-slow lint bench docs clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/evoplastic run experiments/oja.yaml

# two pytest-xdist workers for everything but Ray; the Ray tests (which start and stop
# Ray instances of their own) then run in one process, alone on the machine
test: install
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow and not ray"
	$(BIN)/python -m pytest -q -m "ray and not slow"

test-slow: install
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "slow and not ray"
	$(BIN)/python -m pytest -q -m "slow and ray"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/evoplastic bench

# the documentation site (mkdocs + material + mkdocstrings) in site/; warnings are errors
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

clean:
	rm -rf $(VENV) build site *.egg-info
