//! Who may use an external broker (a NATS cluster) and how: the auth callout's decisions,
//! the JWTs it exchanges with the broker, and the broker auth config Vantage generates.
//!
//! The broker verifies every client certificate against Vantage's CA, then asks the callout
//! ([`crate::callout`]) about each connection. [`decide`] applies the front door's rules
//! (ARCHITECTURE "Security model") to what the request carries: an agent is the CN of its
//! certificate, connects over MQTT only, with its id as client id (`.` written `~`), is not
//! revoked, and may publish only its own agent-published topics and subscribe only to its own
//! `config`, `cmd` and `results/ack`; the control plane is the holder of its own client
//! certificate (OU `control-plane`). Everything else is refused. The answer is a user JWT
//! signed with the issuer nkey the broker's config names ([`BrokerSecrets::auth_config`]).
//!
//! Pure: no I/O but [`BrokerSecrets::load_or_create`]'s files, so every rule is unit-tested.

use std::fs;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use vantage_mqtt::topic::{self, AgentTopic};

/// The account of the callout's own user (auth users bypass the callout).
pub const AUTH_ACCOUNT: &str = "VANTAGE_AUTH";
/// The account agents and the control plane share on the broker.
pub const APP_ACCOUNT: &str = "VANTAGE";
/// The broker's system account (the control plane kicks revoked agents' connections there).
pub const SYSTEM_ACCOUNT: &str = "SYS";
/// The user the callout service connects as.
pub const CALLOUT_USER: &str = "vantage-callout";
/// The system-account user the control plane looks up and kicks connections as.
pub const SYSTEM_USER: &str = "vantage-system";
/// The control plane's users on the broker, each with a password of its own
/// ([`BrokerSecrets::password`]) and only the subjects its task needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerUser {
    /// [`CALLOUT_USER`]: receives authorization requests and answers them.
    Callout,
    /// [`SYSTEM_USER`]: looks up and closes revoked agents' connections.
    System,
}

impl BrokerUser {
    /// The user's name in the generated config.
    pub fn name(self) -> &'static str {
        match self {
            BrokerUser::Callout => CALLOUT_USER,
            BrokerUser::System => SYSTEM_USER,
        }
    }
}

/// The subject the broker sends authorization requests to.
pub const CALLOUT_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// bcrypt cost of the passwords in the generated config: checked once per control-plane
/// connection, never per agent.
const BCRYPT_COST: u32 = 10;
/// The longest certificate PEM the callout parses (a leaf certificate is ~1 KiB).
const MAX_PEM_BYTES: usize = 16 * 1024;

/// Errors of the broker's authorization.
#[derive(Debug, thiserror::Error)]
pub enum BrokerAuthError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is missing: run `vantage broker-config` in one replica's data dir and copy its pki/broker-* files to the others"
    )]
    Missing { path: std::path::PathBuf },
    #[error("the broker issuer key in {path} is not a valid account seed")]
    BadSeed { path: std::path::PathBuf },
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("cannot hash a broker password: {0}")]
    Hash(String),
    #[error("the authorization request is not valid: {0}")]
    BadRequest(&'static str),
}

/// The issuer key of the callout's answers and the secret the control plane's broker users'
/// passwords derive from, kept in `<data dir>/pki` (mode 0600) beside the CA, and copied with it to every
/// replica.
pub struct BrokerSecrets {
    issuer: nkeys::KeyPair,
    /// What each user's password derives from ([`BrokerSecrets::password`]).
    secret: String,
}

