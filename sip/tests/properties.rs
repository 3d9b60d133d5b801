//! Properties of the relay path over generated messages, for what fuzzing cannot state:
//! the scanner reads back what a message generator wrote (compact and long header names,
//! white space around colons, comma-joined Vias, unknown headers, any body); rewriting and
//! scanning again keeps the call fields; the Via sipedge adds on a request is the one it
//! removes from the response; and a stream split at any byte frames the same.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use proptest::prelude::*;
use sipedge_sip::Metrics;
use sipedge_sip::flow::{Flow, FlowKey, Transport};
use sipedge_sip::frame::{Frame, Framer};
use sipedge_sip::relay::{Arrival, Decision, Relay, Side, Target};
use sipedge_sip::scan;

/// What a generated message is made of; the test knows every field it must read back.
#[derive(Debug, Clone)]
struct Msg {
    call_id: String,
    from_user: String,
    from_tag: String,
    to_user: String,
    to_tag: Option<String>,
    cseq: u32,
    branch: String,
    /// Vias below the terminal's own, joined on its line or on lines of their own.
    lower_vias: Vec<String>,
    join_vias: bool,
    compact: Vec<bool>,
    colon: &'static str,
    extra: Vec<(String, String)>,
    body: Vec<u8>,
}

const COLONS: [&str; 4] = [": ", ":", " : ", "\t:  "];

fn msg() -> impl Strategy<Value = Msg> {
    (
        (
            "[a-zA-Z0-9][a-zA-Z0-9.@_-]{0,40}",
            "[0-9]{1,12}",
            "[a-z0-9]{1,16}",
            "[0-9]{1,12}",
            proptest::option::of("[a-z0-9]{1,16}"),
            1u32..=(1 << 31) - 1,
            "[a-zA-Z0-9]{1,20}",
        ),
        (
            proptest::collection::vec(
                "10\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[1-9][0-9]{3}",
                0..3,
            ),
            any::<bool>(),
            proptest::collection::vec(any::<bool>(), 6),
            0..COLONS.len(),
            proptest::collection::vec(("X-[A-Za-z]{1,10}", "[ -~]{0,30}"), 0..3),
            proptest::collection::vec(any::<u8>(), 0..200),
        ),
    )
        .prop_map(
            |(
                (call_id, from_user, from_tag, to_user, to_tag, cseq, branch),
                (lower_vias, join_vias, compact, colon, extra, body),
            )| Msg {
                call_id,
                from_user,
                from_tag,
                to_user,
                to_tag,
                cseq,
                branch: format!("z9hG4bK{branch}"),
                lower_vias: lower_vias
                    .into_iter()
                    .enumerate()
                    .map(|(i, host)| format!("SIP/2.0/UDP {host};branch=z9hG4bKlow{i}"))
                    .collect(),
                join_vias,
                compact,
                colon: COLONS[colon],
                extra,
                body,
            },
        )
}

impl Msg {
    fn name(&self, i: usize, long: &'static str, short: &'static str) -> &'static str {
        if self.compact[i] { short } else { long }
    }

    fn top_via(&self) -> String {
        format!("SIP/2.0/UDP 192.168.1.20:5060;branch={};rport", self.branch)
    }

    /// The INVITE a terminal sends.
    fn invite(&self) -> Vec<u8> {
        let c = self.colon;
        let mut vias = vec![self.top_via()];
        vias.extend(self.lower_vias.iter().cloned());
        let via_name = self.name(0, "Via", "v");
        let via_lines = if self.join_vias {
            format!("{via_name}{c}{}\r\n", vias.join(", "))
        } else {
            vias.iter()
                .map(|v| format!("{via_name}{c}{v}\r\n"))
                .collect()
        };
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let mut text = format!(
            "INVITE sip:{to}@10.0.0.5 SIP/2.0\r\n{via_lines}Max-Forwards{c}70\r\n\
             {f}{c}\"Caller\" <sip:{from}@bank.example>;tag={ftag}\r\n\
             {t}{c}<sip:{to}@bank.example>{to_tag}\r\n{i}{c}{cid}\r\nCSeq{c}{cseq} INVITE\r\n",
            to = self.to_user,
            from = self.from_user,
            ftag = self.from_tag,
            cid = self.call_id,
            cseq = self.cseq,
            f = self.name(1, "From", "f"),
            t = self.name(2, "To", "t"),
            i = self.name(3, "Call-ID", "i"),
        );
        for (name, value) in &self.extra {
            text.push_str(&format!("{name}{c}{value}\r\n"));
        }
        text.push_str(&format!(
            "{}{c}{}\r\n\r\n",
            self.name(4, "Content-Length", "l"),
            self.body.len()
        ));
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

type Fields<'a> = (
    Option<&'a [u8]>,
    Option<(&'a [u8], Option<&'a [u8]>)>,
    Option<(&'a [u8], Option<&'a [u8]>)>,
    Option<u32>,
    &'a [u8],
);

fn fields<'a>(m: &scan::Message<'a>) -> Fields<'a> {
    (
        m.call_id(),
        m.from().map(|f| (f.uri, f.tag)),
        m.to().map(|t| (t.uri, t.tag)),
        m.cseq().map(|c| c.number),
        m.body(),
    )
}

const TERMINAL: &str = "203.0.113.7:40000";

fn relay() -> Relay {
    Relay {
        key: FlowKey::from_bytes(&[7; 32]).unwrap(),
        advertise_host: b"192.0.2.10".to_vec(),
        own_hosts: vec![],
        ports: "14500-14509".parse().unwrap(),
        upstream_ip: "10.0.0.5".parse().unwrap(),
        upstream_port: None,
        max_message_bytes: 65_535,
        metrics: Arc::new(Metrics::default()),
    }
}

