#!/usr/bin/env bash
# SIPp load ramp through a SIP proxy: sipedge side by side with Kamailio (stateless,
# benches/kamailio/kamailio.cfg), over UDP and TCP, in one run.
#
# For each transport, every proxy runs at once on a port of its own: a SIPp UAS (built-in
# `uas`) plays the Sipserver on 127.0.0.2:PORT, the proxy listens on 127.0.0.1:PORT and
# forwards there, and a SIPp UAC (built-in `uac`) places calls through it at each rate of the
# ramp, the proxies taking turns at each rate (so a ratio compares steps seconds, not
# minutes, apart; the order is reversed every other run). Each step is bounded by
# STEP_SECONDS and MAX_CALLS; the ramp of a proxy/transport stops when more than 5% of a
# step's calls fail (a few failures on a busy machine do not end it, but they do disqualify
# the step from "clean"). Reported per step: calls passed and failed, the rate achieved, and the proxy's
# CPU time per call (utime+stime of the proxy's processes from /proc, before and after the
# step, divided by the calls). Summary: the highest rate with 0 failed calls, the highest
# clean one (0 failed, mean INVITE->200 at most 100 ms, at least 90% of the rate achieved), the
# highest with at most 0.1% failed (on a loaded machine a multi-worker UDP relay reorders a
# few 180/200 pairs, which SIPp's built-in uac counts as failed calls), and the CPU per call at
# 1000 calls/s.
#
# Usage: benches/sip_load.sh            (whole run, under ~10 minutes)
# Environment (all optional):
#   PROXIES="kamailio sipedge"   TRANSPORTS="udp tcp"   RATES="250 500 1000 2000 4000"
#   STEP_SECONDS=10   MAX_CALLS=5000   RUNS=1 (whole ramp repeated; the comparison table
#   gives each cell's median over the runs, and sipedge's CPU per call as a ratio of Kamailio's)
#   SIPEDGE_BIN=target/release/sipedge   (built with `cargo build --release` if missing)
#   KAMAILIO_WORKERS=2   (Kamailio UDP receivers / TCP workers)
# Needs: sipp (Debian sip-tester), kamailio, ss (iproute2). Everything stays on loopback.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PROXIES=${PROXIES:-"kamailio sipedge"}
TRANSPORTS=${TRANSPORTS:-"udp tcp"}
RATES=${RATES:-"250 500 1000 2000 4000"}
STEP_SECONDS=${STEP_SECONDS:-10}
MAX_CALLS=${MAX_CALLS:-5000}
RUNS=${RUNS:-1}
SIPEDGE_BIN=${SIPEDGE_BIN:-$ROOT/target/release/sipedge}
KAMAILIO_WORKERS=${KAMAILIO_WORKERS:-2}
# SIPp's own socket buffers: with the default (~200 KiB) the SIPp UAS drops datagrams on a
# busy machine (seen in /proc/net/udp), and the ramp measures SIPp instead of the proxy.
SIPP_BUFFER=${SIPP_BUFFER:-4194304}
CLK_TCK=$(getconf CLK_TCK)

for tool in sipp ss; do
    command -v "$tool" >/dev/null || { echo "sip_load: '$tool' not on PATH (sipp: apt-get install sip-tester)" >&2; exit 2; }
done

BENCH=sip_load
# shellcheck source=support/harness.sh
. "$ROOT/benches/support/harness.sh"

# utime+stime, in clock ticks, of a process and its direct children (Kamailio's workers).
cpu_ticks() {
    local total=0 p fields
    for p in "$1" $(pgrep -P "$1" || true); do
        fields=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        # After the command name: state is field 3, utime 14, stime 15 (1-based in stat).
        set -- $fields
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}

start_kamailio() { # port -> pid
    command -v kamailio >/dev/null || { echo "sip_load: kamailio not on PATH (apt-get install kamailio)" >&2; return 1; }
    kamailio -DD -E -f "$ROOT/benches/kamailio/kamailio.cfg" \
        -A 'UPSTREAM_HOST="127.0.0.2"' -A "WORKERS=$KAMAILIO_WORKERS" \
        -l "udp:127.0.0.1:$1" -l "tcp:127.0.0.1:$1" -Y "$WORK" -P "$WORK/kamailio.pid" \
        >"$WORK/kamailio-$1.log" 2>&1 &
    echo $!
}

RESULTS="$WORK/results.tsv"
SUMMARY="$WORK/summary.tsv"
: >"$RESULTS"
: >"$SUMMARY"

