#!/usr/bin/env python3
"""Relay latency from a loopback capture, for benches/relay_latency.sh.

Input (stdin): the output of
  tshark -r CAPTURE -n -Y sip -T fields -E separator=/t -E occurrence=a -E aggregator=, \
    -e frame.time_epoch -e ip.src -e ip.dst -e udp.srcport -e tcp.srcport \
    -e udp.dstport -e tcp.dstport -e sip.Call-ID -e sip.CSeq -e sip.Method -e sip.Status-Code
One row per frame; a TCP frame can carry several SIP messages, whose fields then come as
comma-separated lists in message order. In one direction of a connection every message is a
request or every one a response (the UAC and the proxy's side toward the UAS only send
requests, the UAS only responses, ...), so a frame's Method list or its Status-Code list has
one entry per Call-ID; a frame where neither does is counted as "unaligned" and skipped.

Topology (loopback): the UAC is on 127.0.0.1, sipedge on 127.0.0.1:PORT (and, over TCP, an
ephemeral 127.0.0.1 port toward the UAS), the UAS on 127.0.0.2:PORT.

--mode proxy: a message between 127.0.0.1 and 127.0.0.1 is on the UAC leg (the end with port
PORT is sipedge), one with 127.0.0.2 on it on the UAS leg. A message entering sipedge is
paired with the same message leaving it in the same direction, matched by (Call-ID, CSeq,
method or status, direction); several copies of one key (UDP retransmissions) pair in order.
Reported per kind: pairs, unmatched copies in and out, percentiles of out - in.

Both modes: INVITE->200 at the UAC: first INVITE sent by the UAC (source 127.0.0.1, not
sipedge) to the first 200 for it received by the UAC, per (Call-ID, CSeq number).

Output: a human-readable table on stdout, and with --tsv FILE one line per kind appended as
label, kind, matched, unmatched_in, unmatched_out, negative, p50, p90, p99, p99.9, max (us).
"""

import argparse
import math
import sys
from collections import defaultdict

KINDS = ["INVITE", "180 INVITE", "200 INVITE", "ACK", "BYE", "200 BYE"]
UAS_IP = "127.0.0.2"


