//! Incidents: what a verdict, an agent or a region going dark opens, updates and resolves,
//! and how each change is stored, announced and queued for notification.
//!
//! A check's incident opens when it goes DOWN and is updated while it stays DOWN, is partly
//! back (DEGRADED) or in maintenance; it is resolved once the check has been UP for
//! `resolve_after_s` (a failure in between keeps the same incident open, so a flapping
//! target makes one incident per episode), or at once when the check is paused. Reminders
//! repeat open, unacknowledged incidents on channels that ask for them. An agent's
//! incident opens when it has been offline for [`crate::settings::Settings::agent_offline_grace_s`]
//! and a region's when none of its agents has been online for that long; both resolve when one
//! is back. An incident opened while a check it depends on is DOWN is dependent: its
//! notifications are suppressed. Opening and resolution queue one outbox row per enabled
//! channel, in the same transaction as the change (see [`crate::store::incidents`]); the
//! sender in [`crate::notify`] delivers them. After the commit, the verdict is published
//! retained on `status/checks/{check}` and on the live feed, and the incident change on
//! `incidents` and the live feed.

use std::collections::HashMap;

use vantage_mqtt::{
    CheckState, CheckVerdictView, IncidentChange, IncidentSubject, NodeState, encode, topic,
};

use crate::AppState;
use crate::hub::LiveEvent;
use crate::store::{
    IncidentOp, IncidentOutcome, IncidentRequest, StoreError, VerdictWrite, now_ms,
};

/// What a verdict change does to the check's incident. UP resolves at once only when
/// `resolve_after_s` is 0; otherwise [`settle`] resolves it once the check stayed UP that
/// long. Maintenance keeps an open incident open, silently.
fn incident_op(
    next: &CheckVerdictView,
    check_name: &str,
    dependent: bool,
    resolve_after_s: u32,
) -> Option<IncidentOp> {
    match next.state {
        CheckState::Down => Some(IncidentOp::Open {
            title: format!("{check_name} is down"),
            dependent,
        }),
        CheckState::Degraded | CheckState::Maintenance => Some(IncidentOp::Update),
        CheckState::Up if resolve_after_s > 0 => Some(IncidentOp::Update),
        CheckState::Up | CheckState::Paused => Some(IncidentOp::Resolve),
        CheckState::Pending => None,
    }
}

/// The enabled channels every opening and resolution is sent to.
pub async fn channels(state: &AppState) -> Result<Vec<String>, StoreError> {
    Ok(state
        .store
        .list_channels()
        .await?
        .into_iter()
        .filter(|c| c.enabled)
        .map(|c| c.id)
        .collect())
}

/// The enabled channels, read at most once per judging run (a burst of transitions costs one
/// read, not one per transition).
#[derive(Debug, Default)]
pub struct Channels(Option<Vec<String>>);

impl Channels {
    async fn get(&mut self, state: &AppState) -> Result<Vec<String>, StoreError> {
        if self.0.is_none() {
            self.0 = Some(channels(state).await?);
        }
        Ok(self.0.clone().unwrap_or_default())
    }
}

/// A check's verdict change, ready to be stored: the views and the incident change it causes.
#[derive(Debug, Clone)]
pub struct VerdictChange {
    pub previous: CheckVerdictView,
    pub next: CheckVerdictView,
    pub incident: Option<IncidentRequest>,
}

/// What a check's new verdict does to its incident. `parent_down` names a check or agent it
/// depends on that is down (the incident is then dependent and notifies nobody).
///
/// # Errors
/// Store errors (reading the channels).
pub async fn verdict_change(
    state: &AppState,
    previous: CheckVerdictView,
    next: CheckVerdictView,
    name: &str,
    parent_down: Option<String>,
    channels: &mut Channels,
) -> Result<VerdictChange, StoreError> {
    let state_changed = previous.state != next.state;
    let op = if state_changed || next.state == CheckState::Down {
        incident_op(
            &next,
            name,
            parent_down.is_some(),
            state.settings.resolve_after_s,
        )
    } else {
        None
    };
    let text = match &parent_down {
        Some(parent) if next.state == CheckState::Down => {
            format!(
                "{} (depends on {parent}, which is down: not notified)",
                next.reason
            )
        }
        _ if next.state == CheckState::Up && state.settings.resolve_after_s > 0 => format!(
            "{}; resolves after {} s without a failure",
            next.reason, state.settings.resolve_after_s
        ),
        _ => next.reason.clone(),
    };
    let incident = match op {
        Some(op) => Some(IncidentRequest {
            subject: IncidentSubject::Check,
            subject_id: next.check_id.clone(),
            op,
            text,
            at_ms: now_ms(),
            channels: channels.get(state).await?,
        }),
        None => None,
    };
    Ok(VerdictChange {
        previous,
        next,
        incident,
    })
}

