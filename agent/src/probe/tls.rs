//! TLS for probes: the client settings every probe shares (verify or not, custom CA, SNI,
//! ALPN), the facts of the server's certificate, and the `tls` check itself (handshake,
//! chain validity, days until expiry, issuer, name match, optional SMTP STARTTLS).
//!
//! The server's certificate is captured by the verifier before it judges the chain, so a
//! probe reports days left and issuer even for a certificate it refuses.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use vantage_mqtt::{IpVersion, StartTls, Timings, TlsCheck};

use super::{Connected, Outcome, connect, ms};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Facts of a server certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct CertFacts {
    /// Whole days until `notAfter` (negative once expired).
    pub days_left: f64,
    pub issuer: String,
    pub subject: String,
}

/// Reads the facts of a DER certificate.
pub fn cert_facts(der: &CertificateDer<'_>) -> Option<CertFacts> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(CertFacts {
        days_left: ((not_after - now) as f64 / 86_400.0).floor(),
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
    })
}

/// Verifies (or not) and remembers the end-entity certificate it was shown.
#[derive(Debug)]
struct CapturingVerifier {
    inner: Option<Arc<dyn ServerCertVerifier>>,
    captured: Arc<Mutex<Option<CertificateDer<'static>>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for CapturingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut captured) = self.captured.lock() {
            *captured = Some(end_entity.clone().into_owned());
        }
        match &self.inner {
            Some(inner) => {
                inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client for one probe run and the slot its verifier fills with the server's
/// certificate.
pub struct ProbeTls {
    pub config: Arc<rustls::ClientConfig>,
    pub captured: Arc<Mutex<Option<CertificateDer<'static>>>>,
}

impl ProbeTls {
    /// Verifies against `ca_pem` (or the public roots) unless `verify` is false; offers
    /// `alpn` protocols.
    ///
    /// # Errors
    /// An unusable CA PEM.
    pub fn new(verify: bool, ca_pem: Option<&str>, alpn: Vec<Vec<u8>>) -> Result<ProbeTls, String> {
        let provider = provider();
        let inner: Option<Arc<dyn ServerCertVerifier>> = if verify {
            let roots = match ca_pem {
                Some(pem) => crate::tls::roots(pem).map_err(|e| format!("ca_pem: {e}"))?,
                None => rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
            };
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("cannot build a verifier: {e}"))?;
            Some(verifier)
        } else {
            None
        };
        let captured = Arc::new(Mutex::new(None));
        let verifier = Arc::new(CapturingVerifier {
            inner,
            captured: captured.clone(),
            provider: provider.clone(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = alpn;
        Ok(ProbeTls {
            config: Arc::new(config),
            captured,
        })
    }

    /// Runs the handshake over `stream` for `server_name`.
    ///
    /// # Errors
    /// The handshake failure in words (expired, wrong name, unknown issuer, …).
    pub async fn handshake<S>(&self, stream: S, server_name: &str) -> Result<TlsStream<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| format!("{server_name:?} is not a valid TLS server name"))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| describe_tls_error(&e))
    }

    /// Facts of the certificate the server showed, if the handshake got that far.
    pub fn facts(&self) -> Option<CertFacts> {
        let captured = self.captured.lock().ok()?;
        captured.as_ref().and_then(cert_facts)
    }
}

/// The TLS handshake every probe runs: builds the client (`verify`, `ca_pem`, `alpn`),
/// shakes hands for `server_name`, records `tls_ms` in `timings`, and returns the facts of
/// the certificate the server showed even when the handshake failed.
pub async fn secure<S>(
    stream: S,
    server_name: &str,
    verify: bool,
    ca_pem: Option<&str>,
    alpn: Vec<Vec<u8>>,
    timings: &mut Timings,
) -> (Result<TlsStream<S>, String>, Option<CertFacts>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = match ProbeTls::new(verify, ca_pem, alpn) {
        Ok(tls) => tls,
        Err(error) => return (Err(error), None),
    };
    let started = Instant::now();
    let handshake = tls.handshake(stream, server_name).await;
    timings.tls_ms = Some(ms(started.elapsed()));
    (handshake, tls.facts())
}

/// Turns a handshake error into a short reason.
pub fn describe_tls_error(error: &std::io::Error) -> String {
    let text = error.to_string();
    let lower = text.to_ascii_lowercase();
    let what = if lower.contains("expired") {
        "certificate expired"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        "certificate not valid for the name"
    } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        "certificate issuer not trusted"
    } else if lower.contains("notvalidyet") {
        "certificate not valid yet"
    } else if lower.contains("badsignature") {
        "certificate signature does not verify"
    } else {
        "TLS handshake failed"
    };
    format!("{what} ({text})")
}

