#!/usr/bin/env bash
# Builds spire-server and spire-agent at the version pinned in go.mod into a cache outside
# the repository, keyed by that version, and prints the directory holding the binaries.
# Later runs find the binaries there and build nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "github.com/spiffe/spire" { print $2 }' "$here/go.mod")"
if [[ -z "$version" ]]; then
  echo "build.sh: go.mod does not pin github.com/spiffe/spire" >&2
  exit 2
fi
cache="${WARD_CACHE:-$HOME/.cache/ward}/spire/$version"
if [[ -x "$cache/spire-server" && -x "$cache/spire-agent" ]]; then
  echo "$cache"
  exit 0
fi
# One build at a time per cache: parallel test binaries or CI jobs wait for the first.
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
if [[ -x "$cache/spire-server" && -x "$cache/spire-agent" ]]; then
  echo "$cache"
  exit 0
fi
rm -rf "$cache.tmp"
mkdir -p "$cache.tmp"
(
  cd "$here"
  export GOSUMDB="${GOSUMDB:-off}" GOFLAGS="${GOFLAGS:-} -mod=mod"
  GOBIN="$cache.tmp" go install github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
) >&2
rm -rf "$cache"
mv "$cache.tmp" "$cache"
echo "$cache"
