#!/usr/bin/env bash
# Installs the pinned build/test tools that do not come from PyPI into a cache outside the
# repository, ${MODELREGISTRY_TOOLS:-$HOME/.cache/modelregistry}/bin, and reuses what is
# already there. Idempotent; prints nothing when everything is present.
#
#   minio    server for the S3 object store tests, built from source with `go install`
#   buf      protobuf linter (`make lint`)
#   grpcurl  command-line gRPC client for poking at a running server
#   protoc-gen-go, protoc-gen-go-grpc  Go code generation (generated/go, `make generate`)
#   grpc_health_probe  the Kubernetes-style health probe (tests/test_health_probe.py)
#   toxiproxy-server  TCP fault injection between the server and PostgreSQL/MinIO
#                     (tests/reliability/)
#   PostgreSQL comes from Debian's packages (tests start throwaway servers from its binaries).
#
# A pin is recorded next to each binary in bin/.<name>.pin ("<package>@<version>"); changing
# a pin below rebuilds that tool on the next run.
set -euo pipefail

# MinIO's RELEASE.2025-09-07T16-13-09Z. The module proxy refuses the RELEASE tag string
# itself, so we pin the pseudo-version of the same commit.
MINIO_PKG=github.com/minio/minio
MINIO_VERSION=v0.0.0-20250907161309-07c3a429bfed
BUF_PKG=github.com/bufbuild/buf/cmd/buf
BUF_VERSION=v1.75.0
GRPCURL_PKG=github.com/fullstorydev/grpcurl/cmd/grpcurl
GRPCURL_VERSION=v1.9.4
PROTOC_GEN_GO_PKG=google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_PKG=google.golang.org/grpc/cmd/protoc-gen-go-grpc
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
HEALTH_PROBE_PKG=github.com/grpc-ecosystem/grpc-health-probe
HEALTH_PROBE_VERSION=v0.4.62
# Toxiproxy's server command is the package cmd/server (go install names it `server`).
TOXIPROXY_PKG=github.com/Shopify/toxiproxy/v2/cmd/server
TOXIPROXY_VERSION=v2.12.0

TOOLS_DIR="${MODELREGISTRY_TOOLS:-$HOME/.cache/modelregistry}"
BIN="$TOOLS_DIR/bin"
mkdir -p "$BIN"

say() { echo "tools: $*" >&2; }
die() { say "error: $*"; exit 1; }

# One tools.sh at a time per cache directory (several checkouts may share it).
exec 9>"$TOOLS_DIR/.lock"
flock 9

# Prints "<main package path>@<module version>" recorded in a Go binary's build info.
go_build_pin() {
  command -v go >/dev/null 2>&1 || return 0
  go version -m "$1" 2>/dev/null | awk '$1 == "path" { p = $2 } $1 == "mod" { v = $3 } END { if (p && v) print p "@" v }'
}

# Waits for a `go install` of the same package started outside this script (e.g. by hand
# in the background) to finish, instead of building the same thing twice at once.
wait_for_foreign_build() {
  local pkg=$1 waited=0
  command -v pgrep >/dev/null 2>&1 || return 0
  while pgrep -f "go install ${pkg}@" >/dev/null 2>&1; do
    if [ "$waited" -eq 0 ]; then say "waiting for a running 'go install ${pkg}@...' to finish"; fi
    sleep 5
    waited=$((waited + 5))
    if [ "$waited" -ge 3600 ]; then die "gave up waiting for 'go install ${pkg}@...'"; fi
  done
}

# go_tool NAME PACKAGE VERSION [BUILT]: BUILT is the name `go install` gives the binary
# when it differs from NAME (the package's last path element).
go_tool() {
  local name=$1 pkg=$2 version=$3 built=${4:-$1}
  local want="${pkg}@${version}" exe="$BIN/$name" pin="$BIN/.$name.pin"
  if [ -x "$exe" ] && [ -f "$pin" ] && [ "$(cat "$pin")" = "$want" ]; then
    return 0
  fi
  wait_for_foreign_build "$pkg"
  # A binary built without this script (no pin file yet): trust its Go build info.
  if [ -x "$exe" ] && [ "$(go_build_pin "$exe")" = "$want" ]; then
    echo "$want" >"$pin"
    return 0
  fi
  command -v go >/dev/null 2>&1 ||
    die "Go is needed to build $name ($want) but 'go' is not on PATH"
  say "building $name: go install $want (this takes a while the first time)"
  rm -f "$pin"
  if [ "$built" = "$name" ]; then
    GOBIN="$BIN" go install "$want"
  else
    local tmp
    tmp="$(mktemp -d)"
    GOBIN="$tmp" go install "$want"
    mv -f "$tmp/$built" "$exe"
    rm -rf "$tmp"
  fi
  [ -x "$exe" ] || die "go install $want did not produce $exe"
  echo "$want" >"$pin"
}

# Builds one at a time: the machines have 2 cores.
go_tool minio "$MINIO_PKG" "$MINIO_VERSION"
go_tool buf "$BUF_PKG" "$BUF_VERSION"
go_tool grpcurl "$GRPCURL_PKG" "$GRPCURL_VERSION"
go_tool protoc-gen-go "$PROTOC_GEN_GO_PKG" "$PROTOC_GEN_GO_VERSION"
go_tool protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_PKG" "$PROTOC_GEN_GO_GRPC_VERSION"
go_tool grpc-health-probe "$HEALTH_PROBE_PKG" "$HEALTH_PROBE_VERSION"
go_tool toxiproxy-server "$TOXIPROXY_PKG" "$TOXIPROXY_VERSION" server

# PostgreSQL from Debian's packages. Only the binaries are needed: tests run their own
# throwaway servers, so no cluster is created and nothing is left running.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "PostgreSQL is missing; install Debian's postgresql package as root"
    SUDO=(sudo)
  fi
  say "installing PostgreSQL from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  # Stop the package from creating (and starting) a system-wide 'main' cluster.
  "${SUDO[@]}" apt-get install -y -qq postgresql-common >/dev/null
  conf=/etc/postgresql-common/createcluster.conf
  if [ -f "$conf" ]; then
    "${SUDO[@]}" sed -i -E 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf"
  fi
  "${SUDO[@]}" apt-get install -y -qq postgresql >/dev/null
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || die "postgresql installed but no initdb found"
fi
