//! The requests sipedge sends rather than answers: a JSON document POSTed to a receiver such
//! as the alarm webhook, and the GETs one node sends its cluster peers. Here so that only
//! this crate knows hyper.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub use hyper::StatusCode;

/// Where a request goes: `http://authority/path`, connected at `host:port`.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Host name or address to connect to (IPv6 without brackets).
    pub host: &'a str,
    pub port: u16,
    /// What the `Host` header says: the URL's authority as written.
    pub authority: &'a str,
    /// Path and query, at least `/`.
    pub path: &'a str,
}

/// One POST of `body` as `application/json` on a fresh connection; the answer's status. The
/// caller bounds the time it may take.
pub async fn post_json(target: Target<'_>, body: Bytes) -> Result<StatusCode, String> {
    let stream = TcpStream::connect((target.host, target.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = Request::post(target.path)
        .header(hyper::header::HOST, target.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("sipedge/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::CONNECTION, "close")
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("sending: {e}"));
    let outcome = match response {
        Ok(response) => {
            let status = response.status();
            // Reading the body to its end lets the connection close cleanly.
            let _ = response.into_body().collect().await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    driver.abort();
    outcome
}

/// One GET on a fresh connection with extra `headers`; the answer's status and body, which
/// may be at most `max_body` bytes (a peer that sends more is refused rather than buffered).
/// The caller bounds the time it may take.
pub async fn get(
    target: Target<'_>,
    headers: &[(&str, &str)],
    max_body: usize,
) -> Result<(StatusCode, Bytes), String> {
    let stream = TcpStream::connect((target.host, target.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    // Small requests and answers: waiting for a full segment only adds latency.
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::get(target.path)
        .header(hyper::header::HOST, target.authority)
        .header(hyper::header::ACCEPT, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("sipedge/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::CONNECTION, "close");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let outcome = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    outcome
}
