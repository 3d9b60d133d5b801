//! The event hub behind `/api/events` (SPEC §6, §11): whoever produces events (call tracking,
//! the monitor) publishes them here; each gets the next id and stays in a bounded replay ring,
//! so that a client reconnecting with `Last-Event-ID` gets exactly the events it missed.
//!
//! Ids start at the hub's creation time in microseconds, so a client that kept an id from a
//! previous run of sipedge is seen as too far behind (it gets a `reset`) rather than as ahead.
//!
//! Only a client that was connected to this hub has an id to replay from, so events are held
//! only while a stream is open or one closed less than the ring's age ago; otherwise nobody
//! could be sent them (a returning client would find the oldest it missed expired, and get a
//! `reset` either way), and holding each call event of a node nobody watches was 4 % of its
//! CPU under load.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::watch;

/// Events kept for replay at most.
const RING_LEN: usize = 1024;
/// Events older than this are dropped from the replay ring.
const RING_AGE: Duration = Duration::from_secs(300);
/// A comment line this often keeps proxies and the browser from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// What a browser waits before reconnecting.
const RETRY: Duration = Duration::from_secs(2);

/// How an event's JSON is made: called at most once, when a client first needs it.
type Render = Box<dyn FnOnce() -> String + Send>;

/// One published event.
pub struct HubEvent {
    /// Increasing; what the client sends back as `Last-Event-ID`.
    pub id: u64,
    /// `call.started`, `alarm.raised`, … (SPEC §11).
    pub name: String,
    /// The JSON text of the event, rendered once for every client, and only when one is sent
    /// it: under load most call events are held for replay and dropped unread, and rendering
    /// them (times in the node's zone, JSON) cost 5 % of sipedge's CPU.
    data: LazyLock<String, Render>,
}

impl HubEvent {
    /// The JSON text of the event.
    pub fn data(&self) -> &str {
        &self.data
    }
}

impl std::fmt::Debug for HubEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubEvent")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for HubEvent {
    fn eq(&self, other: &Self) -> bool {
        (self.id, &self.name, self.data()) == (other.id, &other.name, other.data())
    }
}

impl Eq for HubEvent {}

/// What a (re)connecting client is sent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The client missed events that are no longer held: it must reload its state.
    pub reset: bool,
    /// The held events after the client's last one.
    pub events: Vec<Arc<HubEvent>>,
}

#[derive(Debug)]
struct Ring {
    /// The id the next event gets.
    next_id: u64,
    /// Held events, oldest first, with the time each was published.
    held: VecDeque<(Instant, Arc<HubEvent>)>,
    /// Set by [`EventHub::close`]: streams end so that the server can drain.
    closed: bool,
    /// When the last stream closed.
    last_left: Option<Instant>,
}

impl Ring {
    /// Whether a client could ask for an event published now: one is connected (`open`
    /// streams), or one left within the ring's age.
    fn replayable(&self, open: usize, now: Instant) -> bool {
        open > 0
            || self
                .last_left
                .is_some_and(|at| now.saturating_duration_since(at) <= RING_AGE)
    }

    fn expire(&mut self, now: Instant) {
        while self.held.len() > RING_LEN
            || self
                .held
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RING_AGE)
        {
            self.held.pop_front();
        }
    }

    /// The events after `last`, and whether some in between are gone. `None` is a new
    /// client, which starts from now.
    fn after(&self, last: Option<u64>) -> Replay {
        let Some(last) = last else {
            return Replay {
                reset: false,
                events: Vec::new(),
            };
        };
        // Held ids are consecutive and end at next_id - 1; the oldest still held is
        // next_id - held.len().
        let oldest = self.next_id - self.held.len() as u64;
        let in_window = last.saturating_add(1) >= oldest && last < self.next_id;
        let skip = if in_window {
            (last + 1 - oldest) as usize
        } else {
            0
        };
        Replay {
            reset: !in_window,
            events: self
                .held
                .iter()
                .skip(skip)
                .map(|(_, e)| e.clone())
                .collect(),
        }
    }
}

/// Shared by producers and every `/api/events` client; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventHub {
    /// The ring, under a lock held only to push or copy out a few `Arc`s.
    ring: Arc<Mutex<Ring>>,
    /// Carries the last id published, waking the streams.
    latest: watch::Sender<u64>,
    /// Streams open now, the most allowed (`api.max_sse_clients`), and clients refused.
    clients: Arc<ClientCount>,
}

