# Entry points (design section 10). The virtual environment lives in .venv/.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST := .venv/bin/pytest
REPORTS := reports
export PYTHONPATH := $(CURDIR)

.PHONY: venv sysdeps lint test test-data test-model test-app test-release test-e2e coverage bench up down clean

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

# One stage per CI job; each writes an HTML report under reports/.
test-%: venv sysdeps
	$(PYTEST) tests/$* --html=$(REPORTS)/$*.html --self-contained-html

test: venv sysdeps lint
	$(PYTEST) tests --html=$(REPORTS)/all.html --self-contained-html

coverage: venv sysdeps
	$(PYTEST) tests --cov=app --cov=auto_deployment --cov=simulator --cov-report=term --cov-report=html:$(REPORTS)/coverage

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
