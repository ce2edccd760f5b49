#!/usr/bin/env bash
# Builds kube-apiserver and etcd (etcd/main.go here) at the versions pinned in go.mod into a
# cache outside the repository, keyed by the kubernetes version and a hash of this
# directory's Go sources, and prints the directory holding both. Later runs find them there
# and build nothing. The first build takes several minutes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go-cache.sh"
version="$(pinned_version "$here/go.mod" k8s.io/kubernetes)"
source_hash="$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" | sha256sum | cut -c1-12)"
cache="${WARD_CACHE:-$HOME/.cache/ward}/kubernetes/$version-$source_hash"
build() {
  cd "$here"
  export GOSUMDB="${GOSUMDB:-off}" GOFLAGS="${GOFLAGS:-} -mod=readonly"
  go build -o "$1/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  go build -o "$1/etcd" ./etcd
}
cached_build "$cache" build kube-apiserver etcd
echo "$cache"