impl std::fmt::Debug for BrokerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSecrets")
            .field("issuer", &self.issuer.public_key())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl BrokerSecrets {
    /// Loads the secrets from `pki_dir`, creating what is missing (`vantage broker-config`;
    /// a replica only loads them, [`BrokerSecrets::load`]).
    ///
    /// # Errors
    /// I/O errors or a stored seed that does not parse.
    pub fn load_or_create(pki_dir: &Path) -> Result<BrokerSecrets, BrokerAuthError> {
        let seed_path = pki_dir.join("broker-issuer.nk");
        let password_path = pki_dir.join("broker-users.secret");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BrokerAuthError::Io { path, source }
        };
        if !seed_path.exists() {
            let seed = nkeys::KeyPair::new_account()
                .seed()
                .map_err(|e| BrokerAuthError::Sign(e.to_string()))?;
            vantage_agent::files::write_atomic(&seed_path, seed.as_bytes(), 0o600)
                .map_err(io(&seed_path))?;
        }
        if !password_path.exists() {
            let mut bytes = [0u8; 24];
            rand::fill(&mut bytes[..]);
            vantage_agent::files::write_atomic(
                &password_path,
                hex::encode(bytes).as_bytes(),
                0o600,
            )
            .map_err(io(&password_path))?;
        }
        let seed = fs::read_to_string(&seed_path).map_err(io(&seed_path))?;
        let issuer =
            nkeys::KeyPair::from_seed(seed.trim()).map_err(|_| BrokerAuthError::BadSeed {
                path: seed_path.clone(),
            })?;
        if issuer.key_pair_type() != nkeys::KeyPairType::Account {
            return Err(BrokerAuthError::BadSeed { path: seed_path });
        }
        let password = fs::read_to_string(&password_path)
            .map_err(io(&password_path))?
            .trim()
            .to_owned();
        Ok(BrokerSecrets {
            issuer,
            secret: password,
        })
    }

    /// Loads the secrets `vantage broker-config` created in `pki_dir` (copied there with the
    /// CA on every other replica). A replica never creates them: its own would not match the
    /// broker's config.
    ///
    /// # Errors
    /// A missing file ([`BrokerAuthError::Missing`]), I/O errors, a seed that does not parse.
    pub fn load(pki_dir: &Path) -> Result<BrokerSecrets, BrokerAuthError> {
        for name in ["broker-issuer.nk", "broker-users.secret"] {
            let path = pki_dir.join(name);
            if !path.exists() {
                return Err(BrokerAuthError::Missing { path });
            }
        }
        Self::load_or_create(pki_dir)
    }

    /// The public key the broker's `auth_callout { issuer }` names.
    pub fn issuer_public(&self) -> String {
        self.issuer.public_key()
    }

    /// The password of `user`: an HMAC-SHA256 of the user's name keyed with the stored
    /// secret, so each user has its own and one does not reveal another.
    pub fn password(&self, user: BrokerUser) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.secret.as_bytes());
        hex::encode(ring::hmac::sign(&key, user.name().as_bytes()).as_ref())
    }

    /// The accounts, users and auth callout block every broker node includes: the control
    /// plane's two users with bcrypt-hashed passwords (the file reveals no secret), each
    /// allowed only its task's subjects (the callout user receives authorization requests
    /// and may publish only replies; the system user may only ask for connections and
    /// close them, and read replies on its inbox), the application account with JetStream,
    /// and the callout's issuer.
    ///
    /// # Errors
    /// bcrypt failures.
    pub fn auth_config(&self) -> Result<String, BrokerAuthError> {
        let hash = |password: &str| {
            bcrypt::hash_with_result(password, BCRYPT_COST)
                .map(|h| h.format_for_version(bcrypt::Version::TwoA))
                .map_err(|e| BrokerAuthError::Hash(e.to_string()))
        };
        Ok(format!(
            "# Generated by `vantage broker-config`: accounts and the auth callout of a broker\n\
             # whose agents Vantage authorizes. Include it from every node's config.\n\
             accounts {{\n  \
               {AUTH_ACCOUNT} {{ users: [ {{ user: \"{CALLOUT_USER}\", password: \"{callout}\",\n      \
                 permissions: {{ subscribe: [ \"{CALLOUT_SUBJECT}\" ], publish: {{ deny: [ \">\" ] }}, allow_responses: true }} }} ] }}\n  \
               {APP_ACCOUNT} {{ jetstream: enabled }}\n  \
               {SYSTEM_ACCOUNT} {{ users: [ {{ user: \"{SYSTEM_USER}\", password: \"{system}\",\n      \
                 permissions: {{ publish: [ \"$SYS.REQ.SERVER.PING.CONNZ\", \"$SYS.REQ.SERVER.*.KICK\" ], subscribe: [ \"_INBOX.>\" ] }} }} ] }}\n\
             }}\n\
             system_account: {SYSTEM_ACCOUNT}\n\
             authorization {{\n  \
               auth_callout {{\n    \
                 issuer: {issuer}\n    \
                 auth_users: [ \"{CALLOUT_USER}\", \"{SYSTEM_USER}\" ]\n    \
                 account: {AUTH_ACCOUNT}\n  \
               }}\n\
             }}\n",
            callout = hash(&self.password(BrokerUser::Callout))?,
            system = hash(&self.password(BrokerUser::System))?,
            issuer = self.issuer_public(),
        ))
    }

    /// Signs `claims` (with `iss`, `iat` and `jti` added) into a JWT the broker accepts.
    fn sign(&self, mut claims: Value, now_s: i64) -> Result<String, BrokerAuthError> {
        let mut jti = [0u8; 16];
        rand::fill(&mut jti[..]);
        claims["iss"] = json!(self.issuer_public());
        claims["iat"] = json!(now_s);
        claims["jti"] = json!(URL_SAFE_NO_PAD.encode(jti));
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let signature = self
            .issuer
            .sign(signed.as_bytes())
            .map_err(|e| BrokerAuthError::Sign(e.to_string()))?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// The kind of connection asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Mqtt,
    /// The broker's own protocol (or any other: websocket, leaf node).
    Other,
}

