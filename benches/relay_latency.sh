#!/usr/bin/env bash
# Added latency of a message relayed through sipedge, measured from a packet capture.
#
# SIPp's own response times have 1 ms resolution and a loopback INVITE->200 takes less than
# that, so the time is taken from a capture on `lo` instead: dumpcap records the run while a
# SIPp UAC (built-in `uac`, 127.0.0.1) calls a SIPp UAS (built-in `uas`, 127.0.0.2:PORT)
# through sipedge (127.0.0.1:PORT, upstream 127.0.0.2), at RATE calls/s. Afterwards tshark
# extracts every SIP message and benches/support/relay_latency.py pairs each message entering
# sipedge with the same message leaving it (Call-ID, CSeq, method or status, direction), and
# reports per kind (INVITE, 180, 200 INVITE, ACK, BYE, 200 BYE) and overall: pairs, unmatched,
# p50/p90/p99/p99.9/max of out - in, in microseconds.
#
# For comparison the same calls are also placed directly (UAC -> UAS, no proxy) and both
# runs report INVITE->200 at the UAC (INVITE sent to 200 received, capture timestamps at the
# UAC's port); the difference of their p99 is the latency sipedge adds to call setup (it
# covers two relayed messages, INVITE and 200, and the UAS's time in between).
#
# Capture drops (dumpcap's "received/dropped" statistics) are reported per run; a run with
# drops is flagged, since a dropped packet shows up as unmatched and can break TCP reassembly.
# Note dumpcap and SIPp share the machine with sipedge: on 2 cores the tail percentiles include
# their scheduling, as the direct run's does.
#
# Usage: benches/relay_latency.sh         (defaults: ~1-2 minutes per rate and transport)
# Environment (all optional):
#   RATE=1000 (calls/s; RATES="1000 4000" runs several)   TRANSPORTS="udp tcp"
#   DURATION=10 (seconds of calls per run; calls = rate * DURATION, at most MAX_CALLS=40000)
#   PATHS="direct sipedge"   SIPEDGE_BIN=target/release/sipedge (built if missing)
#   CAPTURE_BUFFER_MB=512 (dumpcap -B)   KEEP_PCAP=0 (1 keeps the captures in the work dir)
# Needs: sipp (Debian sip-tester), dumpcap and tshark (Wireshark), python3, ss (iproute2).
# Capturing needs root or CAP_NET_RAW for dumpcap. Everything stays on loopback.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
RATES=${RATES:-${RATE:-1000}}
TRANSPORTS=${TRANSPORTS:-"udp tcp"}
DURATION=${DURATION:-10}
MAX_CALLS=${MAX_CALLS:-40000}
PATHS=${PATHS:-"direct sipedge"}
SIPEDGE_BIN=${SIPEDGE_BIN:-$ROOT/target/release/sipedge}
CAPTURE_BUFFER_MB=${CAPTURE_BUFFER_MB:-512}
KEEP_PCAP=${KEEP_PCAP:-0}
SIPP_BUFFER=${SIPP_BUFFER:-4194304}
ANALYSE="$ROOT/benches/support/relay_latency.py"

for tool in sipp dumpcap tshark python3 ss; do
    command -v "$tool" >/dev/null || {
        echo "relay_latency: '$tool' not on PATH (sipp: apt-get install sip-tester; dumpcap, tshark: apt-get install tshark)" >&2
        exit 2
    }
done
[ -r "$ANALYSE" ] || { echo "relay_latency: $ANALYSE missing" >&2; exit 2; }

BENCH=relay_latency
# shellcheck source=support/harness.sh
. "$ROOT/benches/support/harness.sh"

TSV="$WORK/latency.tsv"
DROPS="$WORK/drops.tsv"
: >"$TSV"
: >"$DROPS"

