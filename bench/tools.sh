#!/usr/bin/env bash
# Installs what `make bench` needs beyond `make tools`, idempotently:
#   .venv-bench   a separate venv with MLflow and the charting/profiling tools pinned in
#                 bench/requirements.txt (never the project's .venv; not a project dependency)
#   ghz           gRPC load generator, `go install` at a pinned version into the tools cache
#   wrk, curl     HTTP load generator and client, from Debian's packages
set -euo pipefail

GHZ_PKG=github.com/bojand/ghz/cmd/ghz
GHZ_VERSION=v0.120.0

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=.venv-bench
BIN="${MODELREGISTRY_TOOLS:-$HOME/.cache/modelregistry}/bin"
mkdir -p "$BIN"
say() { echo "bench-tools: $*" >&2; }

# The bench venv, reinstalled when bench/requirements.txt changes.
want="$(sha256sum bench/requirements.txt | cut -c1-64)"
if [ "$(cat "$VENV/.bench-install" 2>/dev/null)" != "$want" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  say "pip install -r bench/requirements.txt into $VENV (MLflow and friends; takes a while)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
  echo "$want" >"$VENV/.bench-install"
fi

# ghz, pinned like the tools of .ci/tools.sh (bin/.ghz.pin records what was built).
exec 9>"$BIN/../.bench-lock"
flock 9
if [ ! -x "$BIN/ghz" ] || [ "$(cat "$BIN/.ghz.pin" 2>/dev/null)" != "$GHZ_PKG@$GHZ_VERSION" ]; then
  say "building ghz: go install $GHZ_PKG@$GHZ_VERSION"
  rm -f "$BIN/.ghz.pin"
  GOBIN="$BIN" go install "$GHZ_PKG@$GHZ_VERSION"
  echo "$GHZ_PKG@$GHZ_VERSION" >"$BIN/.ghz.pin"
fi

# wrk (and curl, for the artifact transfers) from Debian.
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=()
  [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  say "installing ${missing[*]} from Debian's packages"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
