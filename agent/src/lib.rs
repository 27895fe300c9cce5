//! Vantage agent library: everything a monitored node runs, behind a thin binary.
//!
//! Layout:
//! - [`config`]: the TOML config file and its environment overrides.
//! - [`enroll`]: key generation, CSR, the enrollment request, the stored identity.
//! - [`files`]: atomic state-file writes with exact modes.
//! - [`tls`]: rustls client configs (ring only) for HTTPS enrollment and MQTT.
//! - [`spool`]: the bounded, journaled queue of results and metrics awaiting `results/ack`.
//! - [`metrics`]: host metrics from sysinfo.
//! - [`probe`]: one probe per check type (http, tcp, dns, smtp, icmp, tls, chain, process),
//!   run through [`probe::run_check`] (also what the control plane's fallback executor and
//!   its check validation call), and [`probe::validate`].
//! - [`renew`]: client certificate renewal over the MQTT session (schedule, key and CSR, checks
//!   on the answer, staged and promoted state files).
//! - [`session`]: the MQTT session, the local scheduler and the reporting loop.
//! - [`zabbix_sender`]: host metrics also sent to Zabbix as trapper items (`[zabbix_sender]`).
//!
//! The agent never touches a database and never links an HTTP server or a broker.

pub mod config;
pub mod enroll;
pub mod files;
pub mod hellogate;
pub mod metrics;
pub mod probe;
pub mod relay;
pub mod renew;
pub mod session;
pub mod spool;
pub mod tls;
pub mod zabbix_sender;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
