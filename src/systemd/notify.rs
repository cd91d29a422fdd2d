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

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any. Like
/// libsystemd's `sd_watchdog_enabled`, `WATCHDOG_PID`, when set, must be
/// this process.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}
