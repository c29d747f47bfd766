# Two commands for users: `make run` (the whole system, locally, no Docker) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL := models/mnist_model.h5
STRONG_MODEL := models/mnist_model_strong.h5
# The team's offline MNIST copy when it sits beside the checkout; elsewhere the trainer downloads MNIST.
MNIST_DIR ?= $(firstword $(wildcard ../shared/data/mnist))
TRAIN_ARGS ?=
PYTEST_ARGS ?=
# make test runs the suite on several processes (pytest-xdist): most of its time is spent waiting on timers, faults
# and other processes, so more of them than cores pays off. Each owns its MariaDB database, Redis database and
# ports (tests/conftest.py); tests sharing a module's stack stay on one. TEST_WORKERS=1 runs them in one process.
TEST_WORKERS ?= 4
PARALLEL := $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)
BENCH_ARGS ?=

.PHONY: help run test check lint lock model model-strong migrate bench clean
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed" or 0)'
	$(PYTHON) -m venv $(VENV)

# What gets installed: the hash-pinned locks compiled from requirements/*.txt (`make lock`), never the loose files.
LOCKS := requirements/locks

# uv installs the locks (and compiles them: make lock); pip only bootstraps uv itself, hash-pinned.
# --compile-bytecode: uv, unlike pip, writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set (CI
# here) every process that imports TensorFlow then compiles its ~2,600 modules again: ~10 s of CPU each.
UV := $(VENV)/bin/uv
UV_INSTALL := $(UV) pip install --python $(PY) --require-hashes --compile-bytecode

$(UV): $(PY) $(LOCKS)/uv.txt
	$(PY) -m pip install --quiet --require-hashes -r $(LOCKS)/uv.txt
	@touch $@

# Stamps: reinstall only when a lock changed.
# Then the project itself, editable (no dependencies: the lock has them all; no build isolation: the venv's
# own setuptools builds it, nothing is fetched).
$(VENV)/.installed-local: $(UV) $(LOCKS)/local.txt pyproject.toml
	$(UV_INSTALL) -r $(LOCKS)/local.txt
	$(PY) -m pip install --no-deps --no-build-isolation --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(UV) $(LOCKS)/dev.txt pyproject.toml
	$(UV_INSTALL) -r $(LOCKS)/dev.txt
	$(PY) -m pip install --no-deps --no-build-isolation --quiet -e .
	@# kubectl (for kustomize) unless one with kustomize v5 is on PATH: see scripts/validate-k8s.sh
	bash scripts/validate-k8s.sh install-kubectl
	@# Debian's Chromium for tests/browser, unless there is one
	bash scripts/ensure-chromium.sh
	bash scripts/ensure-tool.sh faketime faketime "the clock-skew test (tests/fault/test_clock_skew.py)"
	bash scripts/ensure-tool.sh nft nftables "the network-fault tests (tests/fault/test_partitions.py)"
	bash scripts/ensure-tool.sh ip iproute2 "the network-fault tests (tests/fault/test_partitions.py)"
	@touch $@ $(VENV)/.installed-local

$(MODEL): | $(VENV)/.installed-local
	$(PY) -m worker.create_and_train_model $(if $(MNIST_DIR),--data $(MNIST_DIR)) $(TRAIN_ARGS)

model: $(VENV)/.installed-local  ## train the seed CNN into models/mnist_model.h5 (if missing)
	@$(MAKE) --no-print-directory $(MODEL)

model-strong: $(VENV)/.installed-local  ## train the strong CNN (about 8 min on 2 cores); make run serves it from then on
	$(PY) -m worker.create_and_train_model $(if $(MNIST_DIR),--data $(MNIST_DIR)) --architecture strong \
		--output $(STRONG_MODEL) $(TRAIN_ARGS)

run: $(VENV)/.installed-local model  ## start Redis (if needed), web :8000, a worker and Flower :5555
	$(PY) -m scripts.run_local

# The suite starts hundreds of Python processes, and pytest rewrites every test module's asserts in each of its own:
# where the environment sets PYTHONDONTWRITEBYTECODE (this machine and its CI do), every one of them compiled all of
# that again (a third of each pytest process's start). The tests write their bytecode as Python does by default
# (__pycache__, ignored by git).
test check: export PYTHONDONTWRITEBYTECODE :=

test: $(VENV)/.installed-dev model  ## the whole test suite (needs MariaDB and Redis, see README)
	@# After a passing `make check` on this very tree (CI runs both), its fast tier is not run again.
	@marker="$$($(PY) -m scripts.fast_tier marker)"; \
	if [ -n "$$marker" ] && [ -z "$(PYTEST_ARGS)" ]; then \
		echo "make check passed on this tree: running the tests that need services"; \
		$(PY) -m pytest $(PARALLEL) -m "$$marker"; \
	else \
		$(PY) -m pytest $(or $(PYTEST_ARGS),$(PARALLEL)); \
	fi

# One lock per installable set: make run/test (local, dev), the images (web = web + flower, worker, training, gpu).
UV_COMPILE := $(UV) pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock"

lock: $(UV)  ## re-compile requirements/locks/*.txt (hashes) after editing requirements/*.txt
	$(UV_COMPILE) requirements/uv.txt -o $(LOCKS)/uv.txt
	$(UV_COMPILE) requirements/dev.txt -o $(LOCKS)/dev.txt
	$(UV_COMPILE) requirements/local.txt -o $(LOCKS)/local.txt
	$(UV_COMPILE) requirements/web.txt requirements/flower.txt -o $(LOCKS)/web.txt
	$(UV_COMPILE) requirements/worker.txt -o $(LOCKS)/worker.txt
	$(UV_COMPILE) requirements/training.txt -o $(LOCKS)/training.txt
	$(UV_COMPILE) requirements/gpu.txt -o $(LOCKS)/gpu.txt

lint: $(VENV)/.installed-dev  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

check: lint  ## the fast tier: lint, then the tests that need no MariaDB, Redis, MNIST copy or trained model
	$(PY) -m pytest -m "not services" $(PYTEST_ARGS)
	@$(if $(PYTEST_ARGS),,$(PY) -m scripts.fast_tier record)

bench: $(VENV)/.installed-local model  ## load benchmark against BENCH_REDIS_URL / BENCH_DATABASE_URL, vs the seed design
	$(PY) -m bench $(BENCH_ARGS)

migrate: $(VENV)/.installed-local  ## apply database migrations to DATABASE_URL
	$(PY) -m shared.migrate

clean:  ## remove the virtualenv and local run data (not the model)
	rm -rf $(VENV) var .pytest_cache .ruff_cache
