//! `sipedge import-pcap`: CDRs from packet captures. Every SIP message on the terminal hop
//! goes, with its capture time, through the proxy's own [`Tracker`], so a captured call gets
//! the CDR the proxy would have written; the Sipserver hop is skipped ([`super::Leg`]). The
//! tracker is driven directly rather than through the live tracking task: that task's timers
//! run on the wall clock, and here time is the capture's.
//!
//! Calls still open when the captures end get no CDR (their end is not in the files); the
//! summary counts them. Nothing is saved as a call in progress, which a later `serve` would
//! resume as if it were its own.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sipedge_http::render::{self, CdrView};
use sipedge_sip::call::task::sip_event;
use sipedge_sip::call::{Output, Tracker};
use sipedge_sip::{Direction, scan};
use sipedge_store::log::Direction as LogDirection;
use sipedge_store::{CdrId, LogEntry, LogKind, Source, Store, UnixMs, WriteOp};

use super::capture::{CaptureError, Handler, Reader, Wire};
use super::{Leg, Sides};
use crate::config::Config;

/// sysexits EX_DATAERR: a file is not a capture, or is damaged.
const EXIT_DATA: u8 = 65;
/// sysexits EX_NOINPUT: a file cannot be opened.
const EXIT_NOINPUT: u8 = 66;
/// Configuration problems, as everywhere in sipedge.
const EXIT_CONFIG: u8 = 64;

/// How many CDRs are queued to the store before waiting for them to be durable: the
/// writer's queue is unbounded, and an import runs far faster than it commits.
const FLUSH_EVERY: u64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrintFormat {
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// pcap or pcapng files, read in the order given (one call may span rotated files).
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// The service's config: [sip] tells the hops apart; node.name, node.data_dir,
    /// store.engine and node.timezone are used.
    #[arg(long, value_name = "FILE", default_value = "/etc/sipedge/sipedge.toml")]
    config: PathBuf,
    /// Print the CDRs (one JSON object a line, or CSV) instead of storing them.
    #[arg(long, value_name = "FORMAT")]
    print: Option<PrintFormat>,
}

/// Where the CDRs and call logs go.
enum Sink {
    Store {
        store: Store,
        queued: u64,
    },
    /// Each CDR is written when its call ends, so that memory does not grow with the capture.
    Print {
        out: std::io::BufWriter<std::io::Stdout>,
        csv: bool,
        zone: chrono_tz::Tz,
    },
}

/// The import's state: the tracker and the counts of the summary.
struct Feed {
    sides: Sides,
    tracker: Tracker,
    sink: Sink,
    /// Capture time of the last tracker tick, in ms.
    ticked: i64,
    sip_messages: u64,
    calls: u64,
    cdrs: u64,
    upstream_leg: u64,
    skipped: BTreeMap<&'static str, u64>,
    output_error: Option<String>,
}

