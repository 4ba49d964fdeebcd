# modelregistry developer tasks. `make test` is what CI runs (.ci/run).
#
#   make install          .venv with python3.11 and `pip install -e '.[dev]'`
#   make tools            pinned minio/buf/grpcurl + PostgreSQL (.ci/tools.sh)
#   make generate         regenerate generated/python (with the descriptor set reflection
#                         serves), generated/go and docs/API.md from protos/
#   make check-generated  fail if generated/python or generated/go is stale
#   make lint             buf lint, ruff check, mypy
#   make test             install + tools + lint + check-generated + breaking + pytest
#   make breaking         buf breaking against the last released contract (protos/released/)
#   make interop          Go and Kotlin clients against a real server (tests/interop/)
#   make docs             regenerate docs/API.md from the proto comments (check-docs: stale?)
#   make run              migrate, print a dev key, serve on 127.0.0.1:50051
#   make bench            this service vs MLflow on loopback (bench/; BENCH_ARGS=--quick)
#   make bench-upload     1 GiB upload via the server vs straight to MinIO; server RSS
#   make bench-manifest   manifest build/etag-check timings (BENCH_MANIFEST_ARGS)
#   make bench-convert    conversion of a ~100 MB model: service vs direct (BENCH_CONVERT_ARGS)
#   make load             60 s of 50 upload streams + 300 unary req/s on loopback, then an
#                         audit of every acknowledged artifact (LOAD_ARGS; README: Reliability)
#   make clean            caches and build output (distclean: also .venv and ./var)
#   make bench-telemetry  TelemetryService ingestion and window queries on PostgreSQL
#   make bench-unary      server CPU per GetModel/GetVersion/ListModels vs a baseline revision
#   make bench-quota      the monthly version quota count before/after migration 0014

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

.PHONY: venv install tools generate check-generated lint breaking release-contract docs check-docs interop-build interop test run bench bench-tools clean distclean

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

# The FileDescriptorSet, with source info (the proto comments) and imports, that server
# reflection serves so `grpcurl describe` prints the comments (server/reflection.py).
DESCRIPTOR_SET := descriptor_set.binpb

# $(call protoc_into,DIR): generate Python, gRPC and mypy stubs for all protos into DIR,
# and modelregistry/v1/$(DESCRIPTOR_SET).
define protoc_into
set -euo pipefail; \
out="$(1)"; \
mkdir -p "$$out/modelregistry/v1"; \
find "$$out/modelregistry" \( -name '*_pb2*' -o -name '$(DESCRIPTOR_SET)' \) -type f -delete; \
if [ -n "$(PROTOS)" ]; then \
  wkt="$$($(VENV_PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"; \
  $(VENV_PY) -m grpc_tools.protoc -I $(PROTO_DIR) -I "$$wkt" \
    --python_out="$$out" --grpc_python_out="$$out" \
    --mypy_out=quiet:"$$out" --mypy_grpc_out=quiet:"$$out" \
    --include_source_info --include_imports \
    --descriptor_set_out="$$out/modelregistry/v1/$(DESCRIPTOR_SET)" $(PROTOS); \
fi; \
touch "$$out/modelregistry/__init__.py" "$$out/modelregistry/v1/__init__.py" "$$out/modelregistry/py.typed"
endef

# Go: the module $(GO_MODULE) in $(GO_GEN_DIR) (go.mod, go.sum kept by hand), its packages
# generated by protoc-gen-go and protoc-gen-go-grpc (pinned in .ci/tools.sh).
GO_GEN_DIR := generated/go
GO_MODULE := modelregistry/generated/go

