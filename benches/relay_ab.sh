#!/usr/bin/env bash
# A/B of sipedge builds under the same SIPp load: each build runs once, with its own SIPp UAS
# (the Sipserver), and SIPp UAC bursts take turns between them, so that a machine that slows
# down or speeds up during the run affects every build alike. Reported per burst and as means:
# the process's CPU per call (utime+stime from /proc/PID/stat), and the same split by thread
# name (the UDP relay threads, the tokio workers that carry TCP and call tracking, the store
# writer, the log writer).
#
# Usage: benches/relay_ab.sh TRANSPORT RATE SECONDS ROUNDS BINARY...
#   e.g. benches/relay_ab.sh udp 1000 5 4 /tmp/before /tmp/after
# Each burst places RATE*SECONDS calls. Thread CPU comes in clock ticks (10 ms), so a burst
# of 5000 calls resolves 2 us/call; use more calls for finer figures.
# Needs: sipp (Debian sip-tester), ss (iproute2). Everything stays on loopback.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ $# -lt 5 ]; then
    sed -n '2,13p' "$0" >&2
    exit 2
fi
TRANSPORT=$1 RATE=$2 SECONDS_PER_BURST=$3 ROUNDS=$4
shift 4
BINS=("$@")
case $TRANSPORT in udp) t=u1 ;; tcp) t=t1 ;; *) echo "relay_ab: unknown transport $TRANSPORT" >&2; exit 2 ;; esac
for tool in sipp ss; do
    command -v "$tool" >/dev/null || { echo "relay_ab: '$tool' not on PATH (sipp: apt-get install sip-tester)" >&2; exit 2; }
done
for bin in "${BINS[@]}"; do
    [ -x "$bin" ] || { echo "relay_ab: $bin is not an executable" >&2; exit 2; }
done

BENCH=relay_ab
SIPEDGE_BIN=${BINS[0]}
# shellcheck source=support/harness.sh
. "$ROOT/benches/support/harness.sh"
CLK_TCK=$(getconf CLK_TCK)
SIPP_BUFFER=4194304

declare -a PORT PID
for i in "${!BINS[@]}"; do
    SIPEDGE_BIN=${BINS[$i]}
    port=$(free_port)
    pid=$(start_sipedge "$port")
    wait_listening "$pid" "$port" || { echo "relay_ab: ${BINS[$i]} did not start; see $WORK" >&2; exit 1; }
    PIDS+=("$pid")
    sipp -sn uas -t "$t" -buff_size "$SIPP_BUFFER" -i 127.0.0.2 -p "$port" -bind_local -mi 127.0.0.2 -nostdin \
        -max_socket 1000 >"$WORK/uas-$i.log" 2>&1 &
    PIDS+=("$!")
    PORT[i]=$port
    PID[i]=$pid
done
sleep 1

# "name ticks" per thread name (a name's trailing -NUMBER, the UDP port, dropped), summed.
threads() {
    local f
    for f in /proc/"$1"/task/*/stat; do
        # "name state ppid ...": utime and stime are fields 13 and 14 of the line.
        sed 's/^[0-9]* (\(.*\)) \(.*\)/\1 \2/' "$f" 2>/dev/null
    done | awk '{ n = $1; sub(/-[0-9]+$/, "", n); t[n] += $13 + $14 } END { for (k in t) print k, t[k] }' | sort
}
process_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

calls=$((RATE * SECONDS_PER_BURST))
for round in $(seq "$ROUNDS"); do
    for i in "${!BINS[@]}"; do
        pid=${PID[i]}
        p0=$(process_ticks "$pid")
        threads "$pid" >"$WORK/t0"
        sipp -sn uac "127.0.0.1:${PORT[i]}" -t "$t" -buff_size "$SIPP_BUFFER" -i 127.0.0.1 -p "$(free_port)" -bind_local \
            -mi 127.0.0.1 -r "$RATE" -m "$calls" -nostdin -max_socket 1000 -timeout 60s -timeout_error \
            >"$WORK/uac-$round-$i.log" 2>&1 || echo "relay_ab: burst $round of build $i had failed calls" >&2
        threads "$pid" >"$WORK/t1"
        p1=$(process_ticks "$pid")
        join "$WORK/t0" "$WORK/t1" | awk -v c="$calls" -v hz="$CLK_TCK" -v b="$i" -v r="$round" -v pt=$((p1 - p0)) '
            { d = ($3 - $2) / hz * 1e6 / c; if (d > 0) s = s sprintf(" %s=%.1f", $1, d) }
            END { printf "round %d build %d total %.1f%s\n", r, b, pt / hz * 1e6 / c, s }'
    done
done | tee "$WORK/rounds"

echo
echo "Means over $ROUNDS rounds, CPU us/call ($TRANSPORT, $RATE calls/s, $calls calls a burst):"
for i in "${!BINS[@]}"; do
    awk -v b="$i" -v bin="${BINS[$i]}" '$4 == b {
            n++; tot += $6
            for (f = 7; f <= NF; f++) { split($f, kv, "="); g[kv[1]] += kv[2] }
        }
        END {
            printf "%s: total %.1f", bin, tot / n
            for (k in g) printf "  %s %.1f", k, g[k] / n
            print ""
        }' "$WORK/rounds"
done
