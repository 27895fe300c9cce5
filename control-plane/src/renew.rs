//! Certificate renewal over MQTT: an enrolled agent's CSR on `agents/{id}/csr` becomes a new
//! client certificate sent back on its `cmd` (`Command::RenewedCertificate`).
//!
//! Ingest calls [`on_csr`] for a decoded request from an agent that is enrolled and not
//! revoked; the front door already made sure only agent `id` itself can publish on that
//! topic. The CSR must name the agent id as its only subject attribute (CN) and no alternative
//! names; the certificate is signed like an enrollment's (`Pki::sign_renewal_csr`, validity
//! from the settings), recorded in the store (serial and expiry, which the API and the
//! expiry gauges show), and only then sent. Refusals are counted by reason and logged; the
//! agent gets no answer and asks again later. The previous certificate is not refused: it
//! stays valid until its own expiry (revocation refuses every certificate of the agent).
//!
//! Issuing is throttled per agent ([`CsrThrottle`]): after a certificate was issued, the
//! agent's next request within validity/60 (1 s to 30 s) is dropped before any signing and
//! counted under `reason="throttled"`. That is half the shortest retry delay of a conforming
//! agent (validity/30, 2 s to 60 s), so only a misbehaving agent is throttled. Refused
//! requests do not start a window (each is refused for its own reason).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vantage_mqtt::{AgentTopic, Command, CommandMessage, CsrRequest, encode, topic};

use crate::AppState;
use crate::pki::PkiError;

/// The longest request id accepted (it is echoed back on `cmd`).
const MAX_REQUEST_ID_LEN: usize = 64;

/// Whether a request id is short printable ASCII.
fn valid_request_id(request_id: &str) -> bool {
    !request_id.is_empty()
        && request_id.len() <= MAX_REQUEST_ID_LEN
        && request_id.bytes().all(|b| b.is_ascii_graphic())
}

/// Agents remembered by the throttle before old entries are swept.
const THROTTLE_SWEEP_AT: usize = 1024;

/// When each agent was last issued a certificate, to issue at most one per window.
#[derive(Debug, Default)]
pub struct CsrThrottle {
    last: Mutex<HashMap<String, Instant>>,
}

impl CsrThrottle {
    /// The window for certificates valid for `validity`: validity/60, 1 s to 30 s.
    pub fn window(validity: Duration) -> Duration {
        (validity / 60).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Whether `agent` may be issued a certificate at `now`.
    pub fn allows(&self, agent: &str, now: Instant, window: Duration) -> bool {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.get(agent)
            .is_none_or(|at| now.saturating_duration_since(*at) >= window)
    }

    /// Records an issue to `agent` at `now`. Entries older than `window` are swept once
    /// [`THROTTLE_SWEEP_AT`] agents are remembered, so the map holds at most the agents of
    /// one window plus that many.
    pub fn record(&self, agent: &str, now: Instant, window: Duration) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() >= THROTTLE_SWEEP_AT {
            last.retain(|_, at| now.saturating_duration_since(*at) < window);
        }
        last.insert(agent.to_owned(), now);
    }
}

/// Handles one renewal request of agent `id`: signs, records, answers on `cmd`.
pub async fn on_csr(state: &AppState, id: &str, request: CsrRequest) {
    let window = CsrThrottle::window(state.settings.cert_validity());
    if !state.csr_throttle.allows(id, Instant::now(), window) {
        state
            .counters
            .cert_renewals_throttled
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(agent = %id, ?window, "Dropped a certificate renewal request: a certificate was issued within the window");
        return;
    }
    if !valid_request_id(&request.request_id) {
        state
            .counters
            .cert_renewals_bad_request
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(agent = %id, "Refused a certificate renewal: the request id is not 1-64 printable ASCII characters");
        return;
    }
    let issued = match state.pki.sign_renewal_csr(
        &request.csr_pem,
        id,
        state.settings.cert_validity(),
    ) {
        Ok(issued) => issued,
        Err(error) => {
            let counter = match &error {
                PkiError::BadCsr(_) | PkiError::CsrTooLarge { .. } => {
                    &state.counters.cert_renewals_bad_csr
                }
                PkiError::CsrIdentity { .. } => &state.counters.cert_renewals_identity,
                PkiError::Io { .. }
                | PkiError::Rcgen(_)
                | PkiError::BadPem { .. }
                | PkiError::Tls(_) => &state.counters.cert_renewals_failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(agent = %id, request_id = %request.request_id, %error, "Refused a certificate renewal");
            return;
        }
    };
    match state
        .store
        .set_agent_cert(id, &issued.serial_hex, issued.not_after_ms)
        .await
    {
        Ok(true) => state.csr_throttle.record(id, Instant::now(), window),
        Ok(false) => {
            tracing::info!(agent = %id, "Not renewing the certificate of an agent revoked meanwhile");
            return;
        }
        Err(error) => {
            state
                .counters
                .cert_renewals_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(agent = %id, %error, "Cannot record a renewed certificate; the agent asks again");
            return;
        }
    }
    let answer = CommandMessage {
        v: vantage_mqtt::PROTOCOL_VERSION,
        request_id: request.request_id,
        command: Command::RenewedCertificate {
            cert_pem: issued.cert_pem,
            not_after_ms: issued.not_after_ms,
        },
    };
    if let Err(error) = state
        .publisher
        .publish(&topic::agent(id, AgentTopic::Cmd), encode(&answer), false)
        .await
    {
        state
            .counters
            .cert_renewals_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(agent = %id, %error, "Cannot send a renewed certificate; the agent asks again");
        return;
    }
    state
        .counters
        .cert_renewals_issued
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        agent = %id,
        serial = %issued.serial_hex,
        not_after_ms = issued.not_after_ms,
        "Renewed an agent certificate"
    );
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_throttle_allows_one_issue_per_agent_and_window_and_stays_bounded() {
        let throttle = CsrThrottle::default();
        let window = Duration::from_secs(2);
        let t0 = Instant::now();
        assert!(throttle.allows("ag-1", t0, window));
        assert!(
            throttle.allows("ag-1", t0, window),
            "asking starts no window"
        );
        throttle.record("ag-1", t0, window);
        assert!(!throttle.allows("ag-1", t0 + Duration::from_millis(1999), window));
        assert!(
            throttle.allows("ag-2", t0, window),
            "agents are throttled apart"
        );
        assert!(throttle.allows("ag-1", t0 + window, window));
        for i in 0..3 * THROTTLE_SWEEP_AT {
            let at = t0 + window * 2 + Duration::from_secs(i as u64);
            throttle.record(&format!("flood-{i}"), at, window);
        }
        let held = throttle.last.lock().unwrap().len();
        assert!(held <= THROTTLE_SWEEP_AT, "{held} agents remembered");
        assert_eq!(
            CsrThrottle::window(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(
            CsrThrottle::window(Duration::from_secs(90 * 86_400)),
            Duration::from_secs(30)
        );
    }

    use super::*;

    #[test]
    fn request_ids_are_short_printable_ascii() {
        assert!(valid_request_id("renew-0123abcd-1"));
        for bad in ["", "a b", "a\nb", "é", &"x".repeat(65)] {
            assert!(!valid_request_id(bad), "{bad:?} accepted");
        }
    }
}
