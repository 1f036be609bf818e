# Build, check and test hotpatch on every supported Python.
#
#   make demo     create the 3.12 virtual environment, install the package and
#                 the demo extra (not the development tools), run the demo
#   make test     create all virtual environments, lint, type-check, and run
#                 the test suite on Python 3.11, 3.12 and 3.13, and the fleet
#                 tests (Ansible over network-namespace hosts) once, on 3.12
#
# Interpreters come from pyenv (the newest installed patch release of each
# minor version), falling back to pythonX.Y on PATH. Override any of them:
#   make test PY313=/usr/local/bin/python3.13
# Extra pytest arguments go through PYTEST_ARGS:
#   make test-312 PYTEST_ARGS='-k registry -x'

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VERSIONS := 311 312 313
VENV_ROOT := .venv
PYTEST_ARGS ?=

# --- interpreters -------------------------------------------------------------

PYENV_ROOT_DIR := $(shell pyenv root 2>/dev/null)

# $(call find_python,3.11): pyenv's newest 3.11.x if installed, else python3.11.
find_python = $(or $(if $(PYENV_ROOT_DIR),$(wildcard $(PYENV_ROOT_DIR)/versions/$(shell \
	pyenv latest $(1) 2>/dev/null)/bin/python)),python$(1))

# Evaluated once, and only when not given on the command line or environment.
ifeq ($(origin PY311),undefined)
PY311 := $(call find_python,3.11)
endif
ifeq ($(origin PY312),undefined)
PY312 := $(call find_python,3.12)
endif
ifeq ($(origin PY313),undefined)
PY313 := $(call find_python,3.13)
endif

# --- virtual environments -----------------------------------------------------

# .venv/pyNNN/.installed marks a venv holding an up-to-date editable install with
# the `dev` extra (what `make test` needs); .venv/py312/.installed-demo one with
# only the `demo` extra (what `make demo` needs: no linters, type checker or test
# servers to download). Both are redone whenever pyproject.toml changes.
stamp = $(VENV_ROOT)/py$(1)/.installed
STAMPS := $(foreach v,$(VERSIONS),$(call stamp,$(v)))
DEMO_STAMP := $(VENV_ROOT)/py312/.installed-demo

# The tools for lint, types, demo and bench run from the 3.12 venv, which also
# gets the `demo` extra (matplotlib, for the headline demo's latency plot).
TOOLS_BIN := $(VENV_ROOT)/py312/bin
extras = dev$(if $(filter 312,$(1)),$(comma)demo)
comma := ,

