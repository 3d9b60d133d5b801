//! TCP framing over any stream cut at any places: the frames a connection sees must not
//! depend on how the bytes were split into reads, and no input makes the framer panic or
//! hold more than the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge_sip::frame::{Frame, Framer};

const MAX: usize = 2048;

/// What a connection does with a stream: each frame with its bytes, up to the first answer
/// that closes the connection. `cuts` are the lengths of the reads.
fn frames(stream: &[u8], cuts: &[usize]) -> Vec<(Frame, Vec<u8>)> {
    let mut framer = Framer::new(MAX);
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut reads = cuts.iter().copied().chain(std::iter::repeat(usize::MAX));
    loop {
        match framer.frame(&buf) {
            Frame::Incomplete => {
                // Waiting for more is only right while less than a cap is buffered.
                assert!(buf.len() < MAX, "waiting with {} bytes buffered", buf.len());
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
                assert!(
                    len > 0 && len <= buf.len(),
                    "{f:?} of a {}-byte buffer",
                    buf.len()
                );
                out.push((f, buf.drain(..len).collect()));
            }
            f @ (Frame::TooLarge | Frame::Invalid(_)) => {
                out.push((f, Vec::new()));
                return out;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte says how many read lengths follow; the rest is the stream.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let cuts: Vec<usize> = cuts.iter().map(|&c| usize::from(c)).collect();
    let whole = frames(stream, &[]);
    let split = frames(stream, &cuts);
    let byte_by_byte = frames(stream, &vec![1; stream.len()]);
    assert_eq!(split, whole, "reads {cuts:?} framed differently");
    assert_eq!(byte_by_byte, whole, "one byte per read framed differently");
});
