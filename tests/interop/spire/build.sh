#!/usr/bin/env bash
# Builds spire-server and spire-agent at the version pinned in go.mod into a cache outside
# the repository, keyed by that version, and prints the directory holding the binaries.
# Later runs find the binaries there and build nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go-cache.sh"
version="$(pinned_version "$here/go.mod" github.com/spiffe/spire)"
cache="${WARD_CACHE:-$HOME/.cache/ward}/spire/$version"
build() {
  cd "$here"
  export GOSUMDB="${GOSUMDB:-off}" GOFLAGS="${GOFLAGS:-} -mod=mod"
  GOBIN="$1" go install github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
}
cached_build "$cache" build spire-server spire-agent
echo "$cache"