# $(call protoc_go_into,DIR): Go messages and gRPC stubs for all protos into DIR.
define protoc_go_into
set -euo pipefail; \
out="$(1)"; \
mkdir -p "$$out/modelregistry/v1"; \
find "$$out/modelregistry" -name '*.pb.go' -type f -delete; \
wkt="$$($(VENV_PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"; \
$(VENV_PY) -m grpc_tools.protoc -I $(PROTO_DIR) -I "$$wkt" \
  --plugin=protoc-gen-go=$(TOOLS_BIN)/protoc-gen-go \
  --plugin=protoc-gen-go-grpc=$(TOOLS_BIN)/protoc-gen-go-grpc \
  --go_out="$$out" --go_opt=module=$(GO_MODULE) \
  --go-grpc_out="$$out" --go-grpc_opt=module=$(GO_MODULE) $(PROTOS)
endef

generate: install tools
	@$(call protoc_into,$(GEN_DIR))
	@$(call protoc_go_into,$(GO_GEN_DIR))
	@$(VENV_PY) docs/gen_api_md.py docs/API.md
	@echo "generated $(words $(PROTOS)) protos into $(GEN_DIR), $(GO_GEN_DIR) and docs/API.md"

check-generated: install tools
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	$(call protoc_into,$$tmp/python); \
	$(call protoc_go_into,$$tmp/go); \
	if ! diff -r -x __pycache__ "$$tmp/python/modelregistry" "$(GEN_DIR)/modelregistry" >"$$tmp/diff" 2>&1 \
	  || ! diff -r "$$tmp/go/modelregistry" "$(GO_GEN_DIR)/modelregistry" >>"$$tmp/diff" 2>&1; then \
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
	ruff format --check .
	mypy $(MYPY_ARGS)

test: install tools lint check-generated breaking check-docs interop-build
	pytest

# --- interop --------------------------------------------------------------------------

# Go (generated/go) and Kotlin (Maven, stubs generated at build time) clients run their flow
# against servers started by pytest; `make test` runs them as part of the whole suite.
# interop-build fetches and compiles ahead of the tests (a cold ~/.m2 and Go module cache
# take minutes), so the tests' own timeouts only cover warm builds and the flows.
interop-build: tools
	cd tests/interop/go && go vet ./... && go test -c -o /dev/null .
	mvn -B -q -f tests/interop/kotlin/pom.xml compile
	cd tests/interop/kotlin && java -cp "target/classes:$$(cat target/classpath.txt)" \
	  dev.modelregistry.interop.MainKt --build-only

interop: install tools interop-build
	pytest tests/interop

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

# The last released contract: the newest buf image in protos/released/ (committed, so every
# clone has it, tags or not; README: "Releasing the contract"). Until one exists the check
# is skipped, loudly.
CONTRACT_IMAGE ?= $(shell ls protos/released/modelregistry-v*.binpb 2>/dev/null | sort -V | tail -n 1)

breaking: tools
	@if [ -z "$(CONTRACT_IMAGE)" ]; then \
	  echo "make breaking: SKIPPED: no released contract in protos/released/ to compare with yet (README: Releasing the contract)"; \
	else \
	  echo "buf breaking --against $(CONTRACT_IMAGE)"; \
	  buf breaking --against "$(CONTRACT_IMAGE)"; \
	fi

# make release-contract VERSION=X.Y.Z: freeze the contract as it is now (after make test).
release-contract: tools
	@case "$(VERSION)" in [0-9]*.[0-9]*.[0-9]*) ;; *) echo "usage: make release-contract VERSION=X.Y.Z" >&2; exit 2;; esac
	@mkdir -p protos/released
	buf build -o protos/released/modelregistry-v$(VERSION).binpb
	@echo "released protos/released/modelregistry-v$(VERSION).binpb: commit it (and tag contract/v$(VERSION))"

# --- local server --------------------------------------------------------------------

run: install
	mkdir -p var
	$(VENV_BIN)/modelregistry migrate
	$(VENV_BIN)/modelregistry dev-key
	$(VENV_BIN)/modelregistry serve

# --- benchmarks (bench/run.py; issue 10) ---------------------------------------------

# Starts PostgreSQL, MinIO, this service and MLflow on 127.0.0.1, seeds both, measures,
# stops everything. MLflow lives in its own .venv-bench (bench/tools.sh). The outer timeout
# only backs up run.py's own --time-limit.
BENCH_ARGS ?=
bench-tools:
	@bench/tools.sh

