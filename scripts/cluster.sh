#!/usr/bin/env bash
# Starts or stops a local umcluster cluster: NODES redis-server processes with the module loaded,
# on consecutive ports from PORT, each with its folder under DIR, joined with `umcluster create`.
#
#   scripts/cluster.sh start     (what `make cluster` runs)
#   scripts/cluster.sh stop      (what `make cluster-stop` runs)
set -euo pipefail

cmd=${1:-start}
PORT=${PORT:-7001}
NODES=${NODES:-3}
DIR=${DIR:-run/cluster}
MODULE=${MODULE:-target/release/libumcluster.so}
TOOL=${TOOL:-target/release/umcluster}
NAME=${NAME:-umcluster}

ports() { for ((i = 0; i < NODES; i++)); do echo $((PORT + i)); done; }

wait_until() { # wait_until SECONDS COMMAND...: retry COMMAND until it succeeds or time runs out
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then return 1; fi
        sleep 0.1
    done
}

start() {
    [[ -f $MODULE ]] || { echo "module not built: $MODULE (run make build)" >&2; exit 1; }
    local addrs=()
    for port in $(ports); do
        local dir="$DIR/$port"
        mkdir -p "$dir"
        if redis-cli -p "$port" ping >/dev/null 2>&1; then
            echo "port $port is already in use: run 'make cluster-stop' first (or set PORT=...)" >&2
            exit 1
        fi
        redis-server --port "$port" --bind 127.0.0.1 --dir "$(realpath "$dir")" \
            --daemonize yes --pidfile "$(realpath "$dir")/redis.pid" --logfile "$(realpath "$dir")/redis.log" \
            --save "" --appendonly no --loadmodule "$(realpath "$MODULE")"
        addrs+=("127.0.0.1:$port")
    done
    for port in $(ports); do
        wait_until 10 redis-cli -p "$port" ping || { echo "node $port did not start; see $DIR/$port/redis.log" >&2; exit 1; }
    done
    "$TOOL" create --name "$NAME" "${addrs[@]}"
    echo
    echo "Cluster '$NAME' is up: ${addrs[*]}"
    echo "  redis-cli -c -p $PORT                  # a cluster-aware shell"
    echo "  $TOOL check 127.0.0.1:$PORT   # verify the topology"
    echo "  make cluster-stop                        # stop it (logs and data in $DIR/)"
}

stop() {
    local stopped=()
    for port in $(ports); do
        if redis-cli -p "$port" ping >/dev/null 2>&1; then
            redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
            stopped+=("$port")
        fi
    done
    for port in "${stopped[@]}"; do
        wait_until 10 bash -c "! redis-cli -p $port ping" || echo "node $port is still running" >&2
    done
    if ((${#stopped[@]})); then
        echo "stopped nodes on ports ${stopped[*]}"
    else
        echo "no node was running on ports $(ports | tr '\n' ' ')"
    fi
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
