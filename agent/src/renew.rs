//! Client certificate renewal over the MQTT session: when to renew, the new key and CSR, the
//! checks on the answer, and the key and certificate files in the state dir.
//!
//! At two thirds of the current certificate's lifetime (`notBefore` to `notAfter`) the agent
//! makes a new key and publishes a CSR (subject `CN=<agent id>`, nothing else) on
//! `agents/{id}/csr`. Without an answer it asks again with the same key, after a capped
//! exponential backoff with jitter scaled to the lifetime (from a thirtieth of it, 2 s to
//! 60 s, doubling up to a twelfth of it, 5 s to 1 h). The answer (`Command::RenewedCertificate`
//! on `cmd`) is kept only when its certificate holds the new key's public key, names the
//! agent, chains to the pinned CA for client authentication and is valid now.
//!
//! Files: the old `agent.key`/`agent.pem` stay in place until the new pair has carried a
//! successful MQTT connection. The new pair is first staged as `agent.key.next` then
//! `agent.pem.next` (each written atomically, directory synced); the session reconnects with
//! it, and after the CONNACK it is promoted by renaming the key, then the certificate, then
//! syncing the directory. If three connection attempts in a row fail with the new pair while
//! the old certificate is still valid, the agent goes back to the old pair, removes the staged
//! files and asks again later. [`recover`] finishes or undoes an interrupted step at start:
//! a lone `agent.pem.next` means a promotion stopped half way (it is completed); a lone
//! `agent.key.next` means staging stopped half way (it is removed); a complete staged pair is
//! promoted only when the current certificate has expired, else removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use rustls::pki_types::{CertificateDer, UnixTime, pem::PemObject};
use tokio::time::Instant;
use vantage_mqtt::CsrRequest;

use crate::enroll::Identity;
use crate::tls;

/// Connection attempts with a new certificate that may fail before the old one is used again.
const MAX_FAILED_CONNECTS: u32 = 3;

/// Errors of renewal.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("cannot make a key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("the certificate is not usable: {0}")]
    BadCertificate(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RenewError + '_ {
    move |source| RenewError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What renewal needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    /// The subject's CN, when it has exactly one.
    pub common_name: Option<String>,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
}

impl CertFacts {
    /// Reads the first certificate of `cert_pem`.
    ///
    /// # Errors
    /// [`RenewError::BadCertificate`] when it does not parse.
    pub fn of_pem(cert_pem: &str) -> Result<CertFacts, RenewError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| RenewError::BadCertificate(format!("not a PEM certificate: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| RenewError::BadCertificate(format!("not an X.509 certificate: {e}")))?;
        let mut names = cert.subject().iter_common_name();
        let common_name = match (names.next(), names.next()) {
            (Some(cn), None) => cn.as_str().ok().map(str::to_owned),
            _ => None,
        };
        Ok(CertFacts {
            not_before_ms: cert.validity().not_before.timestamp() * 1000,
            not_after_ms: cert.validity().not_after.timestamp() * 1000,
            common_name,
            spki: cert.tbs_certificate.subject_pki.raw.to_vec(),
        })
    }

    /// Two thirds of the way from `notBefore` to `notAfter`.
    pub fn renew_at_ms(&self) -> i64 {
        self.not_before_ms + (self.not_after_ms - self.not_before_ms).max(0) * 2 / 3
    }

    fn lifetime(&self) -> Duration {
        Duration::from_millis(
            (self.not_after_ms - self.not_before_ms)
                .max(0)
                .unsigned_abs(),
        )
    }

    /// The first retry delay and the cap of the backoff, scaled to the lifetime.
    pub fn backoff_bounds(&self) -> (Duration, Duration) {
        let lifetime = self.lifetime();
        (
            (lifetime / 30).clamp(Duration::from_secs(2), Duration::from_secs(60)),
            (lifetime / 12).clamp(Duration::from_secs(5), Duration::from_secs(3600)),
        )
    }
}

/// The key and CSR of a renewal in progress (kept across retries).
struct Pending {
    key: KeyPair,
    csr_pem: String,
    attempt: u32,
}

/// A validated new certificate being tried on the next connection.
struct Trying {
    /// The generation of its TLS config.
    generation: u64,
    facts: CertFacts,
    tls: Arc<rustls::ClientConfig>,
    failed_connects: u32,
}

/// The renewal state of one session.
pub struct Renewal {
    state_dir: PathBuf,
    agent_id: String,
    ca_pem: String,
    current: CertFacts,
    current_tls: Arc<rustls::ClientConfig>,
    /// When the next CSR is due (`None` while a new certificate is being tried).
    due: Option<Instant>,
    backoff: Duration,
    pending: Option<Pending>,
    trying: Option<Trying>,
    /// The generation of the last TLS config handed out: every config the session swaps in
    /// gets a new one, so a CONNACK is credited to the certificate it really used.
    generation: u64,
    /// Renewals completed by this process.
    pub n_renewed: u64,
}

/// The instant `at_ms` (Unix ms) falls at on the monotonic clock (now, if it passed).
fn instant_at(at_ms: i64) -> Instant {
    let wait_ms = (at_ms - crate::now_ms()).max(0).unsigned_abs();
    Instant::now() + Duration::from_millis(wait_ms)
}

fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.5..1.0))
}

