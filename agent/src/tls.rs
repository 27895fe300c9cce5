//! rustls client configurations, ring as the only crypto provider.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Errors building a TLS client config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CA certificate PEM is not valid")]
    BadCa,
    #[error("client certificate or key PEM is not valid")]
    BadIdentity,
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding the certificates of `ca_pem`.
///
/// # Errors
/// [`TlsError::BadCa`] when no certificate parses.
pub fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|_| TlsError::BadCa)?)
            .map_err(|_| TlsError::BadCa)?;
    }
    if roots.is_empty() {
        return Err(TlsError::BadCa);
    }
    Ok(roots)
}

/// Trusts only `ca_pem`, no client certificate.
///
/// # Errors
/// See [`TlsError`].
pub fn pinned_client(ca_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth())
}

/// Trusts only `ca_pem` and presents `cert_pem` + `key_pem`.
///
/// # Errors
/// See [`TlsError`].
pub fn mutual_client(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ClientConfig, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::BadIdentity)?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::BadIdentity)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain, key)?)
}

/// A client trusting only `ca_pem` that presents whatever identity `identity` resolves at
/// each handshake (a long-lived client whose certificate is renewed while it runs).
///
/// # Errors
/// See [`TlsError`].
pub fn mutual_client_resolving(
    ca_pem: &str,
    identity: Arc<dyn rustls::client::ResolvesClientCert>,
) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_cert_resolver(identity))
}

/// A PEM certificate chain and its PEM private key, parsed and checked to belong together.
///
/// # Errors
/// [`TlsError::BadIdentity`] when either does not parse or they do not match.
pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::BadIdentity)?;
    if chain.is_empty() {
        return Err(TlsError::BadIdentity);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::BadIdentity)?;
    rustls::sign::CertifiedKey::from_der(chain, key, &provider()).map_err(|_| TlsError::BadIdentity)
}

/// Trusts the public web PKI (Mozilla's roots), for probes of public HTTPS targets.
///
/// # Errors
/// See [`TlsError`].
pub fn public_client() -> Result<rustls::ClientConfig, TlsError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
