# modelregistry developer tasks. `make test` is what CI runs (.ci/run).
#
#   make install          .venv with python3.11 and `pip install -e '.[dev]'`
#   make tools            pinned minio/buf/grpcurl + PostgreSQL (.ci/tools.sh)
#   make generate         regenerate generated/python from protos/
#   make check-generated  fail if generated/python is stale
#   make lint             buf lint, ruff check, mypy
#   make test             install + tools + lint + check-generated + breaking + pytest
#   make breaking         buf breaking against the last released contract (contract/v* tag)
#   make docs             regenerate docs/API.md from the proto comments (check-docs: stale?)
#   make run              migrate, print a dev key, serve on 127.0.0.1:50051
#   make bench-manifest   manifest build/etag-check timings (BENCH_MANIFEST_ARGS)
#   make clean            caches and build output (distclean: also .venv and ./var)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

PYTHON ?= python3.11
VENV := .venv
VENV_BIN := $(CURDIR)/$(VENV)/bin
VENV_PY := $(VENV_BIN)/python
# Hash of what the editable install depends on: pyproject.toml and which top-level packages
# exist (setuptools' editable finder maps the packages found at install time).
INSTALL_STAMP := $(VENV)/.modelregistry-install
INSTALL_INPUTS = pyproject.toml $(wildcard server/__init__.py domain/__init__.py \
	storage/__init__.py conversion/__init__.py client/__init__.py \
	generated/python/modelregistry/__init__.py)

TOOLS_DIR := $(or $(MODELREGISTRY_TOOLS),$(HOME)/.cache/modelregistry)
TOOLS_BIN := $(TOOLS_DIR)/bin

# .venv/bin (protoc-gen-mypy, ruff, mypy, pytest, modelregistry) and the pinned tools first.
export PATH := $(VENV_BIN):$(TOOLS_BIN):$(PATH)
export MODELREGISTRY_TOOLS := $(TOOLS_DIR)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PROTO_DIR := protos
PROTOS = $(sort $(wildcard $(PROTO_DIR)/modelregistry/v1/*.proto))
GEN_DIR := generated/python

.PHONY: venv install tools generate check-generated lint breaking docs check-docs test run clean distclean

# --- Python environment --------------------------------------------------------------

# On a bare Debian 12, python3.11 without its venv module: install Debian's packages (root).
$(VENV_PY):
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null; then \
	  echo "installing Debian's python3.11 and python3.11-venv"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv >/dev/null; \
	fi
	$(PYTHON) -m venv $(VENV)

venv: install

install: $(VENV_PY)
	@want="$$(sha256sum $(INSTALL_INPUTS) | sha256sum | cut -c1-64)"; \
	if [ "$$(cat $(INSTALL_STAMP) 2>/dev/null)" != "$$want" ]; then \
	  echo "pip install -e '.[dev]'"; \
	  $(VENV_PY) -m pip install --quiet -e '.[dev]'; \
	  echo "$$want" > $(INSTALL_STAMP); \
	fi

# --- pinned tools outside the repo ---------------------------------------------------

tools:
	@.ci/tools.sh

# --- generated code ------------------------------------------------------------------

# $(call protoc_into,DIR): generate Python, gRPC and mypy stubs for all protos into DIR.
define protoc_into
set -euo pipefail; \
out="$(1)"; \
mkdir -p "$$out/modelregistry/v1"; \
find "$$out/modelregistry" -name '*_pb2*' -type f -delete; \
if [ -n "$(PROTOS)" ]; then \
  wkt="$$($(VENV_PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"; \
  $(VENV_PY) -m grpc_tools.protoc -I $(PROTO_DIR) -I "$$wkt" \
    --python_out="$$out" --grpc_python_out="$$out" \
    --mypy_out=quiet:"$$out" --mypy_grpc_out=quiet:"$$out" $(PROTOS); \
fi; \
touch "$$out/modelregistry/__init__.py" "$$out/modelregistry/v1/__init__.py" "$$out/modelregistry/py.typed"
endef

generate: install
	@$(call protoc_into,$(GEN_DIR))
	@echo "generated $(words $(PROTOS)) protos into $(GEN_DIR)"

check-generated: install
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	$(call protoc_into,$$tmp); \
	if ! diff -r -x __pycache__ "$$tmp/modelregistry" "$(GEN_DIR)/modelregistry" >"$$tmp/diff" 2>&1; then \
	  head -n 40 "$$tmp/diff"; \
	  echo "generated/ is stale: run make generate" >&2; exit 1; \
	fi

# --- checks --------------------------------------------------------------------------

# mypy checks the packages listed in pyproject's [tool.mypy]; one that has no Python file yet
# (an empty folder, or absent in a fresh clone) is skipped instead of failing the run.
MYPY_ARGS = $(shell $(VENV_PY) -c 'import glob, tomllib; \
	pk = tomllib.load(open("pyproject.toml", "rb"))["tool"]["mypy"]["packages"]; \
	print(" ".join("-p " + p for p in pk if glob.glob(p + "/**/*.py", recursive=True)))')

lint: install tools
	buf lint
	ruff check .
	mypy $(MYPY_ARGS)

test: install tools lint check-generated breaking check-docs
	pytest

# --- API reference -------------------------------------------------------------------

docs: install
	$(VENV_PY) docs/gen_api_md.py docs/API.md

check-docs: install
	@tmp="$$(mktemp)"; trap 'rm -f "$$tmp"' EXIT; \
	$(VENV_PY) docs/gen_api_md.py "$$tmp"; \
	if ! diff -u docs/API.md "$$tmp" >"$$tmp.diff"; then \
	  head -n 40 "$$tmp.diff"; rm -f "$$tmp.diff"; \
	  echo "docs/API.md is stale: run make docs" >&2; exit 1; \
	fi; rm -f "$$tmp.diff"

# --- contract guard ------------------------------------------------------------------

# The last released contract: the newest contract/vX.Y.Z tag (README: "Releasing the
# contract"). Until one exists, or in a clone without tags, the check is skipped, loudly.
CONTRACT_TAG ?= $(shell git tag --list 'contract/v*' --sort=-version:refname 2>/dev/null | head -n 1)

breaking: tools
	@if [ -z "$(CONTRACT_TAG)" ]; then \
	  echo "make breaking: SKIPPED: no contract/v* tag, so no released contract to compare with yet (README: Releasing the contract)"; \
	elif ! git rev-parse -q --verify "refs/tags/$(CONTRACT_TAG)^{commit}" >/dev/null; then \
	  echo "make breaking: SKIPPED: tag $(CONTRACT_TAG) does not exist in this clone"; \
	else \
	  echo "buf breaking --against '.git#tag=$(CONTRACT_TAG)'"; \
	  buf breaking --against ".git#tag=$(CONTRACT_TAG)"; \
	fi

# --- local server --------------------------------------------------------------------

run: install
	mkdir -p var
	$(VENV_BIN)/modelregistry migrate
	$(VENV_BIN)/modelregistry dev-key
	$(VENV_BIN)/modelregistry serve

# --- manifest benchmark (issue 4) ---------------------------------------------------

# 10,000 models: full manifest build and not-modified check, p50/p99, server-side.
BENCH_MANIFEST_ARGS ?=
.PHONY: bench-manifest
bench-manifest: install
	$(VENV_PY) bench/bench_manifest.py $(BENCH_MANIFEST_ARGS)

# --- cleanup -------------------------------------------------------------------------

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .mypy_cache .ruff_cache .pytest_cache build dist .tmp *.egg-info

distclean: clean
	rm -rf $(VENV) var
