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

use std::sync::atomic::Ordering;

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

/// Handles one renewal request of agent `id`: signs, records, answers on `cmd`.
pub async fn on_csr(state: &AppState, id: &str, request: CsrRequest) {
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
        Ok(true) => {}
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
    use super::*;

    #[test]
    fn request_ids_are_short_printable_ascii() {
        assert!(valid_request_id("renew-0123abcd-1"));
        for bad in ["", "a b", "a\nb", "é", &"x".repeat(65)] {
            assert!(!valid_request_id(bad), "{bad:?} accepted");
        }
    }
}