for transport in $TRANSPORTS; do
    case $transport in udp) t=u1 ;; tcp) t=t1 ;; *) echo "relay_latency: unknown transport $transport" >&2; exit 2 ;; esac
    for rate in $RATES; do
        calls=$((rate * DURATION))
        [ "$calls" -gt "$MAX_CALLS" ] && calls=$MAX_CALLS
        for path in $PATHS; do
            label="$path-$transport-$rate"
            port=$(free_port)
            uac_port=$(free_port)
            run_pids=()
            if [ "$path" = sipedge ]; then
                if ! pid=$(start_sipedge "$port"); then
                    echo "relay_latency: could not start sipedge" >&2
                    exit 1
                fi
                PIDS+=("$pid")
                run_pids+=("$pid")
                if ! wait_listening "$pid" "$port"; then
                    echo "relay_latency: sipedge did not start on 127.0.0.1:$port; see $WORK/sipedge-$port/stderr.log" >&2
                    exit 1
                fi
                mode=proxy
                target="127.0.0.1:$port"
            elif [ "$path" = direct ]; then
                mode=direct
                target="127.0.0.2:$port"
            else
                echo "relay_latency: unknown path $path (direct, sipedge)" >&2
                exit 2
            fi
            sipp -sn uas -t "$t" -buff_size "$SIPP_BUFFER" -i 127.0.0.2 -p "$port" -bind_local -mi 127.0.0.2 -nostdin \
                -max_socket 1000 >"$WORK/uas-$label.log" 2>&1 &
            uas=$!
            PIDS+=("$uas")
            run_pids+=("$uas")

            pcap="$WORK/$label.pcapng"
            dumpcap -i lo -f "port $port or port $uac_port" -B "$CAPTURE_BUFFER_MB" -w "$pcap" \
                >"$WORK/dumpcap-$label.log" 2>&1 &
            cap=$!
            PIDS+=("$cap")
            # dumpcap says "Capturing on" before its filter is attached: the first calls would be
            # missed. Send it a probe datagram (to the UAC's port, nobody listening yet; not SIP,
            # so the analysis ignores it) until its packet counter moves.
            captured=0
            for _ in $(seq 100); do
                kill -0 "$cap" 2>/dev/null || break
                echo probe >/dev/udp/127.0.0.1/"$uac_port" 2>/dev/null || true
                if grep -q "Packets: [1-9]" "$WORK/dumpcap-$label.log" 2>/dev/null; then captured=1; break; fi
                sleep 0.1
            done
            if [ "$captured" != 1 ]; then
                echo "relay_latency: dumpcap did not start capturing (needs root or CAP_NET_RAW):" >&2
                cat "$WORK/dumpcap-$label.log" >&2
                exit 1
            fi

            load=$(cut -d' ' -f1-3 /proc/loadavg)
            echo "relay_latency: $label: $calls calls at $rate calls/s (load average $load)" >&2
            stats="$WORK/uac-$label.csv"
            sipp -sn uac "$target" -t "$t" -buff_size "$SIPP_BUFFER" -i 127.0.0.1 -p "$uac_port" -bind_local \
                -mi 127.0.0.1 -r "$rate" -m "$calls" -nostdin -max_socket 1000 \
                -timeout "$((DURATION * 2 + 20))s" -timeout_error \
                -trace_stat -stf "$stats" -fd 1 >"$WORK/uac-$label.log" 2>&1 || true
            sleep 0.5
            kill -INT "$cap" 2>/dev/null || true
            wait "$cap" 2>/dev/null || true
            # "Packets received/dropped on interface 'lo': 1234/0 (pcap:0/dumpcap:0/flushed:0/ps_ifdrop:0) (100.0%)"
            dropline=$(grep -m1 "received/dropped" "$WORK/dumpcap-$label.log" || true)
            received=$(sed -n 's|.*: \([0-9]*\)/\([0-9]*\) .*|\1|p' <<<"$dropline")
            dropped=$(sed -n 's|.*: \([0-9]*\)/\([0-9]*\) .*|\2|p' <<<"$dropline")
            [ -n "$dropped" ] || { echo "relay_latency: no capture statistics from dumpcap: $WORK/dumpcap-$label.log" >&2; dropped=unknown; }
            read -r ok failed < <(awk -F';' 'NR==1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
                { ok = $col["SuccessfulCall(C)"]; failed = $col["FailedCall(C)"] } END { printf "%d %d\n", ok, failed }' \
                "$stats" 2>/dev/null || echo "0 0")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$calls" "$ok" "$failed" "${received:-?}" "$dropped" "$load" >>"$DROPS"

            for pid in "${run_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
            for pid in "${run_pids[@]}"; do wait "$pid" 2>/dev/null || true; done

            # SDP off: every SIPp call offers the same media address, and the SDP dissector's RTP
            # conversation set-up for it grows per call, which makes tshark quadratic (over 5
            # minutes for 240,000 frames, 16 s without it). The SIP fields do not need it.
            nice -n 10 tshark -r "$pcap" -n --disable-protocol sdp -d "udp.port==$port,sip" -d "tcp.port==$port,sip" -Y sip \
                -T fields -E separator=/t -E occurrence=a -E aggregator=, \
                -e frame.time_epoch -e ip.src -e ip.dst -e udp.srcport -e tcp.srcport \
                -e udp.dstport -e tcp.dstport -e sip.Call-ID -e sip.CSeq -e sip.Method -e sip.Status-Code \
                2>"$WORK/tshark-$label.log" |
                python3 "$ANALYSE" --mode "$mode" --port "$port" --label "$label" --tsv "$TSV" \
                    >"$WORK/analysis-$label.txt"
            cat "$WORK/analysis-$label.txt" >&2
            [ "$KEEP_PCAP" = 1 ] || rm -f "$pcap"
        done
    done
done

echo
echo "Runs (calls placed / passed / failed by SIPp; capture packets received / dropped; load average at start):"
printf '%-22s %7s %7s %7s %10s %8s  %s\n' run calls passed failed captured dropped "load average"
awk -F'\t' '{ printf "%-22s %7s %7s %7s %10s %8s  %s\n", $1, $2, $3, $4, $5, $6, $7 }' "$DROPS"
if awk -F'\t' '$6 != "0" { bad = 1 } END { exit !bad }' "$DROPS"; then
    echo "WARNING: the capture dropped packets (or gave no statistics) in some runs: their unmatched counts and tails are suspect."
fi
echo
echo "Relay latency through sipedge (out - in at sipedge's ports), microseconds; a kind in parentheses"
echo "is not one of the six (e.g. sipedge's own OPTIONS probes to the upstream: out only) and not in \"all six\":"
printf '%-22s %-18s %8s %7s %7s %4s %8s %8s %8s %8s %9s\n' run kind matched unm_in unm_out neg p50 p90 p99 p99.9 max
awk -F'\t' '$2 != "INVITE->200 @uac" { printf "%-22s %-18s %8s %7s %7s %4s %8s %8s %8s %8s %9s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' "$TSV"
echo
echo "INVITE->200 at the UAC, microseconds (added_p99 = sipedge's p99 - direct's p99, added_p50 likewise,"
echo "same transport and rate; both include the SIPp UAS's own time between INVITE and 200):"
printf '%-22s %8s %7s %8s %8s %8s %8s %9s %9s %9s\n' run calls no_200 p50 p90 p99 p99.9 max added_p50 added_p99
awk -F'\t' '$2 == "INVITE->200 @uac" {
        split($1, p, "-"); key = p[2] "-" p[3]
        if (p[1] == "direct") { d50[key] = $7; d99[key] = $9 }
        rows[++n] = $0
    }
    END {
        for (i = 1; i <= n; i++) {
            split(rows[i], f, "\t"); split(f[1], p, "-"); key = p[2] "-" p[3]
            both = p[1] == "sipedge" && (key in d99) && f[9] != "-" && d99[key] != "-"
            a50 = both ? sprintf("%.1f", f[7] - d50[key]) : "-"
            a99 = both ? sprintf("%.1f", f[9] - d99[key]) : "-"
            printf "%-22s %8s %7s %8s %8s %8s %8s %9s %9s %9s\n", f[1], f[3], f[4], f[7], f[8], f[9], f[10], f[11], a50, a99
        }
    }' "$TSV"
echo
echo "Logs, SIPp statistics and analyses: $WORK"
