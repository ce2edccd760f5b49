#!/usr/bin/env bash
# Builds the go-spiffe workload (main.go here, on go-spiffe v2 at the version pinned in go.mod)
# into a cache outside the repository, keyed by that version and a hash of the sources, and
# prints the program's path. Later runs find it there and build nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go-cache.sh"
version="$(pinned_version "$here/go.mod" github.com/spiffe/go-spiffe/v2)"
source_hash="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)"
cache="${WARD_CACHE:-$HOME/.cache/ward}/go-spiffe/$version-$source_hash"
build() {
  cd "$here"
  export GOSUMDB="${GOSUMDB:-off}" GOFLAGS="${GOFLAGS:-} -mod=readonly"
  go build -o "$1/go-spiffe-client" .
}
cached_build "$cache" build go-spiffe-client
echo "$cache/go-spiffe-client"
