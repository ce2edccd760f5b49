#!/usr/bin/env bash
# Creates a Python virtual environment with py-spiffe (the `spiffe` package and its
# dependencies, pinned in requirements.txt) in a cache outside the repository, keyed by the
# spiffe version and a hash of requirements.txt, and prints the path of its Python
# interpreter. Later runs find it there and install nothing; concurrent runs wait for the
# first on a lock.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's/^spiffe==//p' "$here/requirements.txt")"
if [[ -z "$version" ]]; then
  echo "setup.sh: requirements.txt does not pin spiffe" >&2
  exit 2
fi
hash="$(sha256sum "$here/requirements.txt" | cut -c1-12)"
venv="${WARD_CACHE:-$HOME/.cache/ward}/py-spiffe/$version-$hash"
# A venv records its own path, so it is created where it stays; `ready` marks a finished one.
if [[ ! -e "$venv/ready" ]]; then
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if [[ ! -e "$venv/ready" ]]; then
    (
      python3 -m venv --clear "$venv"
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: -r "$here/requirements.txt"
      "$venv/bin/python" -c 'import spiffe'
    ) >&2
    touch "$venv/ready"
  fi
  exec 9>&-
fi
echo "$venv/bin/python"
