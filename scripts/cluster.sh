#!/usr/bin/env bash
# Starts or stops a local umcluster cluster: NODES redis-server processes with the module loaded
# (each with `config-file` in its folder, so a restarted node keeps its topology), on consecutive
# ports from PORT, each with its folder under DIR, joined with `umcluster create`.
# REPLICAS=N gives every master N replicas (NODES defaults to 3 * (N + 1)); SENTINELS=K starts K
# redis-sentinel processes on ports from SENTINEL_PORT, monitoring every shard, with the umcluster
# hook as client-reconfig-script (automatic failover). DOWN_AFTER (ms) is Sentinel's
# down-after-milliseconds.
#
#   scripts/cluster.sh start     (what `make cluster` runs)
#   scripts/cluster.sh stop      (what `make cluster-stop` runs)
set -euo pipefail

cmd=${1:-start}
PORT=${PORT:-7001}
REPLICAS=${REPLICAS:-0}
NODES=${NODES:-$((3 * (REPLICAS + 1)))}
SENTINELS=${SENTINELS:-0}
SENTINEL_PORT=${SENTINEL_PORT:-$((PORT + 19000))}
DOWN_AFTER=${DOWN_AFTER:-5000}
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
            --save "" --appendonly no --repl-diskless-sync-delay 0 \
            --loadmodule "$(realpath "$MODULE")" config-file "$(realpath "$dir")/umcluster.json"
        addrs+=("127.0.0.1:$port")
    done
    for port in $(ports); do
        wait_until 10 redis-cli -p "$port" ping || { echo "node $port did not start; see $DIR/$port/redis.log" >&2; exit 1; }
    done
    "$TOOL" create --name "$NAME" --replicas "$REPLICAS" "${addrs[@]}"
    if ((SENTINELS > 0)); then start_sentinels; fi
    echo
    echo "Cluster '$NAME' is up: ${addrs[*]}"
    echo "  redis-cli -c -p $PORT                  # a cluster-aware shell"
    echo "  $TOOL check 127.0.0.1:$PORT   # verify the topology"
    echo "  make cluster-stop                        # stop it (logs and data in $DIR/)"
}

start_sentinels() {
    command -v redis-sentinel >/dev/null || { echo "redis-sentinel not found (apt-get install redis-sentinel)" >&2; exit 1; }
    # Sentinel's client-reconfig-script takes a path and no arguments: the tool acts as the hook
    # when run under this name.
    local hook
    hook="$(realpath "$DIR")/umcluster-sentinel-hook"
    ln -sf "$(realpath "$TOOL")" "$hook"
    local quorum=$((SENTINELS / 2 + 1))
    for ((i = 0; i < SENTINELS; i++)); do
        local port=$((SENTINEL_PORT + i)) dir
        dir="$(realpath "$DIR")/sentinel-$port"
        mkdir -p "$dir"
        {
            echo "bind 127.0.0.1"
            echo "daemonize yes"
            echo "dir $dir"
            echo "pidfile $dir/sentinel.pid"
            echo "logfile $dir/sentinel.log"
            "$TOOL" sentinel-config --port "$port" --quorum "$quorum" --down-after "$DOWN_AFTER" --hook "$hook" "127.0.0.1:$PORT"
        } >"$dir/sentinel.conf"
        redis-sentinel "$dir/sentinel.conf"
    done
    for ((i = 0; i < SENTINELS; i++)); do
        wait_until 10 redis-cli -p $((SENTINEL_PORT + i)) ping || { echo "sentinel $((SENTINEL_PORT + i)) did not start" >&2; exit 1; }
    done
    echo "Sentinels on ports $SENTINEL_PORT..$((SENTINEL_PORT + SENTINELS - 1)) (quorum $quorum, down-after ${DOWN_AFTER}ms)"
}

stop() {
    # Sentinels first (they would otherwise fail the stopping masters over).
    for pidfile in "$DIR"/sentinel-*/sentinel.pid; do
        [[ -f $pidfile ]] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
    # Every node folder under DIR with a live pidfile (redis removes it at shutdown), whatever
    # NODES was at start; else the ports from PORT.
    local started
    started=$(find "$DIR" -mindepth 2 -maxdepth 2 -name redis.pid -regex '.*/[0-9]+/redis.pid' -printf '%h\n' 2>/dev/null | xargs -rn1 basename | sort -n)
    if [[ -n $started ]]; then ports() { echo "$started"; }; fi
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
