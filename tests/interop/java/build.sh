#!/usr/bin/env bash
# Builds the java-spiffe workload (JavaSpiffeClient.java here, on io.spiffe:java-spiffe-core at
# the version pinned in pom.xml) into one jar with its dependencies, in a cache outside the
# repository keyed by that version and a hash of the sources, and prints the jar's path. Later
# runs find it there and build nothing. Needs Maven and a JDK ≥ 17 the first time.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../go-cache.sh"
version="$(sed -n 's:.*<java-spiffe.version>\(.*\)</java-spiffe.version>.*:\1:p' "$here/pom.xml")"
if [[ -z "$version" ]]; then
  echo "build.sh: pom.xml does not pin java-spiffe" >&2
  exit 2
fi
source_hash="$(cd "$here" && cat pom.xml $(find src -type f | sort) | sha256sum | cut -c1-12)"
cache="${WARD_CACHE:-$HOME/.cache/ward}/java-spiffe/$version-$source_hash"
build() {
  # Maven writes target/ beside the pom: build a copy so the repository stays clean.
  cp -r "$here/pom.xml" "$here/src" "$1/"
  mvn -B -q -Dstyle.color=never -f "$1/pom.xml" package
  mv "$1/target/java-spiffe-client-all.jar" "$1/java-spiffe-client.jar"
  chmod +x "$1/java-spiffe-client.jar"
  rm -rf "$1/target" "$1/src" "$1/pom.xml"
}
cached_build "$cache" build java-spiffe-client.jar
echo "$cache/java-spiffe-client.jar"