/// Stores verdict changes, their transitions and the incident and outbox rows they cause in
/// one transaction, then announces each: retained on `status/checks/{check}`, on the live
/// feed, and the incident change.
///
/// # Errors
/// Store errors; then nothing was stored or announced.
pub async fn record_verdicts(
    state: &AppState,
    changes: &[VerdictChange],
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let writes: Vec<(Option<VerdictWrite<'_>>, Option<&IncidentRequest>)> = changes
        .iter()
        .map(|change| {
            (
                Some(VerdictWrite {
                    previous: change.previous.state,
                    next: &change.next,
                }),
                change.incident.as_ref(),
            )
        })
        .collect();
    let outcomes = state.store.record_changes(&writes).await?;
    let retained: Vec<(String, Vec<u8>, bool)> = changes
        .iter()
        .map(|change| {
            (
                topic::status_check(&change.next.check_id),
                encode(&change.next),
                true,
            )
        })
        .collect();
    let _ = state.publisher.publish_many(retained).await;
    for (change, outcome) in changes.iter().zip(outcomes) {
        let (previous, next) = (&change.previous, &change.next);
        if previous.state != next.state {
            tracing::info!(check = %next.check_id, from = previous.state.as_str(), to = next.state.as_str(), reason = %next.reason, "Check verdict changed");
            state
                .counters
                .verdict_transitions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        state.hub.publish(LiveEvent {
            kind: "verdict",
            agent_id: String::new(),
            region: String::new(),
            check_id: Some(next.check_id.clone()),
            source: None,
            at_ms: now_ms(),
            data: serde_json::to_value(next).unwrap_or_default().into(),
        });
        if let Some(outcome) = outcome {
            announce(state, &outcome).await;
        }
    }
    Ok(())
}

/// Publishes an incident change on `incidents` and the live feed, and wakes the sender.
pub async fn announce(state: &AppState, outcome: &IncidentOutcome) {
    let at_ms = now_ms();
    let view = outcome.incident.view(outcome.change, &outcome.text, at_ms);
    tracing::info!(incident = %view.id, subject = %view.subject_id, change = view.change.as_str(), dependent = view.dependent, n_queued = outcome.n_queued, "Incident changed");
    let _ = state
        .publisher
        .publish(&topic::incidents(), encode(&view), false)
        .await;
    state.hub.publish(LiveEvent {
        kind: "incident",
        agent_id: if view.subject == IncidentSubject::Agent {
            view.subject_id.clone()
        } else {
            String::new()
        },
        region: if view.subject == IncidentSubject::Region {
            view.subject_id.clone()
        } else {
            String::new()
        },
        check_id: (view.subject == IncidentSubject::Check).then(|| view.subject_id.clone()),
        source: None,
        at_ms,
        data: serde_json::to_value(&view).unwrap_or_default().into(),
    });
    if outcome.n_queued > 0 {
        state.notify_outbox.notify_one();
    }
}

/// Opens or resolves one subject's incident (agents and regions), announcing the change.
async fn change_subject(
    state: &AppState,
    subject: IncidentSubject,
    subject_id: &str,
    op: IncidentOp,
    text: String,
) -> Result<(), StoreError> {
    let request = IncidentRequest {
        subject,
        subject_id: subject_id.to_owned(),
        op,
        text,
        at_ms: now_ms(),
        channels: channels(state).await?,
    };
    if let Some(outcome) = state.store.record_change(None, Some(&request)).await? {
        announce(state, &outcome).await;
    }
    Ok(())
}

/// Opens incidents for agents offline longer than the grace and for regions with no agent
/// online for that long; resolves them when one is back (or the agent was revoked).
/// Idempotent: it compares the agents' stored state with the open incidents, so a restart
/// neither loses nor repeats one. Absences count from `started_ms` at the earliest: right
/// after a restart every agent is offline until it reconnects.
///
/// # Errors
/// Store errors.
pub async fn sweep_agents(state: &AppState, started_ms: i64) -> Result<(), StoreError> {
    let grace_ms = i64::from(state.settings.agent_offline_grace_s) * 1000;
    let now = now_ms();
    let agents = state.store.list_agents(None).await?;
    let maintenance = state.judge.active_maintenance();
    let open: HashMap<(IncidentSubject, String), ()> = state
        .store
        .list_incidents(true, 100_000)
        .await?
        .into_iter()
        .map(|i| ((i.subject, i.subject_id), ()))
        .collect();
    // Per region: (any agent online, the latest time any of its agents was seen).
    let mut regions: HashMap<&str, (bool, i64)> = HashMap::new();
    for agent in agents.iter().filter(|a| a.revoked_at_ms.is_none()) {
        let online = agent.state == NodeState::Online;
        let seen = agent
            .last_seen_ms
            .unwrap_or(agent.enrolled_at_ms)
            .max(started_ms);
        let entry = regions.entry(agent.region.as_str()).or_insert((false, 0));
        entry.0 |= online;
        entry.1 = entry.1.max(seen);
        let key = (IncidentSubject::Agent, agent.id.clone());
        if !online && now - seen > grace_ms && !open.contains_key(&key) && !maintenance.agent(agent)
        {
            let text = format!(
                "agent {} ({}) has been offline for {} s",
                agent.id,
                agent.region,
                (now - seen) / 1000
            );
            // An agent labelled `depends_on=<agent id>` (a node behind a gateway) is
            // dependent while that agent is offline too: no notification for it.
            let parent_offline = agent.labels.0.get("depends_on").is_some_and(|parent| {
                agents
                    .iter()
                    .any(|a| &a.id == parent && a.state == NodeState::Offline)
            });
            let text = if parent_offline {
                format!("{text} (depends on an offline agent: not notified)")
            } else {
                text
            };
            change_subject(
                state,
                IncidentSubject::Agent,
                &agent.id,
                IncidentOp::Open {
                    title: format!("agent {} is offline", agent.id),
                    dependent: parent_offline,
                },
                text,
            )
            .await?;
        } else if online && open.contains_key(&key) {
            change_subject(
                state,
                IncidentSubject::Agent,
                &agent.id,
                IncidentOp::Resolve,
                format!("agent {} is back online", agent.id),
            )
            .await?;
        }
    }
    for (subject, id) in open.keys() {
        let active = agents
            .iter()
            .any(|a| &a.id == id && a.revoked_at_ms.is_none());
        if *subject == IncidentSubject::Agent && !active {
            change_subject(
                state,
                IncidentSubject::Agent,
                id,
                IncidentOp::Resolve,
                format!("agent {id} was revoked"),
            )
            .await?;
        }
    }
    for (region, (online, seen)) in regions {
        let key = (IncidentSubject::Region, region.to_owned());
        if !online
            && now - seen > grace_ms
            && !open.contains_key(&key)
            && !maintenance.region(region)
        {
            change_subject(
                state,
                IncidentSubject::Region,
                region,
                IncidentOp::Open {
                    title: format!("region {region} has no agent online"),
                    dependent: false,
                },
                format!("no agent of region {region} is online; its checks run on the control plane's fallback"),
            )
            .await?;
        } else if online && open.contains_key(&key) {
            change_subject(
                state,
                IncidentSubject::Region,
                region,
                IncidentOp::Resolve,
                format!("an agent of region {region} is back online"),
            )
            .await?;
        }
    }
    Ok(())
}

/// Resolves the incidents of checks that have been UP for `resolve_after_s` (or were
/// deleted), and queues a reminder per channel for every open, unacknowledged incident that
/// notifies (not dependent, its check not in maintenance) when the channel's `reminder_s`
/// passed since its last notification. Idempotent and driven by stored times, so a restart
/// loses and repeats nothing (a reminder's dedup key names its period).
///
/// # Errors
/// Store errors.
pub async fn settle(state: &AppState) -> Result<(), StoreError> {
    let open = state.store.list_incidents(true, 100_000).await?;
    if open.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let states = state.judge.states().await;
    let resolve_after_ms = i64::from(state.settings.resolve_after_s) * 1000;
    let mut still_open = Vec::new();
    for incident in open {
        if incident.subject == IncidentSubject::Check {
            let current = states.get(&incident.subject_id).copied();
            let gone =
                current.is_none() && state.store.get_check(&incident.subject_id).await?.is_none();
            let settled =
                matches!(current, Some((CheckState::Up, since)) if now - since >= resolve_after_ms);
            if gone || settled {
                let text = if gone {
                    "the check was deleted".to_owned()
                } else {
                    format!(
                        "UP for {} s: resolved",
                        (now - current.map_or(now, |c| c.1)) / 1000
                    )
                };
                change_subject(
                    state,
                    IncidentSubject::Check,
                    &incident.subject_id,
                    IncidentOp::Resolve,
                    text,
                )
                .await?;
                continue;
            }
            if matches!(current, Some((CheckState::Maintenance, _))) {
                continue;
            }
        }
        still_open.push(incident);
    }
    let channels: Vec<_> = state
        .store
        .list_channels()
        .await?
        .into_iter()
        .filter(|c| c.enabled && c.reminder_s > 0)
        .collect();
    if channels.is_empty() {
        return Ok(());
    }
    for incident in still_open
        .iter()
        .filter(|i| !i.dependent && i.acknowledged_at_ms.is_none())
    {
        let last: HashMap<String, i64> = state
            .store
            .last_notified(&incident.id)
            .await?
            .into_iter()
            .collect();
        for channel in &channels {
            let period_ms = channel.reminder_s * 1000;
            let since = last
                .get(&channel.id)
                .copied()
                .unwrap_or(incident.opened_at_ms);
            if now - since < period_ms {
                continue;
            }
            let period = (now - incident.opened_at_ms) / period_ms;
            let text = format!(
                "still open after {} min, not acknowledged",
                (now - incident.opened_at_ms) / 60_000
            );
            let body = serde_json::to_string(&incident.view(IncidentChange::Reminder, &text, now))
                .unwrap_or_default();
            let key = format!("{}/reminder-{period}/{}", incident.id, channel.id);
            if state
                .store
                .queue_notification(
                    &key,
                    &incident.id,
                    &channel.id,
                    IncidentChange::Reminder,
                    &body,
                    now,
                )
                .await?
            {
                tracing::info!(incident = %incident.id, channel = %channel.id, "Reminder queued");
                state.notify_outbox.notify_one();
            }
        }
    }
    Ok(())
}

/// Opens or resolves a rule's incident (host-metric rules); see [`crate::rules`].
///
/// # Errors
/// Store errors.
pub async fn rule_change(
    state: &AppState,
    subject_id: &str,
    op: IncidentOp,
    text: String,
) -> Result<(), StoreError> {
    change_subject(state, IncidentSubject::Rule, subject_id, op, text).await
}

/// Runs [`sweep_agents`] every 2 s.
pub async fn agent_worker(state: AppState) {
    let started_ms = now_ms();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        if let Err(error) = sweep_agents(&state, started_ms).await {
            tracing::warn!(%error, "Agent incident sweep failed; retrying");
        }
    }
}

/// Acknowledges an incident or adds a note to it, and announces the change.
///
/// # Errors
/// Store errors; `Ok(None)` when the incident does not exist.
pub async fn annotate(
    state: &AppState,
    id: &str,
    change: IncidentChange,
    text: &str,
    author: &str,
) -> Result<Option<crate::store::IncidentRow>, StoreError> {
    let Some(row) = state
        .store
        .annotate_incident(id, change, text, author, now_ms())
        .await?
    else {
        return Ok(None);
    };
    announce(
        state,
        &IncidentOutcome {
            incident: row.clone(),
            change,
            text: text.to_owned(),
            n_queued: 0,
        },
    )
    .await;
    Ok(Some(row))
}
