//! `/api/events` (server-sent events) read in the background, each event kept as received.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// One server-sent event.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// `id:`, which a client gives back as `Last-Event-ID` to resume.
    pub id: Option<String>,
    /// `event:`, e.g. `call.ended` or `alarm.raised`.
    pub name: String,
    /// `data:`, a JSON text.
    pub data: String,
}

/// The events received so far on one open stream, which ends with the test.
#[derive(Debug)]
pub struct Events {
    /// Filled by the reading thread.
    got: Arc<Mutex<Vec<Event>>>,
}

impl Events {
    /// Opens `/api/events` on `api` (from `last_id` when given) and waits until the stream
    /// has said hello.
    pub fn open(api: SocketAddr, last_id: Option<&str>) -> Events {
        let mut stream = TcpStream::connect(api).unwrap_or_else(|e| panic!("connect {api}: {e}"));
        let resume = last_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET /api/events HTTP/1.1\r\nHost: {api}\r\nAccept: text/event-stream\r\n{resume}\r\n"
        )
        .expect("send the events request");
        let got = Arc::new(Mutex::new(Vec::new()));
        let (hello_tx, hello_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&got);
        std::thread::spawn(move || {
            let mut current = Event::default();
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                // Chunked framing puts the size on a line of its own; SSE fields have a colon.
                if line.starts_with(": sipedge events") {
                    let _ = hello_tx.send(());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    current.id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    current.name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    current.data.push_str(v);
                } else if line.is_empty()
                    && !current.name.is_empty()
                    && let Ok(mut got) = sink.lock()
                {
                    got.push(std::mem::take(&mut current));
                }
            }
        });
        hello_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("the event stream of {api} did not open"));
        Events { got }
    }

    /// Every event so far, in order.
    pub fn all(&self) -> Vec<Event> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The data of each `name` event so far, as JSON, in order.
    pub fn data(&self, name: &str) -> Vec<Value> {
        self.all()
            .iter()
            .filter(|e| e.name == name)
            .map(|e| {
                serde_json::from_str(&e.data)
                    .unwrap_or_else(|err| panic!("{name} data is not JSON ({err}): {}", e.data))
            })
            .collect()
    }
}
