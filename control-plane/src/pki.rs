//! The control plane's certificate authority: created on first start, reused after.
//!
//! Files under `<data dir>/pki/`: `ca.pem`, `ca.key`, `server.pem`, `server.key` (private
//! keys mode 0600). The CA signs the server certificate (used by the MQTT front door and the
//! HTTPS API) and every agent's client certificate, whose CN is the agent id. Signing uses
//! only the public key of an agent's CSR: subject, extensions and validity are ours. A
//! renewal CSR (sent by an enrolled agent over MQTT) must also name no identity but the
//! agent's own: its subject is exactly `CN=<agent id>` and it asks for no alternative names.
//! With an external broker, the CA also signs the broker nodes' server certificate
//! ([`Pki::issue_broker_server`]) and the control plane's own client certificate for it
//! (`broker-client.pem`, subject `CN=vantage-control-plane, OU=control-plane`: no agent can
//! hold that subject, an agent's is exactly its CN).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
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
    #[error("the certificate signing request is too large ({len} bytes, at most {MAX_CSR_BYTES})")]
    CsrTooLarge { len: usize },
    #[error("the certificate signing request names another identity than {agent_id:?}: {found}")]
    CsrIdentity { agent_id: String, found: String },
    #[error("stored PEM in {path} is not valid")]
    BadPem { path: PathBuf },
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// The organisational unit in the subject of the control plane's own broker client
/// certificate ([`Pki::broker_client`]).
pub const CONTROL_PLANE_OU: &str = "control-plane";

/// How long the control plane's broker client certificate is valid.
pub const BROKER_CLIENT_VALIDITY: Duration = Duration::days(825);

/// How long before its end the control plane's broker client certificate is made anew.
pub const BROKER_CLIENT_RENEW_BEFORE: Duration = Duration::days(30);