# Only the source trees that exist yet (ruff fails on a missing path).
LINT_PATHS = $(wildcard hotpatch plugins tests benchmarks demos ansible_collections)
BENCHMARKS = $(sort $(wildcard benchmarks/*.py))

header = @printf '\n==> %s\n' "$(1)"

# $(call install,NNN,EXTRAS): .venv/pyNNN (created if missing, or if its
# interpreter has gone away, say after a pyenv upgrade), then an editable install
# of the package with EXTRAS. The requirements (pyproject.toml's) go in first: that
# writes nothing in the tree, so the venvs are made side by side (make test: make -j3
# venv). The editable install itself goes one venv at a time (flock): setuptools
# writes pyhotpatch.egg-info in the tree as it builds.
define install
	$(call header,venv $(VENV_ROOT)/py$(1) ($(PY$(1))) with [$(2)])
	@"$(PY$(1))" -c 'import sys; print("    Python " + sys.version.split()[0])'
	@"$(VENV_ROOT)/py$(1)/bin/python" -c '' 2>/dev/null || "$(PY$(1))" -m venv --clear "$(VENV_ROOT)/py$(1)"
	@# Before 0.1.0 the distribution was called hotpatch: a venv (or an egg-info left
	@# in the tree) holding both would register the command and the pytest plugin twice.
	"$(VENV_ROOT)/py$(1)/bin/python" -m pip uninstall --quiet --yes hotpatch 2>/dev/null || true
	rm -rf hotpatch.egg-info
	"$(VENV_ROOT)/py$(1)/bin/python" -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + [r for e in sys.argv[1].split(",") for r in p["optional-dependencies"][e]]))' '$(2)' > "$(VENV_ROOT)/py$(1)/requirements.txt"
	"$(VENV_ROOT)/py$(1)/bin/python" -m pip install --quiet -r "$(VENV_ROOT)/py$(1)/requirements.txt"
	flock "$(VENV_ROOT)/.editable.lock" "$(VENV_ROOT)/py$(1)/bin/python" -m pip install --quiet --editable '.[$(2)]'
	@touch "$@"
endef

$(VENV_ROOT)/py%/.installed: pyproject.toml
	$(call install,$*,$(call extras,$*))

$(DEMO_STAMP): pyproject.toml
	$(call install,312,demo)

# --- targets --------------------------------------------------------------------

.PHONY: help venv lint types imports check test test-311 test-312 test-313 test-fleet demo bench clean

help:
	@echo 'make demo       venv (3.12) with the package and matplotlib, run demos/shop_under_load.py'
	@echo 'make test       venv (3.11-3.13), check, pytest on every Python in TEST_PARTS=2 parts and the fleet (TEST_JOBS=2 at a time)'
	@echo 'make venv       create .venv/py311 .venv/py312 .venv/py313'
	@echo 'make check      lint + types'
	@echo 'make lint       ruff check and ruff format --check'
	@echo 'make types      mypy --strict'
	@echo 'make imports    import-linter: the layering contracts in pyproject.toml'
	@echo 'make test-3NN   pytest on one Python, fleet tests aside (PYTEST_ARGS=... passes through)'
	@echo 'make test-3NN-partK  part K of TEST_PARTS of that suite (pytest --part K/N)'
	@echo 'make test-fleet the fleet tests: Ansible rollouts across namespace hosts (root)'
	@echo 'make bench      run every benchmarks/*.py'
	@echo 'make clean      remove venvs, caches and build output'

venv: $(STAMPS)

# Both ruff passes always run, so one go reports every lint and format problem.
lint: $(call stamp,312)
	$(call header,lint (ruff check + ruff format --check))
	@status=0; \
	$(TOOLS_BIN)/ruff check $(LINT_PATHS) || status=1; \
	$(TOOLS_BIN)/ruff format --check $(LINT_PATHS) || status=1; \
	exit $$status

types: $(call stamp,312)
	$(call header,types (mypy --strict))
	$(TOOLS_BIN)/mypy

imports: $(call stamp,312)
	$(call header,imports (import-linter contracts))
	$(TOOLS_BIN)/lint-imports --no-cache

check: lint types imports

# A static pattern rule: implicit (plain pattern) rules never apply to .PHONY targets.
# The fleet tests (a few minutes of Ansible over SSH) run once, in test-fleet.
$(addprefix test-,$(VERSIONS)): test-%: $(call stamp,%)
	$(call header,tests on Python $(patsubst 3%,3.%,$*))
	$(VENV_ROOT)/py$*/bin/python -m pytest -m 'not fleet' $(PYTEST_ARGS)

test-fleet: $(call stamp,312)
	$(call header,fleet tests on Python 3.12 (Ansible, network-namespace hosts))
	$(TOOLS_BIN)/python -m pytest -m fleet tests/test_fleet.py tests/test_fleet_modules.py $(PYTEST_ARGS)

# One Python's suite in TEST_PARTS parts (pytest --part K/N, tests/conftest.py: the
# test files dealt out in turn), each a job of its own: test-311-part1, ...
TEST_PARTS ?= 2
PART_NUMBERS = $(shell seq 1 $(TEST_PARTS))

define part_rule
test-$(1)-part$(2): $(call stamp,$(1))
	$$(call header,tests on Python $(patsubst 3%,3.%,$(1)): part $(2) of $(TEST_PARTS))
	$(VENV_ROOT)/py$(1)/bin/python -m pytest -m 'not fleet' --part $(2)/$(TEST_PARTS) $$(PYTEST_ARGS)
endef
$(foreach v,$(VERSIONS),$(foreach k,$(PART_NUMBERS),$(eval $(call part_rule,$(v),$(k)))))

# The parts run TEST_JOBS at a time: each keeps about one core busy starting and
# talking to real processes, so two fill a 2-core machine and halve the wall time.
# In parts, neither core idles at the end: three whole suites on two cores left one
# core alone with the last suite for half of the run. The fleet tests, the shortest,
# go last. A part's output is shown whole when it ends (make -O), never interleaved.
TEST_JOBS ?= 2
SUITES := $(foreach v,$(VERSIONS),$(foreach k,$(PART_NUMBERS),test-$(v)-part$(k))) test-fleet

# The venvs are made side by side (see install), then checked, then tested.
test:
	@$(MAKE) --no-print-directory -j$(words $(VERSIONS)) -O venv
	@$(MAKE) --no-print-directory check
	$(call header,suites: $(SUITES) ($(TEST_JOBS) at a time; each shown when it ends))
	@$(MAKE) --no-print-directory -j$(TEST_JOBS) -O $(SUITES)

demo: $(DEMO_STAMP)
	$(call header,demo)
	$(TOOLS_BIN)/python demos/shop_under_load.py

bench: $(call stamp,312)
	$(call header,benchmarks)
	@$(if $(BENCHMARKS),,echo 'no benchmarks/*.py yet')
	@for b in $(BENCHMARKS); do echo "--- $$b"; $(TOOLS_BIN)/python "$$b"; done

clean:
	$(call header,clean)
	rm -rf $(VENV_ROOT) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
