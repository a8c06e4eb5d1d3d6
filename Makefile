# quanta: make demo | make test | make ui | make bench | make setup | make test-slow | make e2e
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.quanta-installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export QUANTA_PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_HOME ?= $(QUANTA_PREFECT_HOME)

.PHONY: setup demo test test-slow e2e ui serve bench clean-store

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; `pip check` must be clean.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip check
	touch $(STAMP)

# the four demo studies checked first, then run one after another on one temporary Prefect server; total time last
demo: setup
	$(BIN)/quanta run sparse-parity lm-losses qdg qdg-sparse-parity
	@echo
	@echo "Results: ./quanta-store (reports under quanta-store/report/*/report.md)."
	@echo "Open them in the Prefect UI: run 'make ui', then browse http://127.0.0.1:4200 (Runs, Artifacts)."
	@echo "Lineage of any artifact: .venv/bin/quanta lineage <content-hash-prefix>"

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

# slower tests, not in `make test`: schedules through `prefect deploy` + a process work pool + `prefect worker start`;
# the reliability cases that need a whole qdg run or a signal sent mid-run (> 30 s each)
test-slow: setup
	QUANTA_SLOW_TESTS=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/flows/test_ops_schedules.py \
		tests/reliability/test_processes.py tests/reliability/test_signals.py \
		tests/reliability/test_task_states.py

# the Prefect UI in a headless browser (not in `make test`): a `make ui` server on a free port, the tiny studies run
# against it, each report page checked (title, plots decode and render, lineage graph drawn); screenshots in
# e2e-screenshots/. Installs Debian's chromium when missing.
e2e: setup
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	QUANTA_E2E=1 $(BIN)/python -m pytest -q -p no:cacheprovider -s tests/e2e

ui: setup
	@echo "Prefect UI on http://127.0.0.1:4200 (Prefect home: $(PREFECT_HOME)); Ctrl-C to stop."
	@echo "To send new runs to this server: export PREFECT_API_URL=http://127.0.0.1:4200/api"
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

# serve the scheduled deployments against the `make ui` server (see docs/scheduling.md)
serve: setup
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:4200/api} $(BIN)/quanta serve

bench: setup
	$(BIN)/python -m benchmarks.run

clean-store:
	rm -rf quanta-store