/// What the callout needs from an authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The asking server's id (its public nkey): the answer's audience.
    pub server_id: String,
    /// The connection's own nkey: the subject of the user JWT.
    pub user_nkey: String,
    /// The connection's id on that server (the broker's `cid`).
    pub client_cid: u64,
    pub kind: ClientKind,
    /// The MQTT client id, for MQTT connections.
    pub mqtt_client_id: Option<String>,
    /// The verified leaf certificate, PEM, when the client presented one.
    pub leaf_pem: Option<String>,
}

fn unb64(part: &str) -> Result<Vec<u8>, BrokerAuthError> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| BrokerAuthError::BadRequest("a JWT part is not base64url"))
}

/// Decodes an authorization request JWT and verifies it was signed by the server it names.
///
/// # Errors
/// [`BrokerAuthError::BadRequest`] for anything that is not a well-formed, correctly signed
/// request.
pub fn decode_request(jwt: &[u8]) -> Result<AuthRequest, BrokerAuthError> {
    let bad = BrokerAuthError::BadRequest;
    let text = std::str::from_utf8(jwt).map_err(|_| bad("not UTF-8"))?;
    let mut parts = text.trim().split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a JWT"));
    };
    let claims: Value =
        serde_json::from_slice(&unb64(payload)?).map_err(|_| bad("claims are not JSON"))?;
    let issuer = claims["iss"].as_str().ok_or(bad("no issuer"))?;
    let key = nkeys::KeyPair::from_public_key(issuer).map_err(|_| bad("issuer is not an nkey"))?;
    if key.key_pair_type() != nkeys::KeyPairType::Server {
        return Err(bad("issuer is not a server key"));
    }
    key.verify(format!("{header}.{payload}").as_bytes(), &unb64(signature)?)
        .map_err(|_| bad("signature does not verify"))?;
    let nats = &claims["nats"];
    if nats["type"] != "authorization_request" {
        return Err(bad("not an authorization request"));
    }
    let server_id = nats["server_id"]["id"]
        .as_str()
        .ok_or(bad("no server id"))?;
    if server_id != issuer {
        return Err(bad("signed by another key than the server's"));
    }
    let user_nkey = nats["user_nkey"].as_str().ok_or(bad("no user nkey"))?;
    let client = &nats["client_info"];
    let kind = match client["type"].as_str() {
        Some("mqtt") => ClientKind::Mqtt,
        _ => ClientKind::Other,
    };
    let leaf_pem = nats["client_tls"]["verified_chains"][0][0]
        .as_str()
        .map(str::to_owned);
    Ok(AuthRequest {
        server_id: server_id.to_owned(),
        user_nkey: user_nkey.to_owned(),
        client_cid: client["id"].as_u64().unwrap_or(0),
        kind,
        mqtt_client_id: client["mqtt_id"].as_str().map(str::to_owned),
        leaf_pem,
    })
}