# One step: RATE calls/s through PROXY (pid PID, port PORT, its SIPp UAS UAS) over TRANSPORT;
# appends its row to $RESULTS and prints its failed calls and the calls it placed. Runs in a subshell of its own, so
# that `times` counts the SIPp UAC's CPU (with a few short commands around it).
step() { # proxy pid port uas transport t rate run
    local proxy=$1 pid=$2 port=$3 uas=$4 transport=$5 t=$6 rate=$7 run=$8
    local uas_before uas_after sipp_pct
    local calls=$((rate * STEP_SECONDS))
    [ "$calls" -gt "$MAX_CALLS" ] && calls=$MAX_CALLS
    local name="$proxy-$transport-$rate-$run"
    local stats="$WORK/uac-$name.csv" before after start end ok failed rtt missing achieved cpu_us
    before=$(cpu_ticks "$pid")
    uas_before=$(cpu_ticks "$uas")
    start=$(date +%s%N)
    sipp -sn uac "127.0.0.1:$port" -t "$t" -buff_size "$SIPP_BUFFER" -i 127.0.0.1 -p "$(free_port)" -bind_local \
        -mi 127.0.0.1 -r "$rate" -m "$calls" -nostdin -max_socket 1000 \
        -timeout "$((STEP_SECONDS * 2 + 10))s" -timeout_error \
        -trace_stat -stf "$stats" -fd 1 -trace_err -error_file "$WORK/uac-$name.errors" \
        >"$WORK/uac-$name.log" 2>&1 || true
    end=$(date +%s%N)
    after=$(cpu_ticks "$pid")
    uas_after=$(cpu_ticks "$uas")
    # The two SIPp processes' CPU over the step, in % of one core: the box's bound (2 cores)
    # is near once the two SIPp and the proxy together approach 200.
    # `times` into a file: in a pipe or a command substitution it would run in a fork, which
    # has no children of its own to report.
    times >"$WORK/times-$name"
    sipp_pct=$(awk -v ticks="$((uas_after - uas_before))" -v hz="$CLK_TCK" -v ns="$((end - start))" '
        NR == 2 { split($1 " " $2, t, /[ms ]+/); uac = t[1] * 60 + t[2] + t[3] * 60 + t[4] }
        END { printf "%.0f", (uac + ticks / hz) / (ns / 1e9) * 100 }' "$WORK/times-$name")
    # Cumulative counters from the last row of SIPp's statistics file; ResponseTime1 is
    # the built-in uac's INVITE->200 (its rtd), as HH:MM:SS:usec, turned into ms.
    read -r ok failed rtt < <(awk -F';' 'NR==1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { ok = $col["SuccessfulCall(C)"]; failed = $col["FailedCall(C)"]; rt = $col["ResponseTime1(C)"] }
        END { n = split(rt, f, ":"); ms = n == 4 ? ((f[1] * 60 + f[2]) * 60 + f[3]) * 1e3 + f[4] / 1e3 : -1
              printf "%d %d %.1f\n", ok, failed, ms }' "$stats" 2>/dev/null || echo "0 0 -1")
    missing=$((calls - ok - failed))
    [ "$missing" -gt 0 ] && failed=$((failed + missing))
    achieved=$(awk -v n="$ok" -v ns="$((end - start))" 'BEGIN { printf "%.0f", n / (ns / 1e9) }')
    cpu_us=$(awk -v t="$((after - before))" -v hz="$CLK_TCK" -v n="$ok" \
        'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e6 / n; else print "n/a" }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$transport" "$rate" "$calls" \
        "$ok" "$failed" "$achieved" "$cpu_us" "$rtt" "$run" "$sipp_pct" | tee -a "$RESULTS" >&2
    echo "$failed $calls"
}

# The proxies of one transport run side by side, each with its own SIPp UAS, and take turns
# at every rate of the ramp (in the listed order in odd runs, reversed in even ones), so that
# a machine whose speed drifts during the run moves both sides of a ratio alike.
for run in $(seq "$RUNS"); do
    order=$PROXIES
    [ $((run % 2)) -eq 0 ] && order=$(printf '%s\n' $PROXIES | tac | xargs)
    for transport in $TRANSPORTS; do
        case $transport in udp) t=u1 ;; tcp) t=t1 ;; *) echo "unknown transport $transport" >&2; exit 2 ;; esac
        declare -A PID_OF=() PORT_OF=() UAS_OF=() BEST=() CLEAN=() NEAR=() AT_1000=() DONE=()
        for proxy in $order; do
            port=$(free_port)
            if ! pid=$(start_"$proxy" "$port") || ! wait_listening "$pid" "$port"; then
                echo "sip_load: $proxy did not start on 127.0.0.1:$port; see $WORK" >&2
                printf '%s\t%s\tn/a\tn/a\tn/a\tn/a\n' "$proxy" "$transport" >>"$SUMMARY"
                continue
            fi
            PIDS+=("$pid")
            sipp -sn uas -t "$t" -buff_size "$SIPP_BUFFER" -i 127.0.0.2 -p "$port" -bind_local -mi 127.0.0.2 -nostdin \
                -max_socket 1000 >"$WORK/uas-$proxy-$transport-$run.log" 2>&1 &
            UAS_OF[$proxy]=$!
            PIDS+=("$!")
            PID_OF[$proxy]=$pid
            PORT_OF[$proxy]=$port
            BEST[$proxy]=0
            CLEAN[$proxy]=0
            NEAR[$proxy]=0
            AT_1000[$proxy]=n/a
        done
        sleep 0.5
        for rate in $RATES; do
            for proxy in $order; do
                [ -n "${PID_OF[$proxy]:-}" ] && [ -z "${DONE[$proxy]:-}" ] || continue
                pid=${PID_OF[$proxy]}
                read -r failed calls <<<"$(step "$proxy" "$pid" "${PORT_OF[$proxy]}" "${UAS_OF[$proxy]}" \
                    "$transport" "$t" "$rate" "$run")"
                [ "$rate" = 1000 ] && AT_1000[$proxy]=$(tail -n 1 "$RESULTS" | cut -f8)
                [ "$failed" -eq 0 ] && BEST[$proxy]=$rate
                if [ "$failed" -eq 0 ] && tail -n 1 "$RESULTS" | awk -F'\t' -v r="$rate" \
                    '{ exit !($9 >= 0 && $9 <= 100 && $7 * 10 >= r * 9) }'; then
                    CLEAN[$proxy]=$rate
                fi
                [ $((failed * 1000)) -le "$calls" ] && NEAR[$proxy]=$rate
                if [ $((failed * 20)) -gt "$calls" ] || ! kill -0 "$pid" 2>/dev/null; then DONE[$proxy]=1; fi
            done
        done
        for proxy in $order; do
            [ -n "${PID_OF[$proxy]:-}" ] || continue
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$transport" "${BEST[$proxy]}" "${CLEAN[$proxy]}" "${NEAR[$proxy]}" \
                "${AT_1000[$proxy]}" >>"$SUMMARY"
            kill -TERM "${UAS_OF[$proxy]}" "${PID_OF[$proxy]}" 2>/dev/null || true
            wait "${UAS_OF[$proxy]}" "${PID_OF[$proxy]}" 2>/dev/null || true
        done
        unset PID_OF PORT_OF UAS_OF BEST CLEAN NEAR AT_1000 DONE
    done
