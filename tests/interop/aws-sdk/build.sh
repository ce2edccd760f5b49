#!/usr/bin/env bash
# Builds aws-sdk-probe (main.go here): the AWS API calls of spire-server's aws_iid plugin made
# with the AWS SDK for Go v2 at the versions SPIRE v1.13.3's go.mod pins (pinned again in
# go.mod here), into a cache outside the repository keyed by the EC2 client's version and a
# hash of this directory's sources, and prints the probe's path. Later runs build nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go-cache.sh"
version="$(pinned_version "$here/go.mod" github.com/aws/aws-sdk-go-v2/service/ec2)"
source_hash="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)"
cache="${WARD_CACHE:-$HOME/.cache/ward}/aws-sdk-probe/$version-$source_hash"
build() {
  cd "$here"
  export GOSUMDB="${GOSUMDB:-off}" GOFLAGS="${GOFLAGS:-} -mod=readonly"
  go build -o "$1/aws-sdk-probe" .
}
cached_build "$cache" build aws-sdk-probe
echo "$cache/aws-sdk-probe"