impl Renewal {
    /// Starts the schedule from the identity's certificate; `tls` is the client config built
    /// from it.
    ///
    /// # Errors
    /// The stored certificate does not parse.
    pub fn new(
        identity: &Identity,
        state_dir: &Path,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Renewal, RenewError> {
        let current = CertFacts::of_pem(&identity.cert_pem)?;
        let (initial, _) = current.backoff_bounds();
        tracing::info!(
            not_after_ms = current.not_after_ms,
            renew_at_ms = current.renew_at_ms(),
            "Client certificate loaded"
        );
        Ok(Renewal {
            state_dir: state_dir.to_owned(),
            agent_id: identity.agent_id.clone(),
            ca_pem: identity.ca_pem.clone(),
            due: Some(instant_at(current.renew_at_ms())),
            current,
            current_tls: tls,
            backoff: initial,
            pending: None,
            trying: None,
            generation: 0,
            n_renewed: 0,
        })
    }

    /// When the next CSR should be sent; `None` while a new certificate is being tried.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The session is not connected when a CSR is due: look again after the first delay.
    pub fn postpone(&mut self) {
        let (initial, _) = self.current.backoff_bounds();
        self.due = Some(Instant::now() + jittered(initial));
    }

    /// The CSR to publish now (a new key on the first attempt, the same one on retries);
    /// schedules the next attempt after the backoff.
    ///
    /// # Errors
    /// Key or CSR generation failed (the next attempt is scheduled all the same).
    pub fn request(&mut self) -> Result<CsrRequest, RenewError> {
        let (_, cap) = self.current.backoff_bounds();
        self.due = Some(Instant::now() + jittered(self.backoff));
        self.backoff = (self.backoff * 2).min(cap);
        if self.pending.is_none() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut name = DistinguishedName::new();
            name.push(DnType::CommonName, self.agent_id.as_str());
            params.distinguished_name = name;
            let csr_pem = params.serialize_request(&key)?.pem()?;
            self.pending = Some(Pending {
                key,
                csr_pem,
                attempt: 0,
            });
        }
        let pending = self
            .pending
            .as_mut()
            .ok_or_else(|| RenewError::BadCertificate("no renewal in progress".into()))?;
        pending.attempt += 1;
        Ok(CsrRequest {
            v: vantage_mqtt::PROTOCOL_VERSION,
            request_id: format!("renew-{}-{}", self.current.renew_at_ms(), pending.attempt),
            csr_pem: pending.csr_pem.clone(),
        })
    }

