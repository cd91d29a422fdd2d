//! systemd notifications (`Type=notify`). All calls are no-ops when the
//! process was not started by systemd (`NOTIFY_SOCKET` unset).

use sd_notify::NotifyState;

pub fn ready() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}

pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

pub fn status(line: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(line)]);
}

/// `RELOADING=1` with the monotonic timestamp systemd asks for.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => {
            let _ = sd_notify::notify(false, &[NotifyState::Reloading, now]);
        }
        Err(_) => {
            let _ = sd_notify::notify(false, &[NotifyState::Reloading]);
        }
    }
}

/// `WATCHDOG=1`.
pub fn watchdog() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| std::time::Duration::from_micros(usec))
}