done

echo
echo "Per step (rate = target calls/s; achieved = passed calls / wall time of the step, which"
echo "includes waiting out SIPp's timeout when a call got stuck; invite200_ms is SIPp's mean"
echo "INVITE->200, counted in whole ms, so 0.0 means under 1 ms: benches/relay_latency.sh"
echo "measures it, and each relayed message's time through the proxy, from a capture;"
echo "sipp_cpu% is the two SIPp processes' CPU over the step, in % of one core of $(nproc)):"
printf '%-9s %-9s %6s %6s %6s %7s %9s %12s %12s %4s %9s\n' proxy transport rate calls passed failed achieved cpu_us/call invite200_ms run sipp_cpu%
awk -F'\t' '{ printf "%-9s %-9s %6s %6s %6s %7s %9s %12s %12s %4s %9s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' "$RESULTS"
echo
echo "Comparison, median over $RUNS run(s) of CPU us/call; ratio = sipedge / kamailio:"
printf '%-9s %6s %10s %10s %7s\n' transport rate kamailio sipedge ratio
for transport in $TRANSPORTS; do
    for rate in $RATES; do
        med() { awk -F'\t' -v p="$1" -v t="$transport" -v r="$rate" '$1 == p && $2 == t && $3 == r && $8 != "n/a" { print $8 }' \
            "$RESULTS" | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "n/a" }'; }
        k=$(med kamailio)
        e=$(med sipedge)
        ratio=$(awk -v k="$k" -v e="$e" 'BEGIN { if (k + 0 > 0 && e + 0 > 0) printf "%.2f", e / k; else print "n/a" }')
        printf '%-9s %6s %10s %10s %7s\n' "$transport" "$rate" "$k" "$e" "$ratio"
    done
done
echo
echo "Summary:"
printf '%-9s %-9s %14s %12s %16s %22s\n' proxy transport "0 failed (c/s)" "clean (c/s)" "<=0.1% failed" "cpu_us/call @1000 c/s"
awk -F'\t' '{ printf "%-9s %-9s %14s %12s %16s %22s\n", $1, $2, $3, $4, $5, $6 }' "$SUMMARY"
echo
echo "Logs and SIPp statistics: $WORK"