    /// Checks an answer against the pending key, stages the new pair on disk and returns the
    /// TLS config to reconnect with, and its generation.
    ///
    /// # Errors
    /// No renewal pending, a certificate that does not fit (see the module docs), or the
    /// staged files could not be written; the pending key is kept for the next attempt.
    pub fn accept(
        &mut self,
        cert_pem: &str,
    ) -> Result<(u64, Arc<rustls::ClientConfig>), RenewError> {
        let pending = self
            .pending
            .as_ref()
            .ok_or_else(|| RenewError::BadCertificate("no renewal is in progress".into()))?;
        let facts = check_certificate(
            cert_pem,
            &pending.key,
            &self.agent_id,
            &self.ca_pem,
            crate::now_ms(),
        )?;
        let key_pem = pending.key.serialize_pem();
        let tls = Arc::new(tls::mutual_client(&self.ca_pem, cert_pem, &key_pem)?);
        stage(&self.state_dir, &key_pem, cert_pem)?;
        self.pending = None;
        self.due = None;
        self.generation += 1;
        self.trying = Some(Trying {
            generation: self.generation,
            facts,
            tls: tls.clone(),
            failed_connects: 0,
        });
        Ok((self.generation, tls))
    }

    /// A CONNACK arrived on a connection made with the TLS config of `generation`: when that
    /// is the new certificate's, promote it and schedule the next renewal from it. Returns
    /// the new certificate's expiry when it did.
    ///
    /// # Errors
    /// The promotion's renames failed (the staged files stay; [`recover`] finishes at start).
    pub fn on_connected(&mut self, generation: u64) -> Result<Option<i64>, RenewError> {
        if self
            .trying
            .as_ref()
            .is_none_or(|t| t.generation != generation)
        {
            return Ok(None);
        }
        let Some(trying) = self.trying.take() else {
            return Ok(None);
        };
        // From here on the new certificate is the current one, whatever the files say.
        let not_after_ms = trying.facts.not_after_ms;
        self.current = trying.facts;
        self.current_tls = trying.tls;
        let (initial, _) = self.current.backoff_bounds();
        self.backoff = initial;
        self.due = Some(instant_at(self.current.renew_at_ms()));
        self.n_renewed += 1;
        promote(&self.state_dir)?;
        Ok(Some(not_after_ms))
    }

    /// A connection attempt failed. After [`MAX_FAILED_CONNECTS`] in a row with a new
    /// certificate, while the old one is still valid, returns the old TLS config to use again
    /// and its new generation (the staged files are removed and a new renewal is scheduled
    /// after the backoff).
    pub fn on_connect_failed(&mut self) -> Option<(u64, Arc<rustls::ClientConfig>)> {
        let trying = self.trying.as_mut()?;
        trying.failed_connects += 1;
        if trying.failed_connects < MAX_FAILED_CONNECTS
            || self.current.not_after_ms <= crate::now_ms()
        {
            return None;
        }
        self.trying = None;
        if let Err(error) = discard(&self.state_dir) {
            tracing::warn!(%error, "Cannot remove the staged certificate");
        }
        self.due = Some(Instant::now() + jittered(self.backoff));
        self.generation += 1;
        Some((self.generation, self.current_tls.clone()))
    }
}