/// Runs a `tls` check.
pub async fn probe(check: &TlsCheck, started: Instant) -> Outcome {
    let Connected {
        mut stream,
        mut timings,
        ..
    } = match connect(&check.host, check.port, IpVersion::Any).await {
        Ok(connected) => connected,
        Err(error) => return Outcome::fail(error, started),
    };
    if check.starttls == StartTls::Smtp
        && let Err(error) = super::smtp::starttls_preamble(&mut stream, "vantage.invalid").await
    {
        return Outcome::fail(error, started);
    }
    let name = check.server_name.as_deref().unwrap_or(&check.host);
    let (handshake, facts) = secure(
        stream,
        name,
        true,
        check.ca_pem.as_deref(),
        Vec::new(),
        &mut timings,
    )
    .await;
    let mut outcome = match (&handshake, &facts) {
        (Err(error), _) => Outcome::verdict(false, error.clone(), timings, started),
        (Ok(_), Some(facts)) if facts.days_left < f64::from(check.min_days_left) => {
            Outcome::verdict(
                false,
                format!(
                    "certificate expires in {} days (minimum {})",
                    facts.days_left, check.min_days_left
                ),
                timings,
                started,
            )
        }
        (Ok(_), Some(facts)) => Outcome::verdict(
            true,
            format!(
                "valid for {} more days, issuer {}",
                facts.days_left, facts.issuer
            ),
            timings,
            started,
        ),
        (Ok(_), None) => Outcome::verdict(false, "no certificate to read", timings, started),
    };
    if let Some(facts) = facts {
        outcome
            .values
            .insert("cert_days_left".into(), facts.days_left);
    }
    outcome
}

/// Checks a `tls` check's fields.
///
/// # Errors
/// A message naming the field.
pub fn validate(check: &TlsCheck) -> Result<(), String> {
    super::validate_endpoint(
        &check.host,
        check.port,
        check.server_name.as_deref(),
        check.ca_pem.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::testutil::{leaf, pki, server};

    fn check(port: u16, ca_pem: &str, min_days_left: u32) -> TlsCheck {
        TlsCheck {
            host: "127.0.0.1".into(),
            port,
            starttls: StartTls::None,
            server_name: None,
            ca_pem: Some(ca_pem.to_owned()),
            min_days_left,
        }
    }

    #[tokio::test]
    async fn chain_expiry_and_name_verdicts() {
        let pki = pki();
        let valid = server(Some(leaf(&pki, &["localhost", "127.0.0.1"], -1, 30))).await;
        let expired = server(Some(leaf(&pki, &["127.0.0.1"], -30, -2))).await;
        let wrong = server(Some(leaf(&pki, &["wrong.example"], -1, 30))).await;

        let outcome = probe(&check(valid, &pki.ca_pem, 14), Instant::now()).await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(
            outcome.reason.starts_with("valid for "),
            "{}",
            outcome.reason
        );
        assert!(outcome.values["cert_days_left"] >= 29.0);
        let outcome = probe(&check(valid, &pki.ca_pem, 45), Instant::now()).await;
        assert!(
            !outcome.ok && outcome.reason.ends_with("(minimum 45)"),
            "{}",
            outcome.reason
        );
        let named = TlsCheck {
            server_name: Some("localhost".into()),
            ..check(valid, &pki.ca_pem, 14)
        };
        assert!(probe(&named, Instant::now()).await.ok);

        let outcome = probe(&check(expired, &pki.ca_pem, 14), Instant::now()).await;
        assert!(
            !outcome.ok && outcome.reason.starts_with("certificate expired"),
            "{}",
            outcome.reason
        );
        assert!(
            outcome.values["cert_days_left"] < 0.0,
            "{:?}",
            outcome.values
        );
        let outcome = probe(&check(wrong, &pki.ca_pem, 14), Instant::now()).await;
        assert!(
            !outcome.ok
                && outcome
                    .reason
                    .starts_with("certificate not valid for the name"),
            "{}",
            outcome.reason
        );
        let other = crate::probe::testutil::pki();
        let outcome = probe(&check(valid, &other.ca_pem, 14), Instant::now()).await;
        assert!(
            !outcome.ok && outcome.reason.starts_with("certificate issuer not trusted"),
            "{}",
            outcome.reason
        );
    }
}
