#!/usr/bin/env bash
# sipedge's memory per call in progress: RSS with CALLS (default 10,000) long calls up at once.
#
# sipedge runs as in benches/sip_load.sh (127.0.0.1:PORT, upstream a SIPp UAS on
# 127.0.0.2:PORT), with [sip] max_calls raised well above CALLS. A SIPp UAC (built-in `uac`)
# places CALLS calls at RATE calls/s, each held HOLD seconds (-d) before its BYE, at most
# CALLS at once (-l). sipedge's VmRSS (/proc/PID/status) is read idle before the calls, when
# all CALLS are established (sipedge's own gauge, sipedge_calls_active on GET /metrics, says
# so), and after they have all ended. Reported: (RSS at CALLS - RSS idle) / CALLS in bytes
# per call, the RSS after the calls, and the peak (VmHWM).
#
# HOLD must outlast the set-up (CALLS / RATE seconds) with margin, or the first calls end
# before the last start; the script refuses a HOLD shorter than set-up + 15 s.
#
# Usage: benches/call_memory.sh          (per transport: about CALLS/RATE + HOLD + 15 s)
# Environment (all optional):
#   CALLS=10000   RATE=1000 (calls/s)   HOLD=60 (seconds each call stays up)
#   TRANSPORTS="udp tcp" (tcp: SIPp -t t1, every call over one connection each side)
#   SIPEDGE_BIN=target/release/sipedge   (built with `cargo build --release` if missing)
# Needs: sipp (Debian sip-tester), curl, ss (iproute2). Everything stays on loopback.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
CALLS=${CALLS:-10000}
RATE=${RATE:-1000}
HOLD=${HOLD:-60}
TRANSPORTS=${TRANSPORTS:-"udp tcp"}
SIPEDGE_BIN=${SIPEDGE_BIN:-$ROOT/target/release/sipedge}
SIPP_BUFFER=${SIPP_BUFFER:-4194304}

for tool in sipp curl ss; do
    command -v "$tool" >/dev/null || { echo "call_memory: '$tool' not on PATH (sipp: apt-get install sip-tester)" >&2; exit 2; }
done
SETUP=$(((CALLS + RATE - 1) / RATE))
if [ "$HOLD" -lt $((SETUP + 15)) ]; then
    echo "call_memory: HOLD=$HOLD s is too short: setting up $CALLS calls at $RATE/s takes $SETUP s; use HOLD >= $((SETUP + 15))" >&2
    exit 2
fi

BENCH=call_memory
# shellcheck source=support/harness.sh
. "$ROOT/benches/support/harness.sh"

rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$1/status"; }
# RssAnon/RssFile: heap versus file-backed pages (a memory-mapped store counts in VmRSS too).
split_kb() { awk '$1 == "RssAnon:" { a = $2 } $1 == "RssFile:" { f = $2 } END { print a "/" f }' "/proc/$1/status"; }

# sipedge's gauge of calls in progress; fails (empty) when the endpoint or the metric is missing.
calls_active() { # api_port
    curl -sf --max-time 5 "http://127.0.0.1:$1/metrics" | awk '$1 == "sipedge_calls_active" { print $2; found = 1 } END { exit !found }'
}

# SIPp's current call count from the last row of its statistics file.
sipp_current() { # stats.csv
    awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next } { n = $col["CurrentCall"] } END { print n + 0 }' "$1" 2>/dev/null || echo 0
}

need_sipedge || exit 1

RESULTS="$WORK/results.tsv"
: >"$RESULTS"