/// Who a connection is, once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerIdentity {
    Agent(String),
    ControlPlane,
}

/// Why a connection was refused; each maps to one counter ([`Refusal::counter`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no verified client certificate")]
    NoCertificate,
    #[error("certificate subject {0:?} is neither an agent's nor the control plane's")]
    Subject(String),
    #[error("agent {0:?} must connect over MQTT")]
    NotMqtt(String),
    #[error("client id {client_id:?} is not the certificate's CN {agent:?} ('.' written '~')")]
    Identity { client_id: String, agent: String },
    #[error("agent {0:?} is revoked")]
    Revoked(String),
}

impl Refusal {
    /// The counter this refusal adds to.
    pub fn counter<'c>(
        &self,
        counters: &'c crate::counters::Counters,
    ) -> &'c std::sync::atomic::AtomicU64 {
        match self {
            Refusal::NoCertificate => &counters.broker_refused_no_certificate,
            Refusal::Subject(_) => &counters.broker_refused_subject,
            Refusal::NotMqtt(_) => &counters.broker_refused_not_mqtt,
            Refusal::Identity { .. } => &counters.broker_refused_identity,
            Refusal::Revoked(_) => &counters.broker_refused_revoked,
        }
    }
}

/// Subjects a connection may publish and subscribe to, and whether it must use MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub mqtt_only: bool,
}

/// An agent's permissions: publish its own agent-published topics, subscribe to its own
/// `config`, `cmd` and `results/ack`, nothing else ([`topic::agent_may_publish`] and
/// [`topic::agent_may_subscribe`] on the broker's subjects).
pub fn agent_permissions(id: &str) -> Permissions {
    let subject = |kind| topic::nats_subject(&topic::agent(id, kind));
    Permissions {
        publish: AgentTopic::ALL
            .into_iter()
            .filter(|kind| kind.is_agent_published())
            .map(subject)
            .collect(),
        subscribe: [AgentTopic::Config, AgentTopic::Cmd, AgentTopic::ResultsAck]
            .into_iter()
            .map(subject)
            .collect(),
        mqtt_only: true,
    }
}

/// The control plane's permissions: everything under Vantage's topics, JetStream's API and
/// its acks, and reply inboxes.
pub fn control_plane_permissions() -> Permissions {
    let all = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
    Permissions {
        publish: all(&["vantage.>", "$JS.API.>", "$JS.ACK.>", "_INBOX.>"]),
        subscribe: all(&["vantage.>", "_INBOX.>"]),
        mqtt_only: false,
    }
}

/// The subject of a certificate: each attribute as (short name, value).
fn subject_of(pem: &str) -> Option<Vec<(String, String)>> {
    if pem.len() > MAX_PEM_BYTES {
        return None;
    }
    use rustls_pki_types::pem::PemObject as _;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let registry = x509_parser::objects::oid_registry();
    cert.subject()
        .iter_attributes()
        .map(|attribute| {
            let name = x509_parser::objects::oid2abbrev(attribute.attr_type(), registry)
                .map_or_else(|_| attribute.attr_type().to_id_string(), str::to_owned);
            Some((name, attribute.as_str().ok()?.to_owned()))
        })
        .collect()
}

