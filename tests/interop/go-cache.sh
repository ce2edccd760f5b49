# Sourced by the build.sh scripts beside it (bash): Go programs built once into a cache
# outside the repository, keyed by what the caller pins, even when several test binaries or
# CI jobs ask at the same time.

# pinned_version GO_MOD MODULE: prints the version GO_MOD requires MODULE at (in a require
# block or on a single require line); exits with 2 when it pins none.
pinned_version() {
  local version
  version="$(awk -v module="$2" '{ for (i = 1; i < NF; i++) if ($i == module) { print $(i + 1); exit } }' "$1")"
  if [[ -z "$version" ]]; then
    echo "build.sh: go.mod does not pin $2" >&2
    exit 2
  fi
  echo "$version"
}

# executables_in DIR NAME...: whether each NAME is an executable file in DIR.
executables_in() {
  local dir="$1" name
  shift
  for name in "$@"; do
    [[ -x "$dir/$name" ]] || return 1
  done
}

# cached_build CACHE BUILD NAME...: makes sure the executables NAME... are in the directory
# CACHE. When one is missing, the function BUILD runs (in a subshell, its output on stderr)
# with a fresh directory to put them in, which becomes CACHE once BUILD succeeds. One build
# at a time per CACHE: the others wait on CACHE.lock and then find it built.
cached_build() {
  local cache="$1" build="$2"
  shift 2
  if executables_in "$cache" "$@"; then
    return 0
  fi
  mkdir -p "$(dirname "$cache")"
  exec 9>"$cache.lock"
  flock 9
  if ! executables_in "$cache" "$@"; then
    rm -rf "$cache.tmp"
    mkdir -p "$cache.tmp"
    ("$build" "$cache.tmp") >&2
    rm -rf "$cache"
    mv "$cache.tmp" "$cache"
  fi
  exec 9>&-
}