/// Checks that `cert_pem` is one certificate for `key`, naming `agent_id`, issued for client
/// authentication by the CA of `ca_pem`, and valid at `now_ms`.
///
/// # Errors
/// [`RenewError::BadCertificate`] saying which check failed.
pub fn check_certificate(
    cert_pem: &str,
    key: &KeyPair,
    agent_id: &str,
    ca_pem: &str,
    now_ms: i64,
) -> Result<CertFacts, RenewError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RenewError::BadCertificate(format!("not PEM: {e}")))?;
    let [leaf] = chain.as_slice() else {
        return Err(RenewError::BadCertificate(format!(
            "expected one certificate, got {}",
            chain.len()
        )));
    };
    let facts = CertFacts::of_pem(cert_pem)?;
    if facts.spki != key.subject_public_key_info() {
        return Err(RenewError::BadCertificate(
            "it is not for the key of the request".into(),
        ));
    }
    if facts.common_name.as_deref() != Some(agent_id) {
        return Err(RenewError::BadCertificate(format!(
            "it names {:?}, not {agent_id:?}",
            facts.common_name
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(tls::roots(ca_pem)?),
        provider,
    )
    .build()
    .map_err(|e| RenewError::BadCertificate(format!("cannot verify: {e}")))?;
    let now = UnixTime::since_unix_epoch(Duration::from_millis(now_ms.max(0).unsigned_abs()));
    verifier.verify_client_cert(leaf, &[], now).map_err(|e| {
        RenewError::BadCertificate(format!("it does not verify against the CA: {e}"))
    })?;
    Ok(facts)
}

fn next_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.next"))
}

/// Writes the new pair beside the current one: the key first, then the certificate.
///
/// # Errors
/// [`RenewError::Io`] naming the file.
fn stage(state_dir: &Path, key_pem: &str, cert_pem: &str) -> Result<(), RenewError> {
    for (name, contents) in [("agent.key", key_pem), ("agent.pem", cert_pem)] {
        let path = next_path(state_dir, name);
        crate::files::write_atomic(&path, contents.as_bytes(), 0o600).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Makes the staged pair the current one: renames the key, then the certificate, then syncs
/// the directory.
fn promote(state_dir: &Path) -> Result<(), RenewError> {
    for name in ["agent.key", "agent.pem"] {
        let from = next_path(state_dir, name);
        std::fs::rename(&from, state_dir.join(name)).map_err(io_err(&from))?;
    }
    crate::files::sync_parent(&state_dir.join("agent.pem")).map_err(io_err(state_dir))
}

/// Removes the staged pair (what exists of it).
fn discard(state_dir: &Path) -> Result<(), RenewError> {
    for name in ["agent.pem", "agent.key"] {
        let path = next_path(state_dir, name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_err(&path)(error)),
        }
    }
    crate::files::sync_parent(&state_dir.join("agent.pem")).map_err(io_err(state_dir))
}

/// Finishes or undoes a renewal step interrupted by a crash (see the module docs); called
/// before the identity is read.
///
/// # Errors
/// [`RenewError::Io`] naming the file.
pub fn recover(state_dir: &Path) -> Result<(), RenewError> {
    let key_next = next_path(state_dir, "agent.key").exists();
    let pem_next = next_path(state_dir, "agent.pem").exists();
    match (key_next, pem_next) {
        (false, false) => Ok(()),
        (false, true) => {
            tracing::warn!("Completing a certificate promotion interrupted by a stop");
            let from = next_path(state_dir, "agent.pem");
            std::fs::rename(&from, state_dir.join("agent.pem")).map_err(io_err(&from))?;
            crate::files::sync_parent(&from).map_err(io_err(state_dir))
        }
        (true, false) => {
            tracing::warn!("Removing a staged key whose certificate was never written");
            discard(state_dir)
        }
        (true, true) => {
            let current = std::fs::read_to_string(state_dir.join("agent.pem"))
                .ok()
                .and_then(|pem| CertFacts::of_pem(&pem).ok());
            if current.is_some_and(|facts| facts.not_after_ms > crate::now_ms()) {
                tracing::info!(
                    "Removing a renewed certificate never used for a connection; renewing again"
                );
                discard(state_dir)
            } else {
                tracing::warn!("The current certificate has expired; using the staged renewed one");
                promote(state_dir)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn read(dir: &Path, name: &str) -> Option<String> {
        std::fs::read_to_string(dir.join(name)).ok()
    }

    /// A CA and a certificate for `key` named `cn`, valid from `not_before` for `lifetime`.
    fn issue(
        ca: &(rcgen::Issuer<'static, KeyPair>, String),
        key: &KeyPair,
        cn: &str,
        not_before: time::OffsetDateTime,
        lifetime: time::Duration,
    ) -> String {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, cn);
        params.distinguished_name = name;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = not_before;
        params.not_after = not_before + lifetime;
        params.signed_by(key, &ca.0).unwrap().pem()
    }

    fn ca() -> (rcgen::Issuer<'static, KeyPair>, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(10);
        let pem = params.self_signed(&key).unwrap().pem();
        (rcgen::Issuer::new(params, key), pem)
    }

    #[test]
    fn renewal_is_due_at_two_thirds_and_backs_off_within_bounds() {
        let facts = CertFacts {
            not_before_ms: 1_000_000,
            not_after_ms: 1_090_000,
            common_name: None,
            spki: Vec::new(),
        };
        assert_eq!(facts.renew_at_ms(), 1_060_000);
        assert_eq!(
            facts.backoff_bounds(),
            (Duration::from_secs(3), Duration::from_millis(7500))
        );
        let ninety_days = CertFacts {
            not_after_ms: 1_000_000 + 90 * 86_400_000,
            ..facts
        };
        assert_eq!(
            ninety_days.backoff_bounds(),
            (Duration::from_secs(60), Duration::from_secs(3600))
        );
    }

    #[test]
    fn an_answer_must_hold_the_new_key_name_the_agent_and_chain_to_the_ca() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let now_ms = crate::now_ms();
        let hour = time::Duration::hours(1);
        let good = issue(&ca, &key, "ag-1", now - hour, 2 * hour);
        let facts = check_certificate(&good, &key, "ag-1", &ca.1, now_ms).unwrap();
        assert_eq!(facts.common_name.as_deref(), Some("ag-1"));

        let other_key = KeyPair::generate().unwrap();
        let other_ca = self::ca();
        for (cert, what) in [
            (
                issue(&ca, &other_key, "ag-1", now - hour, 2 * hour),
                "another key",
            ),
            (
                issue(&ca, &key, "ag-2", now - hour, 2 * hour),
                "another agent",
            ),
            (
                issue(&other_ca, &key, "ag-1", now - hour, 2 * hour),
                "another CA",
            ),
            (issue(&ca, &key, "ag-1", now - 2 * hour, hour), "expired"),
            (format!("{good}{good}"), "two certificates"),
            ("garbage".to_owned(), "not PEM"),
        ] {
            assert!(
                matches!(
                    check_certificate(&cert, &key, "ag-1", &ca.1, now_ms),
                    Err(RenewError::BadCertificate(_))
                ),
                "{what} accepted"
            );
        }
    }

    #[test]
    fn interrupted_steps_are_finished_or_undone_at_start() {
        let ca = ca();
        let now = time::OffsetDateTime::now_utc();
        let hour = time::Duration::hours(1);
        let key = KeyPair::generate().unwrap();
        let valid = issue(&ca, &key, "ag-1", now - hour, 2 * hour);
        let expired = issue(&ca, &key, "ag-1", now - 2 * hour, hour);
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();

        // Promotion stopped after the key: the certificate follows.
        write(dir, "agent.key", "new key");
        write(dir, "agent.pem", "old cert");
        write(dir, "agent.pem.next", "new cert");
        recover(dir).unwrap();
        assert_eq!(read(dir, "agent.pem").as_deref(), Some("new cert"));
        assert!(read(dir, "agent.pem.next").is_none());

        // Staging stopped after the key: the key goes.
        write(dir, "agent.key.next", "half");
        recover(dir).unwrap();
        assert!(read(dir, "agent.key.next").is_none());
        assert_eq!(read(dir, "agent.key").as_deref(), Some("new key"));

        // A staged pair never used while the current certificate is valid: removed.
        write(dir, "agent.pem", &valid);
        write(dir, "agent.key.next", "staged key");
        write(dir, "agent.pem.next", "staged cert");
        recover(dir).unwrap();
        assert_eq!(read(dir, "agent.pem"), Some(valid));
        assert!(read(dir, "agent.key.next").is_none() && read(dir, "agent.pem.next").is_none());

        // The same once the current certificate has expired: promoted.
        write(dir, "agent.pem", &expired);
        write(dir, "agent.key.next", "staged key");
        write(dir, "agent.pem.next", "staged cert");
        recover(dir).unwrap();
        assert_eq!(read(dir, "agent.key").as_deref(), Some("staged key"));
        assert_eq!(read(dir, "agent.pem").as_deref(), Some("staged cert"));
    }
    #[test]
    fn a_new_certificate_that_fails_three_connects_gives_way_to_the_old_one() {
        let ca = ca();
        let now = time::OffsetDateTime::now_utc();
        let hour = time::Duration::hours(1);
        let old_key = KeyPair::generate().unwrap();
        let old_cert = issue(&ca, &old_key, "ag-1", now - hour, 3 * hour);
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        write(dir, "agent.key", &old_key.serialize_pem());
        write(dir, "agent.pem", &old_cert);
        let identity = Identity {
            agent_id: "ag-1".into(),
            region: "europe".into(),
            mqtt_addr: "127.0.0.1:8883".into(),
            server_name: "127.0.0.1".into(),
            cert_pem: old_cert.clone(),
            key_pem: old_key.serialize_pem(),
            ca_pem: ca.1.clone(),
        };
        let old_tls =
            Arc::new(tls::mutual_client(&ca.1, &old_cert, &old_key.serialize_pem()).unwrap());
        let mut renewal = Renewal::new(&identity, dir, old_tls.clone()).unwrap();

        renewal.request().unwrap();
        let new_cert = {
            let pending = renewal.pending.as_ref().unwrap();
            issue(&ca, &pending.key, "ag-1", now - hour, 3 * hour)
        };
        let (generation, new_tls) = renewal.accept(&new_cert).unwrap();
        assert!(!Arc::ptr_eq(&new_tls, &old_tls));
        assert_eq!(read(dir, "agent.pem.next"), Some(new_cert.clone()));
        assert!(
            renewal.due().is_none(),
            "no new CSR while the new pair is tried"
        );

        // Two failures: keep trying the new pair.
        assert!(renewal.on_connect_failed().is_none());
        assert!(renewal.on_connect_failed().is_none());
        // The third: back to the old pair, staged files gone, a new renewal scheduled.
        let (back, tls) = renewal
            .on_connect_failed()
            .expect("the old pair is used again");
        assert!(Arc::ptr_eq(&tls, &old_tls));
        assert!(back > generation);
        assert!(read(dir, "agent.key.next").is_none() && read(dir, "agent.pem.next").is_none());
        assert_eq!(read(dir, "agent.pem"), Some(old_cert.clone()));
        assert!(renewal.due().is_some());
        // A late CONNACK of the abandoned pair promotes nothing.
        assert_eq!(renewal.on_connected(generation).unwrap(), None);
        assert_eq!(read(dir, "agent.pem"), Some(old_cert));
        assert_eq!(renewal.n_renewed, 0);

        // With the old certificate expired there is nothing to go back to: keep trying.
        renewal.request().unwrap();
        let newer_cert = {
            let pending = renewal.pending.as_ref().unwrap();
            issue(&ca, &pending.key, "ag-1", now - hour, 3 * hour)
        };
        renewal.accept(&newer_cert).unwrap();
        renewal.current.not_after_ms = crate::now_ms() - 1;
        for _ in 0..5 {
            assert!(renewal.on_connect_failed().is_none());
        }
        assert_eq!(read(dir, "agent.pem.next"), Some(newer_cert));
    }
}
