# Entry points (design section 10). The virtual environment lives in .venv/.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST := .venv/bin/pytest
REPORTS := reports
TEST_STAGES := test-data test-model test-app test-release test-e2e
export PYTHONPATH := $(CURDIR)

.PHONY: venv sysdeps lint test $(TEST_STAGES) coverage bench up down clean

.venv/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: .venv/.installed

sysdeps:
	bash ops/system-deps.sh

lint: venv
	.venv/bin/ruff check .
	PYTHONPATH=. .venv/bin/lint-imports

# One stage per CI job (test-data, test-model, test-app, test-release, test-e2e). Each writes an HTML report,
# JUnit (reports/junit/<stage>.xml) and its coverage data (reports/coverage/.coverage.<stage>) for `make coverage`;
# a stage alone never fails on the total (--cov-fail-under=0): the combined total does, in `make coverage`.
# A static pattern rule: make skips implicit rules for .PHONY targets, so a plain `test-%:` rule ran nothing.
COV_SOURCES := --cov=app --cov=auto_deployment --cov=simulator
$(TEST_STAGES): test-%: venv sysdeps
	mkdir -p $(REPORTS)/junit $(REPORTS)/coverage
	COVERAGE_FILE=$(abspath $(REPORTS))/coverage/.coverage.$* $(PYTEST) tests/$* --html=$(REPORTS)/$*.html --self-contained-html \
		--junitxml=$(REPORTS)/junit/$*.xml $(COV_SOURCES) --cov-report= --cov-fail-under=0

test: venv sysdeps lint
	$(PYTEST) tests --html=$(REPORTS)/all.html --self-contained-html

# Combines the stages' coverage data (no second run of the suite): Cobertura (reports/coverage.xml) and HTML are
# written whatever the total; then the total is printed and fails under [tool.coverage.report] fail_under.
# Run the test-* stages first (locally: `make test-data test-model test-app test-release test-e2e coverage`).
# The total lives in its own folder: coverage's reporting commands would otherwise combine (and delete) the stage files.
COV_STAGES := $(REPORTS)/coverage/.coverage.*
COV_DATA := $(REPORTS)/coverage-total/.coverage
coverage: venv
	@ls $(COV_STAGES) >/dev/null 2>&1 || { echo "no stage coverage data in $(REPORTS)/coverage: run make test-<stage> first" >&2; exit 1; }
	mkdir -p $(dir $(COV_DATA))
	$(PY) -m coverage combine --keep --data-file=$(COV_DATA) $(COV_STAGES)
	$(PY) -m coverage xml --data-file=$(COV_DATA) --fail-under=0 -o $(REPORTS)/coverage.xml
	$(PY) -m coverage html --data-file=$(COV_DATA) --fail-under=0 -d $(REPORTS)/coverage-total/html
	$(PY) -m coverage report --data-file=$(COV_DATA)

bench: venv sysdeps
	$(PY) -m bench

# DEMO=0 brings the platform up without the demo loop (Kafka, simulator, scheduler).
DEMO ?= 1
up: venv sysdeps
	$(PY) -m ops.stack up $(if $(filter 1,$(DEMO)),--demo)

down:
	$(PY) -m ops.stack down

clean:
	rm -rf .run $(REPORTS) .pytest_cache
