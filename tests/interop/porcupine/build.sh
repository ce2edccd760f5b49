#!/usr/bin/env bash
# Builds the porcupine linearizability checker (main.go here) against the porcupine version
# pinned in go.mod into a cache outside the repository, keyed by that version and a hash of
# main.go, and prints the checker's path. Later runs find it there and build nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '{ for (i = 1; i < NF; i++) if ($i == "github.com/anishathalye/porcupine") print $(i + 1) }' "$here/go.mod")"
if [[ -z "$version" ]]; then
  echo "build.sh: go.mod does not pin github.com/anishathalye/porcupine" >&2
  exit 2
fi
source_hash="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)"
cache="${WARD_CACHE:-$HOME/.cache/ward}/porcupine/$version-$source_hash"
if [[ -x "$cache/porcupine-check" ]]; then
  echo "$cache/porcupine-check"
  exit 0
fi
# One build at a time per cache: parallel test binaries or CI jobs wait for the first.
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
if [[ -x "$cache/porcupine-check" ]]; then
  echo "$cache/porcupine-check"
  exit 0
fi
rm -rf "$cache.tmp"
mkdir -p "$cache.tmp"
(
  cd "$here"
  export GOSUMDB="${GOSUMDB:-off}" GOFLAGS="${GOFLAGS:-} -mod=readonly"
  go build -o "$cache.tmp/porcupine-check" .
) >&2
rm -rf "$cache"
mv "$cache.tmp" "$cache"
echo "$cache/porcupine-check"
