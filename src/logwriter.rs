//! Log lines reach stderr through a buffer that one thread writes out every few
//! milliseconds. Writing each line from the task that logged it costs a `write(2)` and a
//! wake-up of journald on a runtime worker: measured on the account responder, that was a
//! quarter of its CPU and the cause of its latency tail (BENCHMARKS.md).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer: short against a person reading the journal.
const WRITE_EVERY: Duration = Duration::from_millis(20);
/// Beyond this much unwritten text (stderr blocked, journald stuck) new lines are dropped and
/// counted rather than letting memory grow or making the logging task wait.
const MAX_BUFFERED: usize = 8 << 20;

#[derive(Debug, Default)]
struct Shared {
    /// Lines not yet written, in order.
    pending: Mutex<Vec<u8>>,
    /// Lines dropped because `pending` was full; reported when writing resumes.
    dropped: AtomicU64,
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

/// The writer to give `tracing_subscriber`; starts the writing thread on first use.
pub fn stderr() -> BufferedStderr {
    let shared = SHARED.get_or_init(|| {
        let shared = Arc::new(Shared::default());
        let writer = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("sipedge-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(WRITE_EVERY);
                    write_out(&writer);
                }
            });
        if let Err(err) = spawned {
            eprintln!("sipedge: cannot start the log writer thread ({err}); logs will be lost");
        }
        shared
    });
    BufferedStderr(shared.clone())
}

/// Writes out whatever is buffered; called on every way out of the process.
pub fn flush() {
    if let Some(shared) = SHARED.get() {
        write_out(shared);
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Vec<u8>> {
    shared
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn write_out(shared: &Shared) {
    let out = std::mem::take(&mut *lock(shared));
    let dropped = shared.dropped.swap(0, Ordering::Relaxed);
    let mut stderr = std::io::stderr().lock();
    if !out.is_empty() {
        // Nowhere to report a failure to write the log: it is the report.
        let _ = stderr.write_all(&out);
    }
    if dropped > 0 {
        let _ = writeln!(
            stderr,
            "sipedge: {dropped} log lines dropped: stderr did not keep up"
        );
    }
}

/// `MakeWriter` over the shared buffer.
#[derive(Debug, Clone)]
pub struct BufferedStderr(Arc<Shared>);

/// One line being appended; holds the buffer's lock only while the formatted line is copied.
#[derive(Debug)]
pub struct Line<'a> {
    shared: &'a Shared,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut pending = lock(self.shared);
        if pending.len() + buf.len() > MAX_BUFFERED {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            pending.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line { shared: &self.0 }
    }
}