def ns(epoch):
    """'1700000000.123456789' -> integer nanoseconds (a float would round to ~0.25 us)."""
    sec, _, frac = epoch.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def pct(sorted_values, p):
    """Nearest-rank percentile of a sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(values):
    values.sort()
    return [pct(values, p) for p in (50, 90, 99, 99.9)] + [values[-1] if values else None]


def fmt_us(v):
    return "-" if v is None else f"{v / 1000:.1f}"


def messages(lines, stats):
    """Yield (t_ns, src, sport, dst, dport, call_id, cseq_num, kind) per SIP message."""
    for line in lines:
        f = line.rstrip("\n").split("\t")
        if len(f) < 11:
            stats["short_rows"] += 1
            continue
        t, src, dst = f[0], f[1], f[2]
        sport = f[3] or f[4]
        dport = f[5] or f[6]
        call_ids = f[7].split(",") if f[7] else []
        cseqs = f[8].split(",") if f[8] else []
        methods = f[9].split(",") if f[9] else []
        statuses = f[10].split(",") if f[10] else []
        n = len(call_ids)
        if n == 0 or len(cseqs) != n:
            stats["unaligned_frames"] += 1
            continue
        if len(methods) == n and not statuses:
            firsts = methods
            request = True
        elif len(statuses) == n and not methods:
            firsts = statuses
            request = False
        else:
            stats["unaligned_frames"] += 1
            continue
        if n > 1:
            stats["multi_message_frames"] += 1
        when = ns(t)
        for call_id, cseq, first in zip(call_ids, cseqs, firsts):
            num, _, method = cseq.strip().partition(" ")
            method = method.strip()
            kind = method if request else f"{first} {method}"
            stats["messages"] += 1
            yield when, src, sport, dst, dport, call_id.strip(), num, kind


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["proxy", "direct"], required=True)
    ap.add_argument("--port", required=True, help="sipedge's (proxy) or the UAS's (direct) port")
    ap.add_argument("--label", default="")
    ap.add_argument("--tsv")
    args = ap.parse_args()

    stats = defaultdict(int)
    ins = defaultdict(list)   # (call_id, cseq, kind, flow) -> [t]
    outs = defaultdict(list)
    invite_sent = {}          # (call_id, cseq) -> first INVITE from the UAC
    ok_received = {}          # (call_id, cseq) -> first 200 INVITE to the UAC

    for when, src, sport, dst, dport, call_id, num, kind in messages(sys.stdin, stats):
        if args.mode == "proxy":
            if UAS_IP in (src, dst):
                uac_leg = False
                entering = dst != UAS_IP          # from the UAS into sipedge
                flow = "up" if entering else "down"
            else:
                uac_leg = True
                entering = dport == args.port     # from the UAC into sipedge:PORT
                flow = "down" if entering else "up"
            key = (call_id, num, kind, flow)
            (ins if entering else outs)[key].append(when)
            from_uac = uac_leg and entering
            to_uac = uac_leg and not entering
        else:
            from_uac = src != UAS_IP
            to_uac = dst != UAS_IP
        if from_uac and kind == "INVITE":
            invite_sent.setdefault((call_id, num), when)
        elif to_uac and kind == "200 INVITE":
            ok_received.setdefault((call_id, num), when)

    rows = []
    if args.mode == "proxy":
        per_kind = defaultdict(lambda: {"d": [], "ui": 0, "uo": 0, "neg": 0})
        for key in set(ins) | set(outs):
            kind = key[2]
            a, b = ins.get(key, []), outs.get(key, [])
            a.sort()
            b.sort()
            k = per_kind[kind]
            for t_in, t_out in zip(a, b):
                if t_out < t_in:
                    k["neg"] += 1
                k["d"].append(t_out - t_in)
            k["ui"] += max(0, len(a) - len(b))
            k["uo"] += max(0, len(b) - len(a))
        overall = {"d": [], "ui": 0, "uo": 0, "neg": 0}
        for kind in KINDS:
            k = per_kind.get(kind, {"d": [], "ui": 0, "uo": 0, "neg": 0})
            for f in ("ui", "uo", "neg"):
                overall[f] += k[f]
            overall["d"].extend(k["d"])
            rows.append((kind, k))
        rows.append(("all six", overall))
        others = sorted(set(per_kind) - set(KINDS))
        for kind in others:
            rows.append((f"({kind})", per_kind[kind]))

    rtt = [ok_received[k] - invite_sent[k] for k in invite_sent if k in ok_received]
    rtt_row = {"d": rtt, "ui": len(invite_sent) - len(rtt), "uo": len(set(ok_received) - set(invite_sent)), "neg": 0}
    rows.append(("INVITE->200 @uac", rtt_row))

    print(f"{args.label}: {stats['messages']} SIP messages in the capture, "
          f"{stats['multi_message_frames']} frames with several, "
          f"{stats['unaligned_frames'] + stats['short_rows']} frames skipped (unaligned)")
    print(f"  {'kind':<18} {'matched':>8} {'unm_in':>7} {'unm_out':>7} {'neg':>4} "
          f"{'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>9}  (us)")
    out_lines = []
    for kind, k in rows:
        s = summary(k["d"])
        print(f"  {kind:<18} {len(k['d']):>8} {k['ui']:>7} {k['uo']:>7} {k['neg']:>4} "
              + " ".join(f"{fmt_us(v):>8}" for v in s[:4]) + f" {fmt_us(s[4]):>9}")
        out_lines.append("\t".join([args.label, kind, str(len(k["d"])), str(k["ui"]), str(k["uo"]),
                                    str(k["neg"])] + [fmt_us(v) for v in s]))
    if args.tsv:
        with open(args.tsv, "a") as f:
            f.write("\n".join(out_lines) + "\n")


if __name__ == "__main__":
    main()
