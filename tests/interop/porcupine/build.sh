#!/usr/bin/env bash
# Builds the porcupine linearizability checker (main.go here) against the porcupine version
# pinned in go.mod into a cache outside the repository, keyed by that version and a hash of
# main.go, and prints the checker's path. Later runs find it there and build nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go-cache.sh"
version="$(pinned_version "$here/go.mod" github.com/anishathalye/porcupine)"
source_hash="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)"
cache="${WARD_CACHE:-$HOME/.cache/ward}/porcupine/$version-$source_hash"
build() {
  cd "$here"
  export GOSUMDB="${GOSUMDB:-off}" GOFLAGS="${GOFLAGS:-} -mod=readonly"
  go build -o "$1/porcupine-check" .
}
cached_build "$cache" build porcupine-check
echo "$cache/porcupine-check"
