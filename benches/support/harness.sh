# Shared by the SIPp benches (sip_load.sh, relay_latency.sh, call_memory.sh), sourced after
# they set BENCH (their name, for messages), ROOT and SIPEDGE_BIN: a work directory, the
# processes to stop on exit, free loopback ports, and sipedge started on one port.

WORK=$(mktemp -d "/tmp/$BENCH.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# A port free over UDP and TCP on 127.0.0.1 and 127.0.0.2, below the ephemeral range.
free_port() {
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 12000))
        if [ -z "$(ss -Hanu "sport = :$port")" ] && [ -z "$(ss -Hant "sport = :$port")" ]; then
            echo "$port"
            return
        fi
    done
    echo "$BENCH: no free port" >&2
    exit 2
}

wait_listening() { # pid port
    for _ in $(seq 150); do
        kill -0 "$1" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Builds the release binary when it is missing (once per machine).
need_sipedge() {
    if [ ! -x "$SIPEDGE_BIN" ]; then
        echo "$BENCH: building $SIPEDGE_BIN (once)" >&2
        nice -n 10 cargo build --release --bin sipedge >&2 || return 1
    fi
}

# sipedge relaying 127.0.0.1:PORT to the SIPp UAS on 127.0.0.2:PORT, with its config, data
# and stderr.log in $WORK/sipedge-PORT; extra [sip] lines may follow; the API listens on
# API_PORT when set. Prints the pid.
start_sipedge() { # port [sip lines...]
    need_sipedge || return 1
    local port=$1 dir="$WORK/sipedge-$1"
    shift
    mkdir -p "$dir/data"
    cat >"$dir/sipedge.toml" <<TOML
[node]
name = "bench"
data_dir = "$dir/data"

[sip]
listen = "127.0.0.1"
ports = "$port-$port"
upstream = "127.0.0.2"
# Every SIPp call comes from one address: the per-source flood limit would cut the run.
source_rate_limit = 0
$(printf '%s\n' "$@")

[account]
listen = "127.0.0.1:$(free_port)"
appids = ["bench-appid"]
account = "sipserver"

[api]
listen = "127.0.0.1:${API_PORT:-$(free_port)}"
TOML
    "$SIPEDGE_BIN" serve --config "$dir/sipedge.toml" >"$dir/stderr.log" 2>&1 &
    echo $!
}