/// Decides a connection: who it is and what it may do, or why not. `is_revoked` answers from
/// the store's revoked set.
///
/// # Errors
/// The [`Refusal`].
pub fn decide(
    request: &AuthRequest,
    is_revoked: impl Fn(&str) -> bool,
) -> Result<(BrokerIdentity, Permissions), Refusal> {
    let pem = request.leaf_pem.as_deref().ok_or(Refusal::NoCertificate)?;
    let subject = subject_of(pem).ok_or(Refusal::NoCertificate)?;
    let rendered = || {
        subject
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut sorted = subject.clone();
    sorted.sort();
    if sorted
        == [
            ("CN".to_owned(), "vantage-control-plane".to_owned()),
            ("OU".to_owned(), crate::pki::CONTROL_PLANE_OU.to_owned()),
        ]
    {
        return Ok((BrokerIdentity::ControlPlane, control_plane_permissions()));
    }
    let [(name, id)] = subject.as_slice() else {
        return Err(Refusal::Subject(rendered()));
    };
    if name != "CN" || !topic::valid_id(id) {
        return Err(Refusal::Subject(rendered()));
    }
    if request.kind != ClientKind::Mqtt {
        return Err(Refusal::NotMqtt(id.clone()));
    }
    let client_id = request.mqtt_client_id.clone().unwrap_or_default();
    if client_id != topic::nats_client_id(id) {
        return Err(Refusal::Identity {
            client_id,
            agent: id.clone(),
        });
    }
    if is_revoked(id) {
        return Err(Refusal::Revoked(id.clone()));
    }
    Ok((BrokerIdentity::Agent(id.clone()), agent_permissions(id)))
}

/// The signed answer to `request`: a user JWT in [`APP_ACCOUNT`] with `permissions`, or the
/// refusal's reason.
///
/// # Errors
/// Signing failures.
pub fn respond(
    secrets: &BrokerSecrets,
    request: &AuthRequest,
    decision: &Result<(BrokerIdentity, Permissions), Refusal>,
    now_s: i64,
) -> Result<String, BrokerAuthError> {
    let mut nats = json!({"type": "authorization_response", "version": 2});
    match decision {
        Ok((identity, permissions)) => {
            let name = match identity {
                BrokerIdentity::Agent(id) => id.clone(),
                BrokerIdentity::ControlPlane => "vantage-control-plane".to_owned(),
            };
            let mut user = json!({
                "type": "user",
                "version": 2,
                "pub": {"allow": permissions.publish},
                "sub": {"allow": permissions.subscribe},
            });
            if permissions.mqtt_only {
                user["allowed_connection_types"] = json!(["MQTT"]);
            }
            let claims = json!({
                "sub": request.user_nkey,
                "aud": APP_ACCOUNT,
                "name": name,
                "nats": user,
            });
            nats["jwt"] = json!(secrets.sign(claims, now_s)?);
        }
        Err(refusal) => nats["error"] = json!(refusal.to_string()),
    }
    secrets.sign(
        json!({"sub": request.user_nkey, "aud": request.server_id, "nats": nats}),
        now_s,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> (tempfile::TempDir, crate::pki::Pki) {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::Pki::load_or_create(dir.path(), &[]).unwrap();
        (dir, pki)
    }

    fn agent_pem(pki: &crate::pki::Pki, id: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        pki.sign_agent_csr(&csr, id, std::time::Duration::from_secs(3600))
            .unwrap()
            .cert_pem
    }

    fn request(leaf: Option<String>, kind: ClientKind, client_id: &str) -> AuthRequest {
        AuthRequest {
            server_id: "NSERVER".into(),
            user_nkey: "UUSER".into(),
            client_cid: 7,
            kind,
            mqtt_client_id: Some(client_id.into()),
            leaf_pem: leaf,
        }
    }

    #[test]
    fn agents_get_their_own_topics_and_everything_else_is_refused() {
        let (_dir, pki) = pki();
        let pem = agent_pem(&pki, "edge.7");
        let never = |_: &str| false;
        let (identity, permissions) = decide(
            &request(Some(pem.clone()), ClientKind::Mqtt, "edge~7"),
            never,
        )
        .unwrap();
        assert_eq!(identity, BrokerIdentity::Agent("edge.7".into()));
        assert!(permissions.mqtt_only);
        assert!(
            permissions
                .publish
                .contains(&"vantage.v1.agents.edge//7.results".to_owned())
        );
        assert_eq!(permissions.publish.len(), 8, "{permissions:?}");
        assert!(!permissions.publish.iter().any(|s| s.ends_with(".config")
            || s.ends_with(".cmd")
            || s.ends_with(".results.ack")
            || s.contains('*')
            || s.contains('>')));
        assert_eq!(
            permissions.subscribe,
            [
                "vantage.v1.agents.edge//7.config",
                "vantage.v1.agents.edge//7.cmd",
                "vantage.v1.agents.edge//7.results.ack"
            ]
        );
        // Another agent's client id, the native protocol, a revoked agent, no certificate.
        assert!(matches!(
            decide(
                &request(Some(pem.clone()), ClientKind::Mqtt, "edge.8"),
                never
            ),
            Err(Refusal::Identity { .. })
        ));
        assert!(matches!(
            decide(
                &request(Some(pem.clone()), ClientKind::Mqtt, "edge.7"),
                never
            ),
            Err(Refusal::Identity { .. })
        ));
        assert_eq!(
            decide(
                &request(Some(pem.clone()), ClientKind::Other, "edge~7"),
                never
            ),
            Err(Refusal::NotMqtt("edge.7".into()))
        );
        assert_eq!(
            decide(&request(Some(pem), ClientKind::Mqtt, "edge~7"), |id| id
                == "edge.7"),
            Err(Refusal::Revoked("edge.7".into()))
        );
        assert_eq!(
            decide(&request(None, ClientKind::Mqtt, "edge~7"), never),
            Err(Refusal::NoCertificate)
        );
        assert_eq!(
            decide(
                &request(Some("garbage".into()), ClientKind::Mqtt, "x"),
                never
            ),
            Err(Refusal::NoCertificate)
        );
        // The broker's own server certificate is no agent.
        let (broker_pem, _) = pki.issue_broker_server(&[]).unwrap();
        assert!(matches!(
            decide(
                &request(Some(broker_pem), ClientKind::Mqtt, "vantage-broker"),
                never
            ),
            Err(Refusal::Subject(_))
        ));
    }

    #[test]
    fn the_control_plane_is_its_own_certificate_not_an_agent_named_like_it() {
        let (_dir, pki) = pki();
        let (cert, _) = pki.broker_client().unwrap();
        let (identity, permissions) =
            decide(&request(Some(cert), ClientKind::Other, "x"), |_| true).unwrap();
        assert_eq!(identity, BrokerIdentity::ControlPlane);
        assert!(!permissions.mqtt_only);
        let lookalike = agent_pem(&pki, "vantage-control-plane");
        let (identity, permissions) = decide(
            &request(Some(lookalike), ClientKind::Mqtt, "vantage-control-plane"),
            |_| false,
        )
        .unwrap();
        assert_eq!(
            identity,
            BrokerIdentity::Agent("vantage-control-plane".into())
        );
        assert!(permissions.mqtt_only);
    }

    #[test]
    fn answers_are_signed_jwts_the_issuer_key_verifies_and_requests_must_be_signed() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = BrokerSecrets::load_or_create(dir.path()).unwrap();
        let again = BrokerSecrets::load_or_create(dir.path()).unwrap();
        assert_eq!(secrets.issuer_public(), again.issuer_public());
        let (callout, system) = (
            secrets.password(BrokerUser::Callout),
            secrets.password(BrokerUser::System),
        );
        assert_eq!(callout, again.password(BrokerUser::Callout));
        assert_ne!(callout, system, "each user has its own password");
        assert_ne!(
            callout, secrets.secret,
            "the stored secret is not a password"
        );
        let config = secrets.auth_config().unwrap();
        assert!(config.contains(&secrets.issuer_public()));
        for secret in [&callout, &system, &secrets.secret] {
            assert!(!format!("{secrets:?}").contains(secret.as_str()));
            assert!(!config.contains(secret.as_str()), "{config}");
        }
        // Each hash in the config verifies its own user's password only.
        let hashes: Vec<&str> = config
            .split("password: \"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        assert_eq!(hashes.len(), 2, "{config}");
        assert!(bcrypt::verify(&callout, hashes[0]).unwrap());
        assert!(!bcrypt::verify(&system, hashes[0]).unwrap());
        assert!(bcrypt::verify(&system, hashes[1]).unwrap());
        assert!(!bcrypt::verify(&callout, hashes[1]).unwrap());

        // A request signed by a server key decodes; a tampered one does not.
        let server = nkeys::KeyPair::new_server();
        let claims = json!({"iss": server.public_key(), "nats": {
            "type": "authorization_request", "server_id": {"id": server.public_key()},
            "user_nkey": "UABC", "client_info": {"type": "mqtt", "mqtt_id": "ag-1", "id": 42},
            "client_tls": {"verified_chains": [["PEM"]]}}});
        let header = URL_SAFE_NO_PAD.encode(b"{}");
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signature = server
            .sign(format!("{header}.{payload}").as_bytes())
            .unwrap();
        let jwt = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(&signature));
        let request = decode_request(jwt.as_bytes()).unwrap();
        assert_eq!(request.client_cid, 42);
        assert_eq!(request.kind, ClientKind::Mqtt);
        assert_eq!(request.leaf_pem.as_deref(), Some("PEM"));
        let forged = format!(
            "{header}.{}.{}",
            URL_SAFE_NO_PAD.encode(claims.to_string().replace("ag-1", "ag-2")),
            URL_SAFE_NO_PAD.encode(signature)
        );
        assert!(decode_request(forged.as_bytes()).is_err());
        // Signed by a key that is no server's (an account's, a user's): refused.
        let account = nkeys::KeyPair::new_account();
        let claims = json!({"iss": account.public_key(), "nats": {
            "type": "authorization_request", "server_id": {"id": account.public_key()},
            "user_nkey": "UABC", "client_info": {"type": "mqtt", "mqtt_id": "ag-1"}}});
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signature = account
            .sign(format!("{header}.{payload}").as_bytes())
            .unwrap();
        let by_account = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(&signature));
        assert!(decode_request(by_account.as_bytes()).is_err());
        assert!(decode_request(b"not a jwt").is_err());

        let answer = respond(
            &secrets,
            &request,
            &Ok((
                BrokerIdentity::Agent("ag-1".into()),
                agent_permissions("ag-1"),
            )),
            1_700_000_000,
        )
        .unwrap();
        let parts: Vec<&str> = answer.split('.').collect();
        let issuer = nkeys::KeyPair::from_public_key(&secrets.issuer_public()).unwrap();
        issuer
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &unb64(parts[2]).unwrap(),
            )
            .unwrap();
        let outer: Value = serde_json::from_slice(&unb64(parts[1]).unwrap()).unwrap();
        assert_eq!(outer["aud"], server.public_key());
        assert_eq!(outer["sub"], "UABC");
        let user_jwt = outer["nats"]["jwt"].as_str().unwrap();
        let user: Value =
            serde_json::from_slice(&unb64(user_jwt.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(user["aud"], APP_ACCOUNT);
        assert_eq!(user["nats"]["allowed_connection_types"], json!(["MQTT"]));
        let refused =
            respond(&secrets, &request, &Err(Refusal::Revoked("ag-1".into())), 1).unwrap();
        let outer: Value =
            serde_json::from_slice(&unb64(refused.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert!(outer["nats"]["error"].as_str().unwrap().contains("revoked"));
        assert!(outer["nats"].get("jwt").is_none());
    }
}
