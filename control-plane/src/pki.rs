//! The control plane's certificate authority: created on first start, reused after.
//!
//! Files under `<data dir>/pki/`: `ca.pem`, `ca.key`, `server.pem`, `server.key` (private
//! keys mode 0600). The CA signs the server certificate (used by the MQTT front door and the
//! HTTPS API) and every agent's client certificate, whose CN is the agent id. Signing uses
//! only the public key of an agent's CSR: subject, extensions and validity are ours.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::{Duration, OffsetDateTime};

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate operation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(rcgen::Error),
    #[error("stored PEM in {path} is not valid")]
    BadPem { path: PathBuf },
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate issued to an agent.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub serial_hex: String,
    pub not_after_ms: i64,
}

/// The CA and the server identity.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key_der: Vec<u8>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` with the given mode, atomically.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    vantage_agent::files::write_atomic(path, contents.as_bytes(), mode).map_err(io_err(path))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes[..]);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Pki {
    /// Loads the CA and server identity from `data_dir/pki`, creating what is missing.
    /// `server_names` are added to a newly created server certificate's SANs.
    ///
    /// # Errors
    /// I/O errors, or stored files that do not parse.
    pub fn load_or_create(data_dir: &Path, server_names: &[String]) -> Result<Pki, PkiError> {
        let dir = data_dir.join("pki");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
        let ca_cert_path = dir.join("ca.pem");
        let ca_key_path = dir.join("ca.key");
        if !ca_cert_path.exists() || !ca_key_path.exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut name = DistinguishedName::new();
            name.push(DnType::CommonName, "Vantage control plane CA");
            name.push(DnType::OrganizationName, "Vantage");
            params.distinguished_name = name;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.serial_number = Some(random_serial());
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::hours(1);
            params.not_after = now + Duration::days(3650);
            let cert = params.self_signed(&key)?;
            write_file(&ca_key_path, &key.serialize_pem(), 0o600)?;
            write_file(&ca_cert_path, &cert.pem(), 0o644)?;
            // A new CA invalidates any old server certificate.
            let _ = fs::remove_file(dir.join("server.pem"));
        }
        let ca_pem = fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
        let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|_| PkiError::BadPem {
            path: ca_key_path.clone(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|_| PkiError::BadPem {
            path: ca_cert_path.clone(),
        })?;
        let ca_der =
            CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| PkiError::BadPem {
                path: ca_cert_path.clone(),
            })?;

        let server_cert_path = dir.join("server.pem");
        let server_key_path = dir.join("server.key");
        if !server_cert_path.exists() || !server_key_path.exists() {
            let key = KeyPair::generate()?;
            let mut names: Vec<String> = vec!["localhost".into()];
            names.extend(server_names.iter().cloned());
            let mut params = CertificateParams::new(names)?;
            for ip in ["127.0.0.1", "::1"] {
                if let Ok(addr) = ip.parse() {
                    params.subject_alt_names.push(SanType::IpAddress(addr));
                }
            }
            let mut name = DistinguishedName::new();
            name.push(DnType::CommonName, "vantage-control-plane");
            params.distinguished_name = name;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.serial_number = Some(random_serial());
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::hours(1);
            params.not_after = now + Duration::days(825);
            let cert = params.signed_by(&key, &issuer)?;
            write_file(&server_key_path, &key.serialize_pem(), 0o600)?;
            write_file(&server_cert_path, &cert.pem(), 0o644)?;
        }
        let server_pem =
            fs::read_to_string(&server_cert_path).map_err(io_err(&server_cert_path))?;
        let server_chain = CertificateDer::pem_slice_iter(server_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| PkiError::BadPem {
                path: server_cert_path.clone(),
            })?;
        let server_key_pem =
            fs::read_to_string(&server_key_path).map_err(io_err(&server_key_path))?;
        let server_key_der = PrivateKeyDer::from_pem_slice(server_key_pem.as_bytes())
            .map_err(|_| PkiError::BadPem {
                path: server_key_path.clone(),
            })?
            .secret_der()
            .to_vec();
        Ok(Pki {
            dir,
            ca_pem,
            ca_der,
            issuer,
            server_chain,
            server_key_der,
        })
    }

    /// The CA certificate in PEM, as handed to agents.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Path of the CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// SHA-256 of the CA certificate's DER, hex: what installers pin.
    pub fn ca_fingerprint(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &self.ca_der))
    }

    /// Signs the public key of `csr_pem` into a client certificate whose CN is `agent_id`.
    ///
    /// # Errors
    /// [`PkiError::BadCsr`] when the CSR does not parse or its signature does not verify.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent_id: &str,
        validity_days: i64,
    ) -> Result<IssuedCert, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, agent_id);
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(validity_days);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial_hex,
            not_after_ms: (params.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }

    /// A root store holding only our CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        // Our own CA was parsed above; adding it cannot fail in practice, and if it did the
        // store would simply trust nothing.
        let _ = roots.add(self.ca_der.clone());
        roots
    }

    fn server_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.server_key_der.clone())
            .unwrap_or_else(|_| PrivateKeyDer::Pkcs8(self.server_key_der.clone().into()))
    }

    /// TLS for the MQTT front door: client certificates from our CA are verified when
    /// presented; clients without one may still log in as viewers with a credential.
    ///
    /// # Errors
    /// TLS configuration errors.
    pub fn mqtt_server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()),
            ring_provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
        let config = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), self.server_key())?;
        Ok(Arc::new(config))
    }

    /// TLS for the HTTPS API (no client certificates).
    ///
    /// # Errors
    /// TLS configuration errors.
    pub fn http_server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let mut config = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), self.server_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The CN of a DER certificate's subject, if it has exactly one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let mut names = parsed.subject().iter_common_name();
    let cn = names.next()?.as_str().ok()?.to_owned();
    if names.next().is_some() {
        return None;
    }
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_with_private_keys_0600_and_signs_csrs() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let again = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(pki.ca_pem(), again.ca_pem());
        for key in ["ca.key", "server.key"] {
            let mode = fs::metadata(dir.path().join("pki").join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let agent_key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&agent_key)
            .unwrap()
            .pem()
            .unwrap();
        let issued = pki.sign_agent_csr(&csr, "ag-0001", 30).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("ag-0001"));
        assert!(matches!(
            pki.sign_agent_csr("garbage", "x", 1),
            Err(PkiError::BadCsr(_))
        ));
        pki.mqtt_server_config().unwrap();
        pki.http_server_config().unwrap();
    }
}