bench: install tools bench-tools
	timeout --kill-after=60 7200 $(VENV_PY) bench/run.py $(BENCH_ARGS)

# --- manifest benchmark (issue 4) ---------------------------------------------------

# 10,000 models: full manifest build and not-modified check, p50/p99, server-side.
BENCH_MANIFEST_ARGS ?=
.PHONY: bench-manifest
bench-manifest: install tools
	$(VENV_PY) bench/bench_manifest.py $(BENCH_MANIFEST_ARGS)
	$(VENV_PY) bench/bench_manifest.py --postgres $(BENCH_MANIFEST_ARGS)

# --- conversion benchmark (issue 5) -------------------------------------------------

# A ~100 MB transformer stack, per target: ConvertArtifact through a real server vs the
# same onnx/onnxruntime calls in one process (ratio), first event delay, longest gap.
BENCH_CONVERT_ARGS ?=
.PHONY: bench-convert
bench-convert: install
	$(VENV_PY) bench/bench_convert.py $(BENCH_CONVERT_ARGS)

# --- TelemetryService benchmark (bench/telemetry.py; issue 6) ------------------------

# Throwaway PostgreSQL, the server as a subprocess: ingestion rate through
# ReportInferenceSessions, GetInferenceTelemetry p50/p99 over 30 days of sessions next to
# an exact percentile_cont. BENCH_TELEMETRY_ARGS=--quick for a smoke run.
BENCH_TELEMETRY_ARGS ?=
.PHONY: bench-telemetry
bench-telemetry: install tools
	timeout --kill-after=60 5400 $(VENV_PY) bench/telemetry.py $(BENCH_TELEMETRY_ARGS)

# --- unary RPC CPU benchmark (bench/bench_unary.py) ----------------------------------

# Server CPU per GetModel/GetVersion/ListModels call and requests/s, SQLite and a throwaway
# PostgreSQL, this working tree against BENCH_UNARY_ARGS="--baseline REV" (default HEAD).
BENCH_UNARY_ARGS ?=
.PHONY: bench-unary
bench-unary: install tools
	$(VENV_PY) bench/bench_unary.py $(BENCH_UNARY_ARGS)

# --- quota count benchmark -----------------------------------------------------------

# The monthly version quota count before and after migration 0014, one throwaway
# PostgreSQL, the same run (BENCH_QUOTA_ARGS="--orgs 100 --versions 1000").
BENCH_QUOTA_ARGS ?=
.PHONY: bench-quota
bench-quota: install tools
	$(VENV_PY) bench/bench_quota.py $(BENCH_QUOTA_ARGS)

# --- upload benchmark (issue 3) -----------------------------------------------------

# A 1 GiB file through UploadArtifacts vs a direct minio fput_object to the same MinIO
# (ratio), and the server's peak RSS growth for 1 GiB and 4 GiB files; throwaway
# PostgreSQL + MinIO (make tools), the server as a subprocess. Needs ~12 GiB in /tmp.
BENCH_UPLOAD_ARGS ?=
.PHONY: bench-upload
bench-upload: install tools
	$(VENV_PY) bench/bench_upload.py $(BENCH_UPLOAD_ARGS)

# --- load run (issue 9) ---------------------------------------------------------------

# PostgreSQL + MinIO + `modelregistry serve` on 127.0.0.1; stops by itself (the outer
# timeout only backs up the script's own bounds). LOAD_ARGS="--backend embedded" for SQLite.
LOAD_ARGS ?=
.PHONY: load
load: install tools
	timeout --kill-after=30 900 $(VENV_PY) tests/reliability/load.py $(LOAD_ARGS)

# --- cleanup -------------------------------------------------------------------------

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .mypy_cache .ruff_cache .pytest_cache build dist .tmp *.egg-info

distclean: clean
	rm -rf $(VENV) .venv-bench var
