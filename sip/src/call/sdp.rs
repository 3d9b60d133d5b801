//! Just enough SDP to tell audio from video calls (SPEC §5 `call_type`).

/// Whether a body is SDP, from its Content-Type: `Some(has video)` when it is, `None` when
/// the message carries no SDP (so that it is neither an offer nor an answer).
pub fn sdp_video(content_type: Option<&str>, body: &[u8]) -> Option<bool> {
    let media_type = content_type?.split(';').next()?.trim();
    (media_type.eq_ignore_ascii_case("application/sdp") && !body.is_empty())
        .then(|| has_video(body))
}

/// Whether an SDP body has an `m=video` line with a non-zero port.
///
/// Works on bytes so that a non-UTF-8 body is harmless, and accepts LF, CRLF or bare CR line
/// endings since terminals are not all strict. A port of 0 (RFC 3264 §5.1) declines the
/// stream, so only a port with a non-zero digit counts; `port/count` forms are accepted.
pub fn has_video(body: &[u8]) -> bool {
    body.split(|&b| b == b'\n' || b == b'\r').any(|line| {
        line.strip_prefix(b"m=video ").is_some_and(|rest| {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit());
            let mut any = false;
            let mut nonzero = false;
            for &d in digits {
                any = true;
                nonzero |= d != b'0';
            }
            any && nonzero
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &[u8], expected: bool) {
        assert_eq!(
            has_video(body),
            expected,
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }

    #[test]
    fn video_lines() {
        let cases: &[(&[u8], bool)] = &[
            (
                b"v=0\r\nm=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\n",
                true,
            ),
            (
                b"v=0\nm=audio 4000 RTP/AVP 0\nm=video 4002 RTP/AVP 96\n",
                true,
            ),
            (b"v=0\rm=video 4002 RTP/AVP 96", true),
            (b"m=video 4002/2 RTP/AVP 96", true),
            (b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n", false),
            (b"v=0\r\nm=video 0 RTP/AVP 96\r\n", false),
            (b"v=0\r\nm=video 000 RTP/AVP 96\r\n", false),
            (b"v=0\r\nm=video RTP/AVP 96\r\n", false),
            (b"v=0\r\nm=video", false),
            (b"v=0\r\na=x:m=video 4002\r\n", false),
            (b"v=0\r\n m=video 4002 RTP/AVP 96\r\n", false),
            (b"\xff\xfe\x00m=video 1\n", false),
            (
                b"\xff\xfe\x00\nm=video 99999999999999999999999 RTP/AVP 96\n",
                true,
            ),
            (b"", false),
        ];
        for &(body, expected) in cases {
            check(body, expected);
        }
    }

    #[test]
    fn only_sdp_bodies_count() {
        let video = b"v=0\r\nm=video 4002 RTP/AVP 96\r\n".as_slice();
        let cases: &[(Option<&str>, &[u8], Option<bool>)] = &[
            (Some("application/sdp"), video, Some(true)),
            (Some("Application/SDP; charset=utf-8"), video, Some(true)),
            (
                Some("application/sdp"),
                b"v=0\r\nm=audio 1 RTP/AVP 0\r\n",
                Some(false),
            ),
            (Some("application/sdp"), b"", None),
            (Some("text/plain"), video, None),
            (None, video, None),
        ];
        for &(ct, body, expected) in cases {
            assert_eq!(sdp_video(ct, body), expected, "{ct:?}");
        }
    }
}
