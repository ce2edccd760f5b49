#!/usr/bin/env bash
# Builds the SDS client (main.go here, on go-control-plane's Envoy types at the version pinned
# in go.mod) into a cache outside the repository, keyed by that version and a hash of the
# sources, and prints the client's path. Later runs find it there and build nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go-cache.sh"
version="$(pinned_version "$here/go.mod" github.com/envoyproxy/go-control-plane/envoy)"
source_hash="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)"
cache="${WARD_CACHE:-$HOME/.cache/ward}/envoy-sds-client/$version-$source_hash"
build() {
  cd "$here"
  export GOSUMDB="${GOSUMDB:-off}" GOFLAGS="${GOFLAGS:-} -mod=readonly"
  go build -o "$1/envoy-sds-client" .
}
cached_build "$cache" build envoy-sds-client
echo "$cache/envoy-sds-client"
