# Sourced by tests/c/tsan.sh and tests/c/asan.sh: a private redis-server for fleet_stress.
#
#   start_redis    starts redis-server on a free loopback port (REDIS_PORT) with its own temporary folder
#                  (REDIS_DIR), no persistence, and waits (bounded) until it answers PING
#   stop_redis     stops it and removes the folder; idempotent, so callers run it from an EXIT trap
#
# A random port is tried and redis-server itself says whether it is free (it exits when it cannot bind), so
# there is no window between choosing a port and binding it.

REDIS_PID=
REDIS_DIR=
REDIS_PORT=

start_redis() {
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        echo "redis.sh: redis-server / redis-cli not found (scripts/setup.sh installs them)" >&2
        return 1
    fi
    REDIS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/progress-redis.XXXXXX")
    local attempt deadline
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        REDIS_PORT=$((20000 + RANDOM % 40000))
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" \
            --daemonize no >"$REDIS_DIR/redis.log" 2>&1 &
        REDIS_PID=$!
        deadline=$((SECONDS + 10))
        while [ $SECONDS -lt $deadline ] && kill -0 "$REDIS_PID" 2>/dev/null; do
            if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
                return 0
            fi
            sleep 0.05
        done
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=
    done
    echo "redis.sh: redis-server did not start (log: $REDIS_DIR/redis.log)" >&2
    cat "$REDIS_DIR/redis.log" >&2 || true
    return 1
}

stop_redis() {
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=
    fi
    if [ -n "$REDIS_DIR" ]; then
        rm -rf "$REDIS_DIR"
        REDIS_DIR=
    fi
}