/// The largest CSR accepted, in PEM bytes.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// The longest a new agent certificate is backdated (against clock skew between the control
/// plane and the node).
const MAX_BACKDATE: Duration = Duration::minutes(5);

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
    /// Held while the broker client identity is created, so that tasks asking for it at
    /// once do not write one's certificate beside another's key.
    broker_client_lock: std::sync::Mutex<()>,
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
            broker_client_lock: std::sync::Mutex::new(()),
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

    /// Signs the public key of `csr_pem` into a client certificate whose CN is `agent_id`,
    /// valid for `validity` from now (backdated by a twelfth of it, at most 5 minutes, so
    /// that "two thirds of the lifetime" stays close to two thirds of `validity`).
    ///
    /// # Errors
    /// [`PkiError::BadCsr`] when the CSR does not parse or its signature does not verify,
    /// [`PkiError::CsrTooLarge`] past [`MAX_CSR_BYTES`].
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        agent_id: &str,
        validity: std::time::Duration,
    ) -> Result<IssuedCert, PkiError> {
        let csr = parse_csr(csr_pem)?;
        self.sign_public_key(&csr, agent_id, validity)
    }

    /// Like [`Self::sign_agent_csr`] for a renewal: the CSR must name `agent_id` as its only
    /// subject attribute (CN) and carry no subject alternative names.
    ///
    /// # Errors
    /// As [`Self::sign_agent_csr`], plus [`PkiError::CsrIdentity`] for any other identity.
    pub fn sign_renewal_csr(
        &self,
        csr_pem: &str,
        agent_id: &str,
        validity: std::time::Duration,
    ) -> Result<IssuedCert, PkiError> {
        let csr = parse_csr(csr_pem)?;
        let mut names = Vec::new();
        for (kind, value) in csr.params.distinguished_name.iter() {
            let text = match value {
                DnValue::Utf8String(text) => text.clone(),
                DnValue::PrintableString(text) => text.as_str().to_owned(),
                other => format!("{other:?}"),
            };
            names.push((kind.clone(), text));
        }
        let only_own_cn = matches!(names.as_slice(), [(DnType::CommonName, cn)] if cn == agent_id);
        if !only_own_cn || !csr.params.subject_alt_names.is_empty() {
            let mut found: Vec<String> = names
                .iter()
                .map(|(kind, text)| format!("{kind:?}={text:?}"))
                .collect();
            found.extend(
                csr.params
                    .subject_alt_names
                    .iter()
                    .map(|san| format!("SAN {san:?}")),
            );
            if found.is_empty() {
                found.push("an empty subject".into());
            }
            return Err(PkiError::CsrIdentity {
                agent_id: agent_id.to_owned(),
                found: found.join(", "),
            });
        }
        self.sign_public_key(&csr, agent_id, validity)
    }

    fn sign_public_key(
        &self,
        csr: &CertificateSigningRequestParams,
        agent_id: &str,
        validity: std::time::Duration,
    ) -> Result<IssuedCert, PkiError> {
        let validity = Duration::try_from(validity).unwrap_or(Duration::days(3650));
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, agent_id);
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        // Whole seconds, as the certificate stores them, so `not_after_ms` is exact.
        let now = OffsetDateTime::now_utc();
        let now = OffsetDateTime::from_unix_timestamp(now.unix_timestamp()).unwrap_or(now);
        params.not_before = now - (validity / 12_i32).min(MAX_BACKDATE);
        params.not_after = now + validity;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial_hex,
            not_after_ms: (params.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }

    /// The control plane's client identity towards an external broker, created on first
    /// use and made anew when the stored one expires within [`BROKER_CLIENT_RENEW_BEFORE`]
    /// (or cannot be read): PEM certificate and key. Its subject carries
    /// [`CONTROL_PLANE_OU`], which no agent certificate can (agents' subjects are exactly
    /// `CN=<agent id>`). Clients resolve it at each TLS handshake
    /// ([`crate::callout::CurrentBrokerIdentity`]), so a renewed identity is used from the
    /// next connection on; a broker checks a certificate only at the handshake.
    ///
    /// # Errors
    /// I/O errors, or stored files that do not parse.
    pub fn broker_client(&self) -> Result<(String, String), PkiError> {
        self.broker_client_at(OffsetDateTime::now_utc())
    }

    /// [`Pki::broker_client`] as at `now`.
    fn broker_client_at(&self, now: OffsetDateTime) -> Result<(String, String), PkiError> {
        let cert_path = self.dir.join("broker-client.pem");
        let key_path = self.dir.join("broker-client.key");
        let _creating = self
            .broker_client_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = key_path.exists()
            && fs::read(&cert_path)
                .ok()
                .and_then(|pem| pem_not_after(&pem))
                .is_some_and(|not_after| not_after - BROKER_CLIENT_RENEW_BEFORE > now);
        if !fresh {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut name = DistinguishedName::new();
            name.push(DnType::CommonName, "vantage-control-plane");
            name.push(DnType::OrganizationalUnitName, CONTROL_PLANE_OU);
            params.distinguished_name = name;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.serial_number = Some(random_serial());
            params.not_before = now - Duration::hours(1);
            params.not_after = now + BROKER_CLIENT_VALIDITY;
            let cert = params.signed_by(&key, &self.issuer)?;
            write_file(&key_path, &key.serialize_pem(), 0o600)?;
            write_file(&cert_path, &cert.pem(), 0o644)?;
            tracing::info!(path = %cert_path.display(), "Issued the control plane's broker client certificate");
        }
        let cert = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        Ok((cert, key))
    }

    /// A server certificate for the nodes of an external broker cluster, valid for
    /// `names` (DNS names or IP addresses) and `localhost`/`127.0.0.1`/`::1`, usable for
    /// both ends of the nodes' routes: PEM certificate and key. Not stored: the caller
    /// writes it where the broker reads it.
    ///
    /// # Errors
    /// A name rcgen cannot put into a certificate.
    pub fn issue_broker_server(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut dns: Vec<String> = vec!["localhost".into()];
        let mut ips: Vec<std::net::IpAddr> = vec![
            std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        for name in names {
            match name.parse::<std::net::IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns.contains(name) => dns.push(name.clone()),
                Err(_) => {}
            }
        }
        let mut params = CertificateParams::new(dns)?;
        params
            .subject_alt_names
            .extend(ips.into_iter().map(SanType::IpAddress));
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "vantage-broker");
        // Not a lone CN: the callout would read that as an agent id.
        name.push(DnType::OrganizationalUnitName, "broker");
        params.distinguished_name = name;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(825);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The directory of the CA's files (`<data dir>/pki`, mode 0700).
    pub fn dir(&self) -> &Path {
        &self.dir
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

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, PkiError> {
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(PkiError::CsrTooLarge { len: csr_pem.len() });
    }
    CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)
}

