#!/bin/sh
# Starts a three-replica ward cluster on 127.0.0.1-3 (agents: port 8081, peers: port 8082):
# replica 1 bootstraps, replicas 2 and 3 join with credentials made on replica 1.
#
#   deploy/local/start.sh          build ward-server, start the three replicas, print status
#   deploy/local/start.sh stop     stop them (SIGTERM, by the pids the script recorded)
#
# State lives in deploy/local/run/ (delete it to start over). WARD_SERVER_BIN overrides the
# binary (default: target/debug/ward-server, built first).
set -eu
cd "$(dirname "$0")/../.."
RUN=deploy/local/run

if [ "${1:-}" = stop ]; then
    for n in 3 2 1; do
        if [ -f "$RUN/replica$n/pid" ]; then
            kill "$(cat "$RUN/replica$n/pid")" 2>/dev/null || true
            rm -f "$RUN/replica$n/pid"
        fi
    done
    exit 0
fi

if [ -z "${WARD_SERVER_BIN:-}" ]; then
    cargo build -p ward-server --bin ward-server
    WARD_SERVER_BIN="${CARGO_TARGET_DIR:-target}/debug/ward-server"
fi
BIN=$WARD_SERVER_BIN

start() {
    mkdir -p "$RUN/replica$1"
    chmod 700 "$RUN/replica$1"
    "$BIN" run -config "deploy/local/replica$1.toml" >>"$RUN/replica$1/server.log" 2>&1 &
    echo $! >"$RUN/replica$1/pid"
}

# Waits (up to 30 s) until `cluster status` on replica $1 prints a line matching $2.
wait_for() {
    i=0
    until "$BIN" cluster status -socketPath "$RUN/replica$1/api.sock" 2>/dev/null | grep -q "$2"; do
        i=$((i + 1))
        if [ "$i" -gt 150 ]; then
            echo "replica $1 did not reach: $2 (see $RUN/replica$1/server.log)" >&2
            exit 1
        fi
        sleep 0.2
    done
}

start 1
wait_for 1 "^Leader: [1-9]"
for n in 2 3; do
    mkdir -p "$RUN/replica$n"
    chmod 700 "$RUN/replica$n"
    if [ ! -f "$RUN/replica$n/join-credential" ]; then
        "$BIN" cluster add -socketPath "$RUN/replica1/api.sock" -nodeId "$n" \
            -address "127.0.0.$n:8082" -output json |
            sed 's/.*"credential":"\([^"]*\)".*/\1/' >"$RUN/replica$n/join-credential.new"
        mv "$RUN/replica$n/join-credential.new" "$RUN/replica$n/join-credential"
    fi
    start "$n"
done
wait_for 1 "^  2 voter"
wait_for 1 "^  3 voter"
"$BIN" cluster status -socketPath "$RUN/replica1/api.sock"
echo "admin sockets: $RUN/replica{1,2,3}/api.sock; stop with: deploy/local/start.sh stop"
