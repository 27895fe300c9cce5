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
use crate::brokerauth::{self, BrokerIdentity, BrokerSecrets};

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

/// Connects to the broker at `urls` (comma-separated) with the control plane's broker
/// client certificate, as `user` (an auth-config user: user name and password) or, without
/// one, as the control plane the callout authorizes.
pub(crate) async fn connect(
    state: &AppState,
    urls: &str,
    user: Option<(&str, &str)>,
    name: &str,
) -> Result<async_nats::Client, CalloutError> {
    let (cert, key) = state.pki.broker_client()?;
    let tls = vantage_agent::tls::mutual_client(state.pki.ca_pem(), &cert, &key)?;
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
        Some((brokerauth::CALLOUT_USER, secrets.password())),
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

/// Closes the broker connections of agents revoked after this task started (agents
/// revoked before are refused by the callout at their next connection, and were kicked by
/// the replica that revoked them).
async fn kick_revoked(state: AppState, secrets: std::sync::Arc<BrokerSecrets>, urls: String) {
    let mut done: HashSet<String> = state.registry.revoked_ids();
    loop {
        let client = match connect(
            &state,
            &urls,
            Some((brokerauth::SYSTEM_USER, secrets.password())),
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
            let revoked = state.registry.revoked_ids();
            // Ids no longer revoked (a store restored from a backup) leave the done set.
            done.retain(|id| revoked.contains(id));
            let todo: Vec<String> = revoked
                .into_iter()
                .filter(|id| !done.contains(id))
                .take(KICKS_PER_ROUND)
                .collect();
            if todo.is_empty() {
                continue;
            }
            match kick(&client, &todo).await {
                Ok(kicked) => {
                    state
                        .counters
                        .broker_kicks
                        .fetch_add(kicked, Ordering::Relaxed);
                    done.extend(todo);
                }
                Err(error) => {
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
