# flowdeck: `make run` sets up and starts the demo; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast bench lint lint-imports typecheck typecheck-baseline format clean

$(STAMP): pyproject.toml
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

bench: $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# ruff, the import contracts ([tool.importlinter]) and the type check, each run even if one
# before it fails, so one `make lint` shows every problem; it fails if any of them failed.
lint: $(STAMP)
	@rc=0; \
	$(BIN)/ruff check console pipeline storage tests bench || rc=1; \
	$(MAKE) --no-print-directory lint-imports || rc=1; \
	$(MAKE) --no-print-directory typecheck || rc=1; \
	exit $$rc

lint-imports: $(STAMP)
	$(BIN)/lint-imports --no-logo --cache-dir build/import_linter_cache

# mypy cannot follow the editable install's import hook: link the three folders as the
# flowdeck namespace under build/typecheck/ ([tool.mypy] mypy_path), then report the real
# paths. mypy exits 1 for type errors and 2 when it could not run: only 0 and 1 go on to
# the baseline, which fails on errors it does not list (.ci/mypy-baseline.txt).
TYPECHECK_OUT := build/mypy.txt

$(TYPECHECK_OUT): $(STAMP) FORCE
	@mkdir -p build/typecheck/flowdeck
	@for p in console pipeline storage; do ln -sfn ../../../$$p build/typecheck/flowdeck/$$p; done
	@$(BIN)/mypy > $@.raw; rc=$$?; \
	sed 's#^build/typecheck/flowdeck/##' $@.raw > $@; rm -f $@.raw; \
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
	rm -rf $(VENV) .pytest_cache flowdeck.db flowdeck.db-wal flowdeck.db-shm flowdeck.db.spool
