//! The systemd notify protocol (`Type=notify`, sd_notify(3)): readiness once everything is
//! bound, watchdog pings, reload and stop notices, and a status line for `systemctl status`.
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd).

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends `states`; a failure is logged, never fatal: systemd going away must not stop calls.
fn send(states: &[NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// Every listener is bound and the store is open.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts; systemd wants the monotonic time with it to match it to `systemctl reload`.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the monotonic clock for systemd");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// A graceful stop starts.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining connections and saving calls"),
    ]);
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for (`WATCHDOG_USEC`), from a task of
/// the runtime, so that a runtime stuck for longer gets the service restarted. It pings
/// through the drain too, until the process ends; nothing runs when the watchdog is off.
pub fn spawn_watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let half = (period / 2).max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(half);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}
