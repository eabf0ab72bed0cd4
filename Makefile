# All set-up is idempotent: each target creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow check-quality-tests demo bench defaults docs lint clean mutation

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# torch first, with the exact pin: a looser spec pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[test,bench,dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# the slower set only (marker `slow`: default training on more seeds, DDP, ...); CI runs it too
test-slow: $(STAMP)
	$(PY) -m pytest -q --slow -m slow

# every quality test (marker `quality`) must fail when training is cut to 1 epoch
# (pytest -m quality --quality-epochs 1; the slow set is skipped); lists any that pass
check-quality-tests: $(STAMP)
	$(PY) tests/check_quality_tests.py

demo: $(STAMP)
	$(VENV)/bin/scgenvae demo --output demo_output

# every workload of benchmarks/run.py into benchmarks/RESULTS.md (+ .json); needs an idle machine
# (workload 1 runs jobs beside a busy process it starts itself); about an hour on 2 cores
bench: $(STAMP)
	$(PY) benchmarks/run.py --output benchmarks/RESULTS.md

DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install -e ".[docs]"
	touch $(DOCS_STAMP)

# offline build (no intersphinx, notebooks rendered from their committed outputs); warnings fail
docs: $(DOCS_STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

lint: $(STAMP)
	$(VENV)/bin/ruff check scgenvae tests benchmarks
	$(VENV)/bin/ruff format --check scgenvae tests benchmarks

clean:
	rm -rf $(VENV) demo_output docs/_build docs/generated

# the defaults study (issue 14): every model at its default arguments on each bundled real data set,
# 3 seeds; writes benchmarks/RESULTS_defaults.md (about 40 min on 2 cores)
defaults: $(STAMP)
	$(PY) benchmarks/defaults.py --output benchmarks/RESULTS_defaults.md

# mutation testing (issue 15): mutmut on one module (`make mutation MODULE=metrics`; the modules
# are [tool.scgenvae.mutation.*] in pyproject.toml) or on all in turn; updates docs/dev/mutation.md.
# Slow (minutes to tens of minutes a module on 2 cores), so it is not part of `make test`
mutation: $(STAMP)
	$(PY) benchmarks/mutation.py $(MODULE)