#[derive(Debug)]
struct ClientCount {
    open: AtomicUsize,
    max: AtomicUsize,
    refused: AtomicU64,
}

/// Held by an open stream; gives its place back when the stream is dropped.
struct ClientSlot {
    count: Arc<ClientCount>,
    ring: Arc<Mutex<Ring>>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        // Under the ring's lock, which publishers take before they read `open`: one that
        // sees this stream gone also sees when it left.
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.last_left = Some(Instant::now());
        self.count.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every place for a stream is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyClients(pub usize);

impl Default for EventHub {
    fn default() -> Self {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        EventHub::starting_at(start)
    }
}

impl EventHub {
    fn starting_at(first_id: u64) -> Self {
        EventHub {
            ring: Arc::new(Mutex::new(Ring {
                next_id: first_id.max(1),
                held: VecDeque::new(),
                closed: false,
                last_left: None,
            })),
            latest: watch::Sender::new(0),
            clients: Arc::new(ClientCount {
                open: AtomicUsize::new(0),
                max: AtomicUsize::new(usize::MAX),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Sets how many streams may be open at once; open ones past a lowered cap stay.
    pub fn set_max_clients(&self, max: usize) {
        self.clients.max.store(max, Ordering::Relaxed);
    }

    /// Streams open now.
    pub fn clients(&self) -> usize {
        self.clients.open.load(Ordering::Relaxed)
    }

    /// Streams refused because every place was taken.
    pub fn refused_clients(&self) -> u64 {
        self.clients.refused.load(Ordering::Relaxed)
    }

    fn take_slot(&self) -> Result<ClientSlot, TooManyClients> {
        let count = &self.clients;
        let max = count.max.load(Ordering::Relaxed);
        count
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| ClientSlot {
                count: count.clone(),
                ring: self.ring.clone(),
            })
            .map_err(|_| {
                count.refused.fetch_add(1, Ordering::Relaxed);
                TooManyClients(max)
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes an event to every client; returns its id.
    pub fn publish(&self, name: &str, data: &impl serde::Serialize) -> u64 {
        let data = to_json(data);
        self.publish_with(name, move || data)
    }

    /// Publishes an event whose JSON `render` makes when a client is first sent it (never,
    /// if no client is); returns its id. Not held when no client could ask for it.
    pub fn publish_with(
        &self,
        name: &str,
        render: impl FnOnce() -> String + Send + 'static,
    ) -> u64 {
        let event = |id| HubEvent {
            id,
            name: name.to_owned(),
            data: LazyLock::new(Box::new(render) as Render),
        };
        let id = {
            let mut ring = self.lock();
            let id = ring.next_id;
            ring.next_id += 1;
            let now = Instant::now();
            if ring.replayable(self.clients(), now) {
                ring.held.push_back((now, Arc::new(event(id))));
            }
            ring.expire(now);
            id
        };
        self.latest.send_replace(id);
        id
    }

    /// What a client that last saw `last` (its `Last-Event-ID`) must be sent now.
    pub fn replay(&self, last: Option<u64>) -> Replay {
        self.since(last).0
    }

    /// Ends every stream (on shutdown, so that connections can drain).
    pub fn close(&self) {
        self.lock().closed = true;
        self.latest.send_modify(|_| {});
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The `/api/events` response for a client that last saw `last`, unless every place
    /// for a stream is taken.
    pub fn sse(
        &self,
        last: Option<u64>,
    ) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, TooManyClients> {
        let slot = self.take_slot()?;
        Ok(Sse::new(self.stream(last, slot)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
    }

    fn stream(
        &self,
        last: Option<u64>,
        slot: ClientSlot,
    ) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
        // Subscribing before reading the ring means no publish falls between the two.
        let wake = self.latest.subscribe();
        let (first, seen) = self.since(last);
        let mut pending: VecDeque<Event> = VecDeque::new();
        pending.push_back(if first.reset {
            reset_event("events since Last-Event-ID are no longer held; reload").retry(RETRY)
        } else {
            Event::default().retry(RETRY).comment("sipedge events")
        });
        pending.extend(first.events.iter().map(|e| to_sse(e)));
        let state = (self.clone(), wake, seen, pending, slot);
        futures_util::stream::unfold(
            state,
            |(hub, mut wake, mut seen, mut pending, slot)| async move {
                loop {
                    if let Some(event) = pending.pop_front() {
                        return Some((Ok(event), (hub, wake, seen, pending, slot)));
                    }
                    let (next, upto) = hub.since(Some(seen));
                    seen = upto;
                    if next.reset {
                        pending.push_back(reset_event("this client fell behind; reload"));
                    }
                    pending.extend(next.events.iter().map(|e| to_sse(e)));
                    // Closing ends the stream once what was published before is sent.
                    if pending.is_empty() && (hub.is_closed() || wake.changed().await.is_err()) {
                        return None;
                    }
                }
            },
        )
    }

    /// The replay after `last`, and the id the client has then seen or skipped up to.
    fn since(&self, last: Option<u64>) -> (Replay, u64) {
        let mut ring = self.lock();
        ring.expire(Instant::now());
        (ring.after(last), ring.next_id - 1)
    }
}

fn reset_event(reason: &str) -> Event {
    Event::default()
        .event("reset")
        .data(serde_json::json!({ "reason": reason }).to_string())
}

fn to_sse(event: &HubEvent) -> Event {
    Event::default()
        .id(event.id.to_string())
        .event(&event.name)
        .data(event.data())
}

/// `data` as JSON: plain structs and maps of strings and numbers, whose serialising cannot
/// fail.
pub fn to_json(data: &impl serde::Serialize) -> String {
    serde_json::to_string(data).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    use serde_json::json;

    /// A hub whose one client has just left: what it publishes is held for that client's
    /// return.
    fn hub_left_by_a_client(first_id: u64) -> EventHub {
        let hub = EventHub::starting_at(first_id);
        drop(hub.take_slot().unwrap());
        hub
    }

    fn ids(replay: &Replay) -> Vec<u64> {
        replay.events.iter().map(|e| e.id).collect()
    }

    /// (Last-Event-ID, expected reset, expected ids) after publishing ids 100..=109.
    fn check(last: Option<u64>, reset: bool, expected: &[u64]) {
        let hub = hub_left_by_a_client(100);
        for i in 0..10 {
            hub.publish("call.started", &json!({ "n": i }));
        }
        let got = hub.replay(last);
        assert_eq!(
            (got.reset, ids(&got)),
            (reset, expected.to_vec()),
            "last {last:?}"
        );
    }

    #[test]
    fn replay_table() {
        let all: Vec<u64> = (100..=109).collect();
        check(None, false, &[]);
        check(Some(109), false, &[]);
        check(Some(105), false, &[106, 107, 108, 109]);
        check(Some(99), false, &all);
        check(Some(98), true, &all);
        check(Some(3), true, &all);
        check(Some(500), true, &all);
    }

    #[test]
    fn the_ring_is_bounded_and_an_old_id_resets() {
        let hub = hub_left_by_a_client(1);
        for _ in 0..(RING_LEN + 10) {
            hub.publish("call.ended", &json!({}));
        }
        let all = hub.replay(Some(0));
        assert!(all.reset);
        assert_eq!(all.events.len(), RING_LEN);
        assert_eq!(all.events[0].id, 11);
        let recent = hub.replay(Some(11));
        assert!(!recent.reset);
        assert_eq!(recent.events.len(), RING_LEN - 1);
    }

    #[test]
    fn events_are_held_only_while_a_client_could_ask_for_them() {
        let publish_three = |hub: &EventHub| {
            for _ in 0..3 {
                hub.publish("call.started", &json!({}));
            }
        };
        // No client ever: a made-up id before them is told to reload, the last one is
        // up to date.
        let never = EventHub::starting_at(1);
        publish_three(&never);
        assert_eq!(
            never.replay(Some(1)),
            Replay {
                reset: true,
                events: vec![]
            }
        );
        assert_eq!(
            never.replay(Some(3)),
            Replay {
                reset: false,
                events: vec![]
            }
        );
        // The last client left longer ago than events are kept.
        let long_ago = EventHub::starting_at(1);
        drop(long_ago.take_slot().unwrap());
        let past = Instant::now().checked_sub(RING_AGE + Duration::from_secs(1));
        long_ago.lock().last_left = past;
        publish_three(&long_ago);
        assert!(long_ago.replay(Some(1)).reset);
        // A client connected, or one just gone, can be replayed each of them.
        let watched = EventHub::starting_at(1);
        let slot = watched.take_slot().unwrap();
        publish_three(&watched);
        drop(slot);
        publish_three(&watched);
        assert_eq!(ids(&watched.replay(Some(1))), vec![2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn an_event_is_rendered_once_when_first_sent_and_never_when_unread() {
        let renders = Arc::new(AtomicUsize::new(0));
        let hub = hub_left_by_a_client(1);
        for n in 0..3 {
            let renders = Arc::clone(&renders);
            hub.publish_with("call.started", move || {
                renders.fetch_add(1, Ordering::Relaxed);
                format!("{{\"n\":{n}}}")
            });
        }
        assert_eq!(
            renders.load(Ordering::Relaxed),
            0,
            "rendered with no client"
        );
        // Two clients that saw the first event are replayed the other two.
        for _ in 0..2 {
            let got = take(&hub, Some(1), 3).await;
            assert!(got.contains("data: {\"n\":2}"), "{got}");
            assert!(!got.contains("data: {\"n\":0}"), "{got}");
        }
        assert_eq!(renders.load(Ordering::Relaxed), 2, "each sent event once");
    }

    /// The `event:` names in an SSE text.
    fn names(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect()
    }

    /// The first `n` SSE items a client that last saw `last` receives, as the wire text.
    async fn take(hub: &EventHub, last: Option<u64>, n: usize) -> String {
        let slot = hub.take_slot().unwrap();
        let body = Sse::new(hub.stream(last, slot).take(n))
            .into_response()
            .into_body();
        let bytes =
            tokio::time::timeout(Duration::from_secs(5), axum::body::to_bytes(body, 1 << 20))
                .await
                .unwrap()
                .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_reconnecting_client_gets_each_missed_event_once_then_live_ones() {
        let hub = hub_left_by_a_client(1);
        hub.publish("call.started", &json!({"call": 1}));
        hub.publish("call.ringing", &json!({"call": 1}));
        hub.publish("call.answered", &json!({"call": 1}));
        let publisher = hub.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            publisher.publish("call.ended", &json!({"call": 1}));
        });
        // Saw the first; hello, the two missed, then the live one.
        let got = take(&hub, Some(1), 4).await;
        assert!(got.starts_with("retry: 2000\n: sipedge events"), "{got}");
        assert_eq!(
            names(&got),
            vec!["call.ringing", "call.answered", "call.ended"]
        );
        assert!(got.contains("id: 4\n"), "{got}");
        assert!(!got.contains("id: 1\n"), "{got}");
    }

    #[tokio::test]
    async fn a_new_client_starts_from_now_and_close_ends_the_stream() {
        let hub = EventHub::starting_at(1);
        hub.publish("call.started", &json!({}));
        let body = hub.sse(None).unwrap().into_response().into_body();
        hub.publish("alarm.raised", &json!({"kind": "disk_low"}));
        hub.close();
        let bytes =
            tokio::time::timeout(Duration::from_secs(5), axum::body::to_bytes(body, 1 << 20))
                .await
                .unwrap()
                .unwrap();
        let got = String::from_utf8(bytes.to_vec()).unwrap();
        assert_eq!(names(&got), vec!["alarm.raised"], "{got}");
        assert!(got.contains("data: {\"kind\":\"disk_low\"}"), "{got}");
    }

    #[tokio::test]
    async fn streams_past_the_cap_are_refused_until_one_closes() {
        let hub = EventHub::starting_at(1);
        hub.set_max_clients(2);
        let first = hub.sse(None).unwrap();
        let second = hub.sse(None).unwrap();
        assert_eq!(hub.clients(), 2);
        assert_eq!(hub.sse(None).err(), Some(TooManyClients(2)));
        assert_eq!(hub.refused_clients(), 1);
        drop(first);
        assert_eq!(hub.clients(), 1);
        let third = hub.sse(None).unwrap();
        assert_eq!(hub.clients(), 2);
        drop((second, third));
        assert_eq!(hub.clients(), 0);
    }

    #[tokio::test]
    async fn a_too_old_id_gets_a_reset_first() {
        let hub = hub_left_by_a_client(1000);
        hub.publish("call.started", &json!({}));
        let got = take(&hub, Some(5), 2).await;
        assert_eq!(names(&got), vec!["reset", "call.started"], "{got}");
    }
}