/// Runs the command; the error is one line for the operator, with the exit code.
pub fn main(args: &ImportArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("sipedge: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(args: &ImportArgs) -> Result<(), (u8, String)> {
    let config = Config::load(&args.config).map_err(|e| (EXIT_CONFIG, e.to_string()))?;
    let sip = config.sip.as_ref().ok_or((
        EXIT_CONFIG,
        format!(
            "{}: [sip] is needed to tell the terminal hop from the Sipserver hop",
            args.config.display()
        ),
    ))?;
    let sides = Sides::new(sip).map_err(|e| (EXIT_CONFIG, e))?;
    let sink = match args.print {
        Some(format) => {
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let csv = format == PrintFormat::Csv;
            if csv {
                out.write_all(render::CSV_HEADER.as_bytes())
                    .map_err(|e| (EXIT_CONFIG, format!("cannot write the CDRs: {e}")))?;
            }
            Sink::Print {
                out,
                csv,
                zone: config.node.timezone.0,
            }
        }
        None => Sink::Store {
            store: Store::open(
                &config.node.data_dir,
                config.store.engine,
                config.store.settings(),
            )
            .map_err(|e| (EXIT_CONFIG, e.to_string()))?,
            queued: 0,
        },
    };
    let mut feed = Feed {
        sides,
        tracker: Tracker::new(config.node.name.clone(), sip.call_timeout),
        sink,
        ticked: i64::MIN,
        sip_messages: 0,
        calls: 0,
        cdrs: 0,
        upstream_leg: 0,
        skipped: BTreeMap::new(),
        output_error: None,
    };
    let total: u64 = args
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut reader = Reader::new(sip.max_message_bytes);
    let mut done = 0u64;
    for file in &args.files {
        let result = reader.read(file, &mut feed, &mut |n| bar.set_position(done + n));
        done += std::fs::metadata(file).map_or(0, |m| m.len());
        if let Err(e) = result {
            bar.finish_and_clear();
            let code = match e {
                CaptureError::Open { .. } => EXIT_NOINPUT,
                CaptureError::NotACapture { .. } | CaptureError::Damaged { .. } => EXIT_DATA,
            };
            return Err((code, e.to_string()));
        }
    }
    bar.finish_and_clear();
    reader.finish(&mut feed);
    let in_progress = feed.tracker.len();
    let stats = feed.tracker.stats();
    let files: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
    match feed.sink {
        Sink::Print { mut out, .. } => {
            if let Err(e) = out.flush() {
                feed.output_error
                    .get_or_insert(format!("cannot write the CDRs: {e}"));
            }
        }
        Sink::Store { store, .. } => {
            if let Err(e) = store.flush(Duration::from_secs(300)) {
                feed.output_error.get_or_insert(e.to_string());
            }
        }
    }
    let mut skipped = reader.counts.skipped;
    for (k, v) in feed.skipped {
        *skipped.entry(k).or_default() += v;
    }
    let mut summary = format!(
        "source: pcap {}\npackets: {}\nsip messages: {}\n\
         packets on the Sipserver hop (its messages are counted on the terminal hop): {}\n\
         calls: {}\ncdrs: {}\ncalls still in progress at the end of the capture (no CDR): {}\n\
         untracked messages: {}\nrefused calls: {}\nringing calls closed to make room: {}\n",
        files.join(", "),
        reader.counts.packets,
        feed.sip_messages,
        feed.upstream_leg,
        feed.calls,
        feed.cdrs,
        in_progress,
        stats.ignored,
        stats.refused,
        stats.evicted,
    );
    for (reason, n) in &skipped {
        summary.push_str(&format!("skipped {reason}: {n}\n"));
    }
    eprint!("{summary}");
    match feed.output_error {
        Some(e) => Err((EXIT_CONFIG, format!("the import's output failed: {e}"))),
        None => Ok(()),
    }
}

impl Feed {
    fn skip(&mut self, reason: &'static str) {
        *self.skipped.entry(reason).or_default() += 1;
    }

    fn apply(&mut self, outputs: Vec<Output>, at: UnixMs) {
        for output in outputs {
            match output {
                Output::Started(_) => self.calls += 1,
                Output::Ended(cdr, _) => {
                    self.cdrs += 1;
                    match &mut self.sink {
                        Sink::Print { out, csv, zone } => {
                            let mut line = String::new();
                            let rendered = if *csv {
                                render::csv_row(&mut line, &cdr, *zone);
                                Ok(())
                            } else {
                                serde_json::to_string(&CdrView::new(&cdr, *zone)).map(|json| {
                                    line = json;
                                    line.push('\n');
                                })
                            };
                            let written = rendered
                                .map_err(std::io::Error::from)
                                .and_then(|()| out.write_all(line.as_bytes()));
                            if let Err(e) = written {
                                self.output_error
                                    .get_or_insert(format!("cannot write the CDRs: {e}"));
                            }
                        }
                        Sink::Store { .. } => self.submit(WriteOp::PutCdr(cdr)),
                    }
                }
                Output::Event(id, text) => self.log(
                    id,
                    LogEntry {
                        at,
                        kind: LogKind::Event { text: text.into() },
                    },
                ),
                Output::Ringing(_) | Output::Answered(_) | Output::Changed(_) => {}
            }
        }
    }

    fn log(&mut self, id: CdrId, entry: LogEntry) {
        if matches!(self.sink, Sink::Store { .. }) {
            self.submit(WriteOp::AppendLog(id, entry));
        }
    }

    fn submit(&mut self, op: WriteOp) {
        let Sink::Store { store, queued } = &mut self.sink else {
            return;
        };
        let is_cdr = matches!(op, WriteOp::PutCdr(_));
        let mut result = store.writer().submit(op);
        if is_cdr {
            *queued += 1;
            if *queued % FLUSH_EVERY == 0 {
                result = result.and_then(|()| store.flush(Duration::from_secs(300)));
            }
        }
        if let Err(e) = result {
            self.output_error.get_or_insert(e.to_string());
        }
    }
}

impl Handler for Feed {
    fn wanted(&mut self, src: SocketAddr, dst: SocketAddr) -> bool {
        match self.sides.leg(src, dst) {
            Leg::Terminal(_) => true,
            Leg::Upstream => {
                self.upstream_leg += 1;
                false
            }
            Leg::Unrelated => {
                self.skip("not_sipedge");
                false
            }
        }
    }

    fn message(&mut self, wire: Wire<'_>) {
        let Leg::Terminal(direction) = self.sides.leg(wire.src, wire.dst) else {
            return;
        };
        let at = unix_ms(wire.at);
        // The live task ticks once a second; so does this, on the capture's clock.
        if at.0 >= self.ticked.saturating_add(1000) {
            let outputs = self.tracker.tick(at);
            self.apply(outputs, at);
            self.ticked = at.0;
        }
        let Ok(msg) = scan::scan(wire.bytes) else {
            self.skip("not_sip");
            return;
        };
        let terminal = match direction {
            Direction::ToUpstream => wire.src,
            Direction::ToTerminal => wire.dst,
        };
        let from_terminal = direction == Direction::ToUpstream;
        let Some(ev) = sip_event(
            &msg.facts(),
            wire.at,
            from_terminal,
            (wire.transport, terminal),
            Source::Pcap,
        ) else {
            self.skip("sip_without_call_id_from_to_cseq");
            return;
        };
        self.sip_messages += 1;
        let outputs = self.tracker.on_event(&ev);
        self.apply(outputs, at);
        if let Some((id, _)) = self.tracker.log_of(&ev) {
            let entry = LogEntry {
                at,
                kind: LogKind::Sip {
                    direction: LogDirection::Received,
                    transport: ev.transport,
                    src: wire.src,
                    dst: wire.dst,
                    text: Bytes::copy_from_slice(wire.bytes),
                },
            };
            self.log(id, entry);
        }
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> UnixMs {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    UnixMs(ms)
}
