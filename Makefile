# flowdeck: `make run` sets up and starts the demo; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast bench lint lint-imports ns typecheck typecheck-baseline format clean

# setup.py and the kernel source too: an editable install does not rebuild the extension
$(STAMP): pyproject.toml setup.py pipeline/_kernel.pyx
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/flowdeck demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Every benchmark, one table (bench/README.md); `make bench BENCH_ARGS="--quick --json"`.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

# ruff, the import contracts ([tool.importlinter]) and the type check, each run even if one
# before it fails, so one `make lint` shows every problem; it fails if any of them failed.
lint: $(STAMP)
	@rc=0; \
	$(BIN)/ruff check console pipeline storage tests bench || rc=1; \
	$(MAKE) --no-print-directory lint-imports || rc=1; \
	$(MAKE) --no-print-directory typecheck || rc=1; \
	exit $$rc

# The checkout's packages as the flowdeck namespace, for tools that cannot follow the editable
# install's import hook (mypy, and lint-imports run from its own virtualenv).
NS := build/typecheck

ns:
	@mkdir -p $(NS)/flowdeck
	@for p in console pipeline storage; do ln -sfn ../../../$$p $(NS)/flowdeck/$$p; done

# import-linter has its own virtualenv: it needs click, and with click installed
# `import httpx` also loads httpx's command line and rich, so in the test virtualenv every
# command would load rich (tests/e2e/test_cli_imports.py checks that only a console does).
# lint-imports reads the source only, through $(NS), and needs none of flowdeck's deps.
IMPORT_LINTER := import-linter>=2.1,<3
LINT_VENV     := build/lint-venv
LINT_STAMP    := $(LINT_VENV)/.installed

$(LINT_STAMP): Makefile
	test -x $(LINT_VENV)/bin/python || $(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install --quiet '$(IMPORT_LINTER)'
	touch $@

lint-imports: $(LINT_STAMP) ns
	PYTHONPATH=$(NS) $(LINT_VENV)/bin/lint-imports --no-logo --cache-dir build/import_linter_cache

# mypy exits 1 for type errors and 2 when it could not run: only 0 and 1 go on to the
# baseline, which fails on errors it does not list (.ci/mypy-baseline.txt). mypy reads the
# package from $(NS) ([tool.mypy] mypy_path); the output names the real paths.
TYPECHECK_OUT := build/mypy.txt

$(TYPECHECK_OUT): $(STAMP) ns FORCE
	@$(BIN)/mypy > $@.raw; rc=$$?; \
	sed 's#^$(NS)/flowdeck/##' $@.raw > $@; rm -f $@.raw; \
	if [ $$rc -gt 1 ]; then cat $@; echo "mypy could not run (exit $$rc)"; exit $$rc; fi

typecheck: $(TYPECHECK_OUT)
	$(BIN)/mypy-baseline filter < $(TYPECHECK_OUT)

typecheck-baseline: $(TYPECHECK_OUT)
	$(BIN)/mypy-baseline sync < $(TYPECHECK_OUT)
	@echo "wrote .ci/mypy-baseline.txt ($$(grep -c . .ci/mypy-baseline.txt) errors)"

FORCE:

format: $(STAMP)
	$(BIN)/ruff format console pipeline storage tests bench

clean:
	rm -rf $(VENV) build .pytest_cache flowdeck.db flowdeck.db-wal flowdeck.db-shm flowdeck.db.spool
