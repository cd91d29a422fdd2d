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
