//! Probes: one per check type, behind [`Probe`], so the control plane's fallback executor
//! and tests can run them without an MQTT session.
//!
//! A probe never fails as a function: every outcome, including timeouts and refusals, is an
//! [`Outcome`] with a verdict, a reason and timings. The whole probe runs under the check's
//! timeout.

pub mod http;
pub mod tcp;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use vantage_mqtt::{CheckKind, CheckSpec, Timings};

/// What one probe run found.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub reason: String,
    pub timings: Timings,
    pub status_code: Option<u16>,
}

impl Outcome {
    /// A failure with `reason` after `started`.
    pub fn fail(reason: impl Into<String>, started: Instant) -> Outcome {
        Outcome {
            ok: false,
            reason: reason.into(),
            timings: Timings {
                total_ms: ms(started.elapsed()),
                ..Timings::default()
            },
            status_code: None,
        }
    }
}

/// Milliseconds as f64.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Something that can run a check.
pub trait Probe: Send + Sync {
    /// Runs `check` once.
    fn run<'a>(
        &'a self,
        check: &'a CheckSpec,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;
}

/// The real probes.
#[derive(Debug, Default, Clone)]
pub struct Probes;

impl Probe for Probes {
    fn run<'a>(
        &'a self,
        check: &'a CheckSpec,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(run_check(check))
    }
}

/// Runs one check under its timeout.
pub async fn run_check(check: &CheckSpec) -> Outcome {
    let started = Instant::now();
    let timeout = Duration::from_millis(u64::from(check.timeout_ms.max(1)));
    let run = async {
        match &check.kind {
            CheckKind::Http {
                url,
                method,
                expect_status,
            } => http::probe(url, method, expect_status, started).await,
            CheckKind::Tcp { host, port } => tcp::probe(host, *port, started).await,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::fail(format!("timed out after {} ms", check.timeout_ms), started),
    }
}

/// Check types this agent can run.
pub const CAPABILITIES: [&str; 2] = ["http", "tcp"];
