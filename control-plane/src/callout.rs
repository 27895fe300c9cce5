//! The auth callout for an external broker (NATS ≥ 2.10): answers the broker's
//! authorization requests with [`crate::brokerauth::decide`], and closes the broker
//! connections of agents revoked while connected.
//!
//! Every replica runs it: the callout subscription is a queue group, so each request is
//! answered by one replica; each replica kicks the agents it sees revoked (its own revokes at
//! once, other replicas' within the revoked set's 2 s refresh), and a kick of a connection
//! already closed is harmless. While no replica answers, the broker refuses new connections
//! after its callout timeout; connections already open stay.
//!
//! Both connections use the control plane's broker client certificate (the broker requires
//! one on every port) and the users of the generated auth config
//! ([`crate::brokerauth::BrokerSecrets::auth_config`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use vantage_mqtt::topic;

use crate::AppState;
use crate::brokerauth::{self, BrokerIdentity, BrokerSecrets, BrokerUser};

/// The queue group the replicas answer callout requests in.
const QUEUE_GROUP: &str = "vantage-callout";
/// Wait between attempts to reach the broker.
const RETRY: Duration = Duration::from_secs(2);
/// How often the revoked set is compared with what was already kicked.
const KICK_POLL: Duration = Duration::from_millis(500);
/// How long the servers' answers to one connection lookup are collected.
const LOOKUP_WINDOW: Duration = Duration::from_millis(750);
/// Most revoked agents looked up in one round (the rest wait for the next).
const KICKS_PER_ROUND: usize = 256;
/// After its first kick, a revoked agent is looked up again after each of these delays
/// (counted from the kick before): a node that did not answer within the lookup window, or
/// was cut off from this replica, is asked again.
const KICK_FOLLOW_UPS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(300),
];

/// Which revoked agents are due for a kick: each new one at once, then again after each of
/// [`KICK_FOLLOW_UPS`]; at most [`KICKS_PER_ROUND`] per round.
#[derive(Debug, Default)]
struct KickSchedule {
    /// Per revoked agent already kicked: the kicks made and when the next is due (`None`
    /// after the last).
    kicked: HashMap<String, (usize, Option<tokio::time::Instant>)>,
}

impl KickSchedule {
    /// A schedule that treats `revoked` as kicked long ago (they were revoked before this
    /// process started; the callout refuses them anyway).
    fn settled(revoked: HashSet<String>) -> Self {
        Self {
            kicked: revoked
                .into_iter()
                .map(|id| (id, (KICK_FOLLOW_UPS.len() + 1, None)))
                .collect(),
        }
    }

    /// The agents due at `now` out of the currently `revoked`; ids no longer revoked (a
    /// store restored from a backup) are forgotten.
    fn due(&mut self, revoked: &HashSet<String>, now: tokio::time::Instant) -> Vec<String> {
        self.kicked.retain(|id, _| revoked.contains(id));
        revoked
            .iter()
            .filter(|id| match self.kicked.get(*id) {
                None => true,
                Some((_, next)) => next.is_some_and(|at| at <= now),
            })
            .take(KICKS_PER_ROUND)
            .cloned()
            .collect()
    }

    /// Notes that `ids` were kicked at `now`.
    fn done(&mut self, ids: Vec<String>, now: tokio::time::Instant) {
        for id in ids {
            let made = self.kicked.get(&id).map_or(0, |(made, _)| *made) + 1;
            let next = KICK_FOLLOW_UPS.get(made - 1).map(|wait| now + *wait);
            self.kicked.insert(id, (made, next));
        }
    }
}