for transport in $TRANSPORTS; do
    case $transport in udp) t=u1 ;; tcp) t=t1 ;; *) echo "call_memory: unknown transport $transport" >&2; exit 2 ;; esac
    port=$(free_port)
    api_port=$(free_port)
    dir="$WORK/sipedge-$port"
    # Room for every call of the run (the default is 20,000).
    pid=$(API_PORT=$api_port start_sipedge "$port" "max_calls = $((CALLS * 2 > 20000 ? CALLS * 2 : 20000))")
    PIDS+=("$pid")
    if ! wait_listening "$pid" "$port"; then
        echo "call_memory: sipedge did not start on 127.0.0.1:$port; see $dir/stderr.log" >&2
        exit 1
    fi
    sipp -sn uas -t "$t" -buff_size "$SIPP_BUFFER" -i 127.0.0.2 -p "$port" -bind_local -mi 127.0.0.2 -nostdin \
        -max_socket 1000 >"$WORK/uas-$transport.log" 2>&1 &
    uas=$!
    PIDS+=("$uas")
    sleep 2
    if ! active=$(calls_active "$api_port"); then
        echo "call_memory: no sipedge_calls_active on http://127.0.0.1:$api_port/metrics" >&2
        exit 1
    fi
    idle=$(rss_kb "$pid")
    idle_split=$(split_kb "$pid")
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "call_memory: $transport: sipedge pid $pid idle VmRSS $idle kB, calls active $active (load average $load)" >&2

    stats="$WORK/uac-$transport.csv"
    sipp -sn uac "127.0.0.1:$port" -t "$t" -buff_size "$SIPP_BUFFER" -i 127.0.0.1 -p "$(free_port)" -bind_local \
        -mi 127.0.0.1 -r "$RATE" -m "$CALLS" -l "$CALLS" -d "$((HOLD * 1000))" -nostdin -max_socket 1000 \
        -timeout "$((SETUP + HOLD + 60))s" -timeout_error \
        -trace_stat -stf "$stats" -fd 1 -trace_err -error_file "$WORK/uac-$transport.errors" \
        >"$WORK/uac-$transport.log" 2>&1 &
    uac=$!
    PIDS+=("$uac")

    # Wait (bounded: set-up time + 15 s, well inside HOLD) for every call to be up in sipedge.
    peak=0
    full=n/a
    full_split=n/a
    deadline=$((SECONDS + SETUP + 15))
    while [ "$SECONDS" -lt "$deadline" ]; do
        active=$(calls_active "$api_port" || echo 0)
        [ "$active" -gt "$peak" ] && peak=$active
        if [ "$active" -ge "$CALLS" ]; then
            sleep 2
            active=$(calls_active "$api_port" || echo 0)
            full=$(rss_kb "$pid")
            full_split=$(split_kb "$pid")
            break
        fi
        kill -0 "$uac" 2>/dev/null || break
        sleep 0.5
    done
    load_full=$(cut -d' ' -f1-3 /proc/loadavg)
    up=$(sipp_current "$stats")
    if [ "$full" = n/a ]; then
        echo "call_memory: $transport: only $peak of $CALLS calls up in sipedge at the peak (SIPp: $up current); see $WORK" >&2
    else
        echo "call_memory: $transport: $active calls active (SIPp: $up current), VmRSS $full kB (load average $load_full)" >&2
    fi

    # The calls end HOLD seconds after they started; wait for SIPp (bounded by its -timeout,
    # plus a margin) and for sipedge to see every call end.
    deadline=$((SECONDS + SETUP + HOLD + 90))
    while kill -0 "$uac" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
    if kill -0 "$uac" 2>/dev/null; then
        echo "call_memory: $transport: SIPp UAC still running after its bound; stopping it" >&2
        kill -TERM "$uac" 2>/dev/null || true
    fi
    wait "$uac" 2>/dev/null || true
    read -r ok failed < <(awk -F';' 'NR==1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { ok = $col["SuccessfulCall(C)"]; failed = $col["FailedCall(C)"] } END { printf "%d %d\n", ok, failed }' \
        "$stats" 2>/dev/null || echo "0 0")
    for _ in $(seq 60); do
        active=$(calls_active "$api_port" || echo "?")
        [ "$active" = 0 ] && break
        sleep 0.5
    done
    sleep 2
    after=$(rss_kb "$pid")
    after_split=$(split_kb "$pid")
    hwm=$(hwm_kb "$pid")
    per_call=$(awk -v f="$full" -v i="$idle" -v n="$CALLS" 'BEGIN { if (f != "n/a") printf "%.0f", (f - i) * 1024 / n; else print "n/a" }')
    echo "call_memory: $transport: calls passed $ok, failed $failed; after: calls active $active, VmRSS $after kB, VmHWM $hwm kB" >&2
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$transport" "$CALLS" "$ok" "$failed" "$idle" "$full" \
        "$per_call" "$after" "$hwm" "$load" "$load_full" "$idle_split" "$full_split" "$after_split" >>"$RESULTS"
    kill -TERM "$uas" "$pid" 2>/dev/null || true
    wait "$uas" "$pid" 2>/dev/null || true
done

echo
echo "sipedge memory with $CALLS calls in progress ($RATE calls/s, each held $HOLD s); RSS in kB:"
printf '%-9s %6s %6s %6s %10s %10s %14s %10s %10s  %s\n' transport calls passed failed idle_rss full_rss bytes_per_call after_rss peak_rss "load average (idle; full)"
awk -F'\t' '{ printf "%-9s %6s %6s %6s %10s %10s %14s %10s %10s  %s; %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' "$RESULTS"
echo
echo "bytes_per_call = (full_rss - idle_rss) * 1024 / calls; after_rss once every call has ended."
echo
echo "VmRSS split as RssAnon/RssFile (kB), idle, full, after:"
awk -F'\t' '{ printf "%-9s %16s %16s %16s\n", $1, $12, $13, $14 }' "$RESULTS"
echo "Logs and SIPp statistics: $WORK"
awk -F'\t' '$6 == "n/a" { bad = 1 } END { exit bad }' "$RESULTS" || { echo "call_memory: not every call was up at once in some run" >&2; exit 1; }