/// The end of validity of the first certificate in `pem`, if it parses.
fn pem_not_after(pem: &[u8]) -> Option<OffsetDateTime> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).ok()?;
    OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp()).ok()
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
        let day = std::time::Duration::from_secs(86_400);
        let issued = pki.sign_agent_csr(&csr, "ag-0001", 30 * day).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("ag-0001"));
        assert!(matches!(
            pki.sign_agent_csr("garbage", "x", day),
            Err(PkiError::BadCsr(_))
        ));
        pki.mqtt_server_config().unwrap();
        pki.http_server_config().unwrap();
    }

    fn csr(subject: &[(DnType, &str)], sans: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let mut name = DistinguishedName::new();
        for (kind, value) in subject {
            name.push(kind.clone(), *value);
        }
        params.distinguished_name = name;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn renewal_csrs_name_only_the_agent_and_short_validities_are_barely_backdated() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let minute = std::time::Duration::from_secs(60);
        let issued = pki
            .sign_renewal_csr(&csr(&[(DnType::CommonName, "ag-1")], &[]), "ag-1", minute)
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let lifetime_s =
            parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp();
        assert_eq!(lifetime_s, 65, "60 s backdated by 5 s");
        assert_eq!(
            parsed.validity().not_after.timestamp() * 1000,
            issued.not_after_ms
        );
        for (subject, sans) in [
            (vec![(DnType::CommonName, "ag-2")], vec![]),
            (
                vec![
                    (DnType::CommonName, "ag-1"),
                    (DnType::OrganizationName, "x"),
                ],
                vec![],
            ),
            (vec![(DnType::CommonName, "ag-1")], vec!["ag-2.example"]),
            (vec![], vec![]),
        ] {
            let request = csr(&subject, &sans);
            assert!(
                matches!(
                    pki.sign_renewal_csr(&request, "ag-1", minute),
                    Err(PkiError::CsrIdentity { .. })
                ),
                "{subject:?} {sans:?} accepted"
            );
        }
        assert!(matches!(
            pki.sign_renewal_csr(&"x".repeat(MAX_CSR_BYTES + 1), "ag-1", minute),
            Err(PkiError::CsrTooLarge { .. })
        ));
        let year = pki
            .sign_agent_csr(&csr(&[], &[]), "ag-1", 365 * 24 * 60 * minute)
            .unwrap();
        let der = CertificateDer::from_pem_slice(year.cert_pem.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let backdate_s = parsed.validity().not_after.timestamp()
            - parsed.validity().not_before.timestamp()
            - 365 * 86_400;
        assert_eq!(backdate_s, 300, "long validities are backdated 5 minutes");
    }

    #[test]
    fn broker_client_identity_is_kept_until_its_last_month_then_made_anew() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        let now = OffsetDateTime::now_utc();
        let first = pki.broker_client_at(now).unwrap();
        let not_after = pem_not_after(first.0.as_bytes()).unwrap();
        assert!(not_after > now + BROKER_CLIENT_VALIDITY - Duration::minutes(1));
        // Until 30 days before its end the same identity is handed out.
        let late = not_after - BROKER_CLIENT_RENEW_BEFORE - Duration::hours(1);
        assert_eq!(pki.broker_client_at(late).unwrap(), first);
        // Within its last 30 days it is made anew: new key, valid from then on.
        let renewal = not_after - BROKER_CLIENT_RENEW_BEFORE + Duration::hours(1);
        let renewed = pki.broker_client_at(renewal).unwrap();
        assert_ne!(renewed.0, first.0);
        assert_ne!(renewed.1, first.1);
        let renewed_until = pem_not_after(renewed.0.as_bytes()).unwrap();
        assert!(renewed_until > renewal + BROKER_CLIENT_VALIDITY - Duration::minutes(1));
        assert_eq!(pki.broker_client_at(renewal).unwrap(), renewed);
        // An unreadable stored certificate is replaced, not served.
        std::fs::write(dir.path().join("broker-client.pem"), "garbage").unwrap();
        let replaced = pki.broker_client_at(now).unwrap();
        assert!(pem_not_after(replaced.0.as_bytes()).is_some());
    }
}
