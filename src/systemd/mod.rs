//! systemd integration: readiness, reload and stop notifications
//! ([`notify`], `Type=notify`) and a watchdog tied to real progress
//! ([`watchdog`]). Everything here is a no-op when the process was not
//! started by systemd.

pub mod notify;
pub mod watchdog;
