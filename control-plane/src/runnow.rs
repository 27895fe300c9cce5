//! Run-now: a check (stored or ad hoc) sent to one online agent of each asked region, and
//! the answers awaited.
//!
//! The check goes to one online agent of each region over that agent's `cmd` topic, with a
//! request id per (request, region). The agent runs it at once and answers on its `ack`
//! topic; ingest hands the answer to the waiting request ([`Pending`]). Every region gets an
//! outcome: a result, or why there is none (no online agent, or no answer within the wait).
//!
//! A waiter leaves [`Pending`] when it is dropped ([`Waiter`]): answered, timed out, or the
//! caller went away and dropped the future. At most [`MAX_PENDING`] answers are awaited at
//! once; past that [`RunError::TooManyWaiting`]. Regions must be distinct (each gets one
//! request id). The HTTP routes are in `api/run.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use vantage_mqtt::{
    AgentAck, AgentTopic, CheckResult, CheckSpec, Command, CommandMessage, encode, topic,
};

use crate::AppState;
use crate::broker::BrokerError;
use crate::store::{StoreError, random_id};

/// Why a run-now could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The regions asked for are not 1 to 64 distinct valid ids.
    #[error("{0}")]
    Invalid(String),
    /// [`MAX_PENDING`] answers are awaited already.
    #[error("too many run-now answers are awaited")]
    TooManyWaiting,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot send the check to an agent: {0}")]
    Publish(BrokerError),
}

/// Most run-now answers awaited at once, over all requests.
pub const MAX_PENDING: usize = 4096;

/// Requests waiting for an agent's answer, by request id.
#[derive(Debug, Default)]
pub struct Pending {
    waiting: Mutex<HashMap<String, oneshot::Sender<AgentAck>>>,
}

/// One awaited answer; its entry leaves [`Pending`] when this is dropped.
struct Waiter {
    pending: Arc<Pending>,
    request_id: String,
    receiver: oneshot::Receiver<AgentAck>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.pending.waiting.lock() {
            waiting.remove(&self.request_id);
        }
    }
}

impl Pending {
    /// Registers a waiter for `request_id`; `None` when [`MAX_PENDING`] answers are awaited
    /// already or the id is taken.
    fn register(self: &Arc<Self>, request_id: &str) -> Option<Waiter> {
        let (sender, receiver) = oneshot::channel();
        let mut waiting = self.waiting.lock().ok()?;
        if waiting.len() >= MAX_PENDING || waiting.contains_key(request_id) {
            return None;
        }
        waiting.insert(request_id.to_owned(), sender);
        Some(Waiter {
            pending: self.clone(),
            request_id: request_id.to_owned(),
            receiver,
        })
    }

    /// How many answers are awaited now.
    pub fn len(&self) -> usize {
        self.waiting.lock().map(|w| w.len()).unwrap_or(0)
    }

    /// Whether no answer is awaited.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands an agent's answer to the request waiting for it; false when none waits.
    pub fn complete(&self, ack: AgentAck) -> bool {
        let Some(request_id) = ack.request_id.clone() else {
            return false;
        };
        let sender = self
            .waiting
            .lock()
            .ok()
            .and_then(|mut waiting| waiting.remove(&request_id));
        sender.is_some_and(|sender| sender.send(ack).is_ok())
    }
}

/// One region's outcome.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RegionOutcome {
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<CheckResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer of both routes.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunResponse {
    pub request_id: String,
    pub check_id: String,
    pub regions: Vec<RegionOutcome>,
}

pub async fn dispatch(
    state: &AppState,
    spec: CheckSpec,
    regions: Vec<String>,
    wait_ms: Option<u32>,
) -> Result<RunResponse, RunError> {
    if regions.is_empty() || regions.len() > 64 || regions.iter().any(|r| !topic::valid_id(r)) {
        return Err(RunError::Invalid(
            "regions must name 1 to 64 valid regions".into(),
        ));
    }
    let mut seen = HashSet::new();
    if let Some(twice) = regions.iter().find(|region| !seen.insert(*region)) {
        return Err(RunError::Invalid(format!(
            "region {twice:?} is named more than once"
        )));
    }
    let wait = Duration::from_millis(u64::from(
        wait_ms
            .unwrap_or(spec.timeout_ms.saturating_add(5_000))
            .clamp(100, 130_000),
    ));
    let request_id = random_id("rq-", 8);
    let agents = state.store.list_agents(None).await?;
    let mut waits = Vec::new();
    let mut outcomes = Vec::new();
    for region in regions {
        let agent = agents
            .iter()
            .filter(|a| {
                a.region == region
                    && a.state == vantage_mqtt::NodeState::Online
                    && a.revoked_at_ms.is_none()
            })
            .min_by_key(|a| a.id.clone());
        let Some(agent) = agent else {
            outcomes.push(RegionOutcome {
                region,
                agent_id: None,
                result: None,
                error: Some("no online agent in this region".into()),
            });
            continue;
        };
        let region_request = format!("{request_id}-{region}");
        // Waiters registered so far leave the map when this returns early.
        let waiter = state
            .pending
            .register(&region_request)
            .ok_or(RunError::TooManyWaiting)?;
        let message = CommandMessage {
            v: vantage_mqtt::PROTOCOL_VERSION,
            request_id: region_request.clone(),
            command: Command::RunNow {
                check: Box::new(spec.clone()),
            },
        };
        if let Err(error) = state
            .publisher
            .publish(
                &topic::agent(&agent.id, AgentTopic::Cmd),
                encode(&message),
                false,
            )
            .await
        {
            return Err(RunError::Publish(error));
        }
        waits.push((region, agent.id.clone(), waiter));
    }
    // Dropping this future (the client went away) drops every waiter with it.
    let answers = futures_util::future::join_all(waits.into_iter().map(
        |(region, agent_id, mut waiter)| async move {
            let answer = tokio::time::timeout(wait, &mut waiter.receiver).await;
            (region, agent_id, answer)
        },
    ))
    .await;
    for (region, agent_id, answer) in answers {
        let outcome = match answer {
            Ok(Ok(ack)) => RegionOutcome {
                region,
                agent_id: Some(agent_id),
                error: ack.error.clone().or_else(|| {
                    ack.result
                        .is_none()
                        .then(|| "the agent answered without a result".to_owned())
                }),
                result: ack.result,
            },
            Ok(Err(_)) | Err(_) => RegionOutcome {
                region,
                agent_id: Some(agent_id),
                result: None,
                error: Some(format!("no answer within {} ms", wait.as_millis())),
            },
        };
        outcomes.push(outcome);
    }
    Ok(RunResponse {
        request_id,
        check_id: spec.id,
        regions: outcomes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_waiter_leaves_the_map_and_the_map_is_capped() {
        let pending = Arc::new(Pending::default());
        let waiter = pending.register("rq-a-europe").unwrap();
        assert!(
            pending.register("rq-a-europe").is_none(),
            "an id was taken twice"
        );
        assert_eq!(pending.len(), 1);
        drop(waiter);
        assert!(pending.is_empty());
        let waiters: Vec<Waiter> = (0..MAX_PENDING)
            .map(|i| pending.register(&format!("rq-{i}")).unwrap())
            .collect();
        assert!(pending.register("rq-one-more").is_none());
        drop(waiters);
        assert!(pending.is_empty());
    }
}