/// Errors of the callout service.
#[derive(Debug, thiserror::Error)]
pub enum CalloutError {
    #[error("broker secrets: {0}")]
    Secrets(#[from] brokerauth::BrokerAuthError),
    #[error("the control plane's broker certificate: {0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("TLS: {0}")]
    Tls(#[from] vantage_agent::tls::TlsError),
    #[error("cannot reach the broker: {0}")]
    Connect(String),
    #[error("broker request failed: {0}")]
    Request(String),
}

/// The mutual-TLS client configuration of the control plane towards the broker cluster:
/// each handshake presents the control plane's broker client identity as it is then
/// ([`CurrentBrokerIdentity`]), so a long-lived client's reconnects carry a renewed one.
///
/// # Errors
/// The CA does not parse.
pub(crate) fn broker_tls(
    pki: &std::sync::Arc<crate::pki::Pki>,
) -> Result<rustls::ClientConfig, CalloutError> {
    Ok(vantage_agent::tls::mutual_client_resolving(
        pki.ca_pem(),
        std::sync::Arc::new(CurrentBrokerIdentity::new(pki.clone())),
    )?)
}

/// Resolves the control plane's broker client identity at every TLS handshake from
/// [`crate::pki::Pki::broker_client`], which renews it near its end; a certificate is parsed
/// once and reused while the stored one stays the same. A NATS client keeps its TLS
/// configuration for its whole life and reconnects with it, so a fixed identity would
/// expire under a long-running replica.
pub(crate) struct CurrentBrokerIdentity {
    pki: std::sync::Arc<crate::pki::Pki>,
    /// The certificate PEM last read and its parsed identity.
    parsed: std::sync::Mutex<Option<(String, std::sync::Arc<rustls::sign::CertifiedKey>)>>,
}

impl CurrentBrokerIdentity {
    pub(crate) fn new(pki: std::sync::Arc<crate::pki::Pki>) -> Self {
        Self {
            pki,
            parsed: std::sync::Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for CurrentBrokerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentBrokerIdentity")
    }
}

impl rustls::client::ResolvesClientCert for CurrentBrokerIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        let (cert, key) = match self.pki.broker_client() {
            Ok(identity) => identity,
            Err(error) => {
                tracing::warn!(%error, "Cannot read the broker client identity");
                return None;
            }
        };
        let mut parsed = self
            .parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((pem, certified)) = parsed.as_ref()
            && *pem == cert
        {
            return Some(certified.clone());
        }
        match vantage_agent::tls::certified_key(&cert, &key) {
            Ok(certified) => {
                let certified = std::sync::Arc::new(certified);
                *parsed = Some((cert, certified.clone()));
                Some(certified)
            }
            Err(error) => {
                tracing::warn!(%error, "The broker client identity does not parse");
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Connects to the broker at `urls` (comma-separated) with the control plane's broker
/// client certificate, as `user` (an auth-config user: user name and password) or, without
/// one, as the control plane the callout authorizes.
pub(crate) async fn connect(
    state: &AppState,
    urls: &str,
    user: Option<(&str, &str)>,
    name: &str,
) -> Result<async_nats::Client, CalloutError> {
    let tls = broker_tls(&state.pki)?;
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|url| url.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| CalloutError::Connect(e.to_string()))?;
    let mut options = async_nats::ConnectOptions::new();
    if let Some((user, password)) = user {
        options = options.user_and_password(user.to_owned(), password.to_owned());
    }
    options
        .name(name)
        .tls_client_config(tls)
        .require_tls(true)
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .map_err(|e| CalloutError::Connect(e.to_string()))
}

/// Runs the callout and the revocation kicker until the process ends, reconnecting after
/// any failure.
pub async fn run(state: AppState, urls: String) {
    let secrets = match BrokerSecrets::load(state.pki.dir()) {
        Ok(secrets) => std::sync::Arc::new(secrets),
        Err(error) => {
            tracing::error!(%error, "The broker callout cannot start");
            return;
        }
    };
    let kicker = tokio::spawn(kick_revoked(state.clone(), secrets.clone(), urls.clone()));
    let _kicker = crate::lease::AbortOnDrop(kicker);
    loop {
        match answer(&state, &secrets, &urls).await {
            Ok(()) => tracing::warn!("The broker callout subscription ended; resubscribing"),
            Err(error) => tracing::warn!(%error, "The broker callout is not serving"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Answers authorization requests until the subscription ends.
async fn answer(state: &AppState, secrets: &BrokerSecrets, urls: &str) -> Result<(), CalloutError> {
    let client = connect(
        state,
        urls,
        Some((
            brokerauth::CALLOUT_USER,
            &secrets.password(BrokerUser::Callout),
        )),
        "vantage callout",
    )
    .await?;
    let mut requests = client
        .queue_subscribe(brokerauth::CALLOUT_SUBJECT, QUEUE_GROUP.to_owned())
        .await
        .map_err(|e| CalloutError::Request(e.to_string()))?;
    tracing::info!("Answering the broker's authorization requests");
    let counters = &state.counters;
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply else {
            counters
                .broker_requests_invalid
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let request = match brokerauth::decode_request(&message.payload) {
            Ok(request) => request,
            Err(error) => {
                counters
                    .broker_requests_invalid
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "Ignoring an authorization request");
                continue;
            }
        };
        let decision = brokerauth::decide(&request, |id| state.registry.is_revoked(id));
        match &decision {
            Ok((BrokerIdentity::Agent(_), _)) => &counters.broker_allowed_agent,
            Ok((BrokerIdentity::ControlPlane, _)) => &counters.broker_allowed_control_plane,
            Err(refusal) => {
                tracing::info!(reason = %refusal, server = %request.server_id, "Broker connection refused");
                refusal.counter(counters)
            }
        }
        .fetch_add(1, Ordering::Relaxed);
        let answer =
            brokerauth::respond(secrets, &request, &decision, crate::store::now_ms() / 1000)?;
        if let Err(error) = client.publish(reply, answer.into()).await {
            tracing::warn!(%error, "Cannot answer an authorization request");
        }
    }
    Ok(())
}

/// Closes the broker connections of agents revoked after this task started, at once and
/// again after each of [`KICK_FOLLOW_UPS`] (agents revoked before are refused by the callout
/// at their next connection, and were kicked by the replica that revoked them).
async fn kick_revoked(state: AppState, secrets: std::sync::Arc<BrokerSecrets>, urls: String) {
    let mut schedule = KickSchedule::settled(state.registry.revoked_ids());
    loop {
        let client = match connect(
            &state,
            &urls,
            Some((
                brokerauth::SYSTEM_USER,
                &secrets.password(BrokerUser::System),
            )),
            "vantage revocations",
        )
        .await
        {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "Cannot reach the broker's system account");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(KICK_POLL);
        loop {
            tick.tick().await;
            let todo = schedule.due(&state.registry.revoked_ids(), tokio::time::Instant::now());
            if todo.is_empty() {
                continue;
            }
            match kick(&client, &todo).await {
                Ok(kicked) => {
                    state
                        .counters
                        .broker_kicks
                        .fetch_add(kicked, Ordering::Relaxed);
                    schedule.done(todo, tokio::time::Instant::now());
                }
                Err(error) => {
                    // Not noted as done: they are due again at the next round.
                    state
                        .counters
                        .broker_kick_failures
                        .fetch_add(todo.len() as u64, Ordering::Relaxed);
                    tracing::warn!(%error, "Cannot close revoked agents' broker connections");
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Finds every server's connections of the agents `ids` and tells each server to close
/// them; the number closed.
async fn kick(client: &async_nats::Client, ids: &[String]) -> Result<u64, CalloutError> {
    let request_error = |e: &dyn std::fmt::Display| CalloutError::Request(e.to_string());
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| request_error(&e))?;
    let wanted: HashMap<String, &String> = ids
        .iter()
        .map(|id| (topic::nats_client_id(id), id))
        .collect();
    for client_id in wanted.keys() {
        client
            .publish_with_reply(
                "$SYS.REQ.SERVER.PING.CONNZ",
                inbox.clone(),
                json!({ "mqtt_client": client_id }).to_string().into(),
            )
            .await
            .map_err(|e| request_error(&e))?;
    }
    client.flush().await.map_err(|e| request_error(&e))?;
    let mut targets: Vec<(String, u64)> = Vec::new();
    let deadline = tokio::time::Instant::now() + LOOKUP_WINDOW;
    while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await {
        let Ok(answer) = serde_json::from_slice::<Value>(&answer.payload) else {
            continue;
        };
        let Some(server) = answer["server"]["id"].as_str() else {
            continue;
        };
        for conn in answer["data"]["connections"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let (Some(cid), Some(client_id)) =
                (conn["cid"].as_u64(), conn["mqtt_client"].as_str())
                && wanted.contains_key(client_id)
            {
                targets.push((server.to_owned(), cid));
            }
        }
    }
    let mut kicked = 0;
    for (server, cid) in targets {
        let answer = client
            .request(
                format!("$SYS.REQ.SERVER.{server}.KICK"),
                json!({ "cid": cid }).to_string().into(),
            )
            .await
            .map_err(|e| request_error(&e))?;
        let answer: Value = serde_json::from_slice(&answer.payload).unwrap_or(Value::Null);
        if answer.get("error").is_some_and(|e| !e.is_null()) {
            tracing::warn!(%server, cid, error = %answer["error"], "The broker did not close a revoked agent's connection");
        } else {
            tracing::info!(%server, cid, "Closed a revoked agent's broker connection");
            kicked += 1;
        }
    }
    Ok(kicked)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One in-memory TLS handshake; the certificate the client presented, as the server saw it.
    fn presented(
        client: &std::sync::Arc<rustls::ClientConfig>,
        server: &std::sync::Arc<rustls::ServerConfig>,
    ) -> Vec<u8> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client.clone(), name).unwrap();
        let mut server = rustls::ServerConnection::new(server.clone()).unwrap();
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut bytes.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut bytes.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!server.is_handshaking(), "the handshake did not finish");
        server.peer_certificates().expect("a client certificate")[0].to_vec()
    }

    /// A client configuration made once presents the identity stored at each handshake: after
    /// the stored one is replaced (here: lost, so made anew, as when it nears its end), the
    /// same configuration presents the new certificate, and the server accepts it.
    #[test]
    fn the_broker_client_config_presents_the_identity_stored_at_each_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let pki = std::sync::Arc::new(
            crate::pki::Pki::load_or_create(dir.path(), &["localhost".to_owned()]).unwrap(),
        );
        // Full handshakes only: a resumed session carries the identity of the session it
        // resumes (a broker refuses to resume once that certificate has expired).
        let mut server = (*pki.mqtt_server_config().unwrap()).clone();
        server.send_tls13_tickets = 0;
        server.session_storage = std::sync::Arc::new(rustls::server::NoServerSessionStorage {});
        let server = std::sync::Arc::new(server);
        let client = std::sync::Arc::new(broker_tls(&pki).unwrap());
        let der = |pem: &str| {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .to_vec()
        };
        let (first, _) = pki.broker_client().unwrap();
        assert_eq!(presented(&client, &server), der(&first));
        assert_eq!(presented(&client, &server), der(&first), "reused");

        std::fs::remove_file(dir.path().join("pki/broker-client.pem")).unwrap();
        let (second, _) = pki.broker_client().unwrap();
        assert_ne!(first, second, "a new identity was made");
        assert_eq!(presented(&client, &server), der(&second));
    }

    #[test]
    fn a_revoked_agent_is_kicked_at_once_then_after_each_follow_up_and_then_left() {
        let start = tokio::time::Instant::now();
        let old: HashSet<String> = ["old".to_owned()].into();
        let mut schedule = KickSchedule::settled(old.clone());
        assert!(schedule.due(&old, start).is_empty(), "revoked before start");
        let revoked: HashSet<String> = ["old".to_owned(), "new".to_owned()].into();
        assert_eq!(schedule.due(&revoked, start), vec!["new".to_owned()]);
        // A failed round notes nothing: the agent is due again at the next.
        assert_eq!(schedule.due(&revoked, start), vec!["new".to_owned()]);
        schedule.done(vec!["new".to_owned()], start);
        let mut at = start;
        for wait in KICK_FOLLOW_UPS {
            assert!(
                schedule
                    .due(&revoked, at + wait - Duration::from_millis(1))
                    .is_empty()
            );
            at += wait;
            assert_eq!(schedule.due(&revoked, at), vec!["new".to_owned()]);
            schedule.done(vec!["new".to_owned()], at);
        }
        assert!(
            schedule
                .due(&revoked, at + Duration::from_secs(86_400))
                .is_empty()
        );
        // An agent no longer revoked is forgotten, and kicked anew if revoked again.
        assert!(schedule.due(&old, at).is_empty());
        assert_eq!(schedule.due(&revoked, at), vec!["new".to_owned()]);
    }

    #[test]
    fn one_round_kicks_at_most_its_bound() {
        let now = tokio::time::Instant::now();
        let mut schedule = KickSchedule::default();
        let revoked: HashSet<String> = (0..KICKS_PER_ROUND + 10).map(|i| format!("a{i}")).collect();
        let first = schedule.due(&revoked, now);
        assert_eq!(first.len(), KICKS_PER_ROUND);
        schedule.done(first, now);
        assert_eq!(schedule.due(&revoked, now).len(), 10);
    }
}