fn arrival(src: &str, side: Side) -> Arrival {
    Arrival {
        transport: Transport::Udp,
        local_port: 14501,
        src: src.parse().unwrap(),
        conn: 0,
        side,
    }
}

/// The frames a connection takes from `stream`, read in pieces of the given lengths.
fn frames(stream: &[u8], reads: &[usize]) -> Vec<(Frame, Vec<u8>)> {
    let mut framer = Framer::new(65_535);
    let (mut buf, mut out, mut fed) = (Vec::new(), Vec::new(), 0);
    let mut reads = reads.iter().copied().chain(std::iter::repeat(usize::MAX));
    loop {
        match framer.frame(&buf) {
            Frame::Incomplete => {
                if fed == stream.len() {
                    return out;
                }
                let n = reads
                    .next()
                    .unwrap_or(usize::MAX)
                    .clamp(1, stream.len() - fed);
                buf.extend_from_slice(&stream[fed..fed + n]);
                fed += n;
            }
            f @ (Frame::Message { len } | Frame::Ping { len } | Frame::Pong { len }) => {
                out.push((f, buf.drain(..len).collect()));
            }
            f => {
                out.push((f, Vec::new()));
                return out;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_scanner_reads_back_what_was_written_and_a_rewrite_keeps_it(m in msg()) {
        let bytes = m.invite();
        let parsed = scan::parse(&bytes).unwrap();
        let from_uri = format!("sip:{}@bank.example", m.from_user);
        let to_uri = format!("sip:{}@bank.example", m.to_user);
        let want: Fields<'_> = (
            Some(m.call_id.as_bytes()),
            Some((from_uri.as_bytes(), Some(m.from_tag.as_bytes()))),
            Some((to_uri.as_bytes(), m.to_tag.as_deref().map(str::as_bytes))),
            Some(m.cseq),
            &m.body,
        );
        prop_assert_eq!(fields(&parsed), want);
        // What the relay hands call tracking reads back as the scan does, in a copy.
        let copy = bytes.clone();
        let summary = scan::Summary::of(&parsed);
        prop_assert_eq!(summary.facts(&copy), Some(parsed.facts()));
        prop_assert_eq!(parsed.vias().count(), 1 + m.lower_vias.len());
        let out = parsed
            .rewrite()
            .insert_via(b"SIP/2.0/UDP 192.0.2.10:14501;branch=z9hG4bKsE1")
            .set_top_via_received(b"203.0.113.7")
            .set_top_via_rport(40000)
            .set_max_forwards(69)
            .insert_record_route(b"<sip:tok@192.0.2.10:14501;lr>")
            .finish();
        let again = scan::parse(&out).unwrap();
        prop_assert_eq!(fields(&again), want);
        prop_assert_eq!(again.max_forwards(), Some(69));
    }

    #[test]
    fn the_via_added_on_a_request_is_the_one_removed_from_its_response(
        m in msg(),
        status in prop::sample::select(vec![100u16, 180, 183, 200, 302, 486, 503, 603]),
    ) {
        let r = relay();
        let mut forwarded = Vec::new();
        let decision = r.handle(&arrival(TERMINAL, Side::Terminal), &m.invite(), &mut forwarded);
        prop_assert!(matches!(decision, Decision::Forward { target: Target::Upstream { .. }, .. }), "{:?}", decision);
        let request = scan::parse(&forwarded).unwrap();
        let request_vias: Vec<&[u8]> = request.vias().collect();
        prop_assert_eq!(request_vias.len(), 2 + m.lower_vias.len());

        // The Sipserver answers with the request's Vias, one per line, as RFC 3261 §8.2.6 asks.
        let mut response = format!("SIP/2.0 {status} Whatever\r\n").into_bytes();
        for via in &request_vias {
            response.extend_from_slice(b"Via: ");
            response.extend_from_slice(via);
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(format!(
            "From: <sip:{}@bank.example>;tag={}\r\nTo: <sip:{}@bank.example>;tag=callee\r\n\
             Call-ID: {}\r\nCSeq: {} INVITE\r\nContent-Length: 0\r\n\r\n",
            m.from_user, m.from_tag, m.to_user, m.call_id, m.cseq
        ).as_bytes());
        let mut back = Vec::new();
        let decision = r.handle(&arrival("10.0.0.5:14501", Side::Upstream), &response, &mut back);
        let terminal = Flow {
            transport: Transport::Udp,
            local_port: 14501,
            remote: TERMINAL.parse().unwrap(),
            conn: 0,
        };
        prop_assert!(matches!(decision, Decision::Forward { target: Target::Address(f), .. } if f == terminal), "{:?}", decision);
        let relayed = scan::parse(&back).unwrap();
        let relayed_vias: Vec<&[u8]> = relayed.vias().collect();
        prop_assert_eq!(&relayed_vias[..], &request_vias[1..]);
        prop_assert_eq!(relayed.status(), Some(status));
    }

    #[test]
    fn a_stream_split_at_any_byte_frames_the_same(
        ms in proptest::collection::vec(msg(), 1..4),
        pings in proptest::collection::vec(0usize..3, 4),
    ) {
        let mut stream = Vec::new();
        for (m, ping) in ms.iter().zip(&pings) {
            stream.extend_from_slice(&b"\r\n\r\n\r\n"[..ping * 2]);
            stream.extend_from_slice(&m.invite());
        }
        let whole = frames(&stream, &[]);
        prop_assert_eq!(whole.iter().filter(|(f, _)| matches!(f, Frame::Message { .. })).count(), ms.len());
        for at in 1..stream.len() {
            prop_assert_eq!(&frames(&stream, &[at]), &whole, "split at byte {}", at);
        }
    }
}
