//! The Zabbix API poller: for a Zabbix source with `poll` set, reads Zabbix's trigger events
//! through its JSON-RPC API and takes each the same path as a webhook's (stored once by the
//! same dedup key, so a source may be both polled and sent to, and the poller fills what a
//! lost webhook missed).
//!
//! At its first start it reads the current problems (`problem.get`) and starts after the
//! newest event; then every `interval_s` it pages `event.get` by `eventid_from` (inclusive:
//! the boundary event, stored last time, is dropped), in pages of [`PAGE`], oldest first. A
//! recovery event names no problem: the problem whose `r_eventid` it is gives the resolution
//! its external id and severity, as Zabbix's webhook does. After each page the last event id
//! is stored as the source's cursor, so a restarted control plane catches up from there. A
//! backlog is read page after page at most [`PAGES_PER_S`] a second; a failing API is retried
//! with a doubling pause up to a minute. [`supervise`] starts, restarts and stops one poller
//! per polled source as sources are added, changed or deleted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use vantage_mqtt::EventStatus;

use super::{MAX_FIELD_BYTES, MAX_TITLE_BYTES, bounded, bounded_tags, raw_payload};
use crate::AppState;
use crate::store::{NewEvent, PollConfig, now_ms};

/// Events asked for per `event.get`.
pub const PAGE: usize = 1000;
/// Most pages read per second while catching up.
pub const PAGES_PER_S: u64 = 5;
/// Largest API answer read, in bytes.
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// How often the supervisor looks for added, changed or deleted sources.
const SUPERVISE_EVERY: Duration = Duration::from_secs(5);

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("cannot reach the Zabbix API: {0}")]
    Transport(String),
    #[error("the Zabbix API answered {0}")]
    Api(String),
    #[error("the Zabbix API's answer is not what 6.0 sends: {0}")]
    Answer(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// One JSON-RPC call; its `result`.
async fn call(
    client: &reqwest::Client,
    config: &PollConfig,
    method: &str,
    params: Value,
) -> Result<Value, PollError> {
    let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1, "auth": config.api_token});
    let mut response = client
        .post(&config.api_url)
        .header("content-type", "application/json-rpc")
        .timeout(Duration::from_secs(30))
        .json(&body)
        .send()
        .await
        .map_err(|e| PollError::Transport(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(PollError::Api(format!("HTTP {}", response.status())));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| PollError::Transport(e.without_url().to_string()))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(PollError::Answer(format!("over {MAX_ANSWER_BYTES} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    let answer: Value =
        serde_json::from_slice(&bytes).map_err(|e| PollError::Answer(e.to_string()))?;
    if let Some(error) = answer.get("error") {
        let text = bounded(error.to_string(), 300);
        return Err(PollError::Api(text));
    }
    Ok(answer.get("result").cloned().unwrap_or(Value::Null))
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn number(value: &Value, key: &str) -> Option<i64> {
    text(value, key).parse().ok()
}

/// A problem event (`value` 1) of `event.get` as a Vantage event.
fn problem_event(event: &Value) -> Option<NewEvent> {
    let id = number(event, "eventid")?;
    Some(from_zabbix(event, id, EventStatus::Problem, event))
}

/// A recovery event (`value` 0) of `problem`, as the webhook would send it: under the
/// problem's id, with its name and severity, dated by the recovery.
fn resolution_event(recovery: &Value, problem: &Value) -> Option<NewEvent> {
    let id = number(problem, "eventid")?;
    Some(from_zabbix(problem, id, EventStatus::Resolved, recovery))
}

fn from_zabbix(problem: &Value, id: i64, status: EventStatus, dated: &Value) -> NewEvent {
    let host = problem.pointer("/hosts/0").cloned().unwrap_or(Value::Null);
    let mut title = text(problem, "name");
    let opdata = text(problem, "opdata");
    if status == EventStatus::Problem && !opdata.is_empty() {
        title = format!("{title} ({opdata})");
    }
    if title.is_empty() {
        title = format!("Zabbix event {id}");
    }
    let occurred_at_ms = number(dated, "clock")
        .filter(|s| *s > 0 && *s < 100_000_000_000)
        .map_or_else(now_ms, |s| {
            s * 1000 + number(dated, "ns").unwrap_or(0) / 1_000_000
        });
    let tags = bounded_tags(
        problem
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|t| (text(t, "tag"), text(t, "value"))),
    );
    let (payload, payload_truncated) = raw_payload(dated);
    let host_name = text(&host, "host");
    NewEvent {
        dedup_key: format!(
            "{id}:{}",
            if status == EventStatus::Problem { 1 } else { 0 }
        ),
        external_id: id.to_string(),
        status,
        severity: super::zabbix::severity(number(problem, "severity"), ""),
        title: bounded(title, MAX_TITLE_BYTES),
        host: (!host_name.is_empty()).then(|| bounded(host_name, MAX_FIELD_BYTES)),
        host_name: bounded(text(&host, "name"), MAX_FIELD_BYTES),
        host_address: String::new(),
        occurred_at_ms,
        block: None,
        accounts: Vec::new(),
        tags,
        payload,
        payload_truncated,
    }
}

/// The fields of a trigger event the poller reads (of the configured host groups).
fn event_params(config: &PollConfig, extra: Value) -> Value {
    let mut params = json!({
        "output": ["eventid", "source", "object", "objectid", "clock", "ns", "value", "name", "severity", "r_eventid", "opdata"],
        "source": 0, "object": 0,
        "selectHosts": ["host", "name"], "selectTags": "extend",
    });
    if let (Some(params), Value::Object(extra)) = (params.as_object_mut(), extra) {
        params.extend(extra);
    }
    if let Some(groups) = &config.groupids {
        params["groupids"] = json!(groups);
    }
    params
}

/// Stores `events` of the source in order; false when the store failed.
async fn store_all(
    state: &AppState,
    source_id: &str,
    events: Vec<NewEvent>,
) -> Result<(), PollError> {
    let Some(source) = state.sources.by_id(state, source_id).await? else {
        return Ok(());
    };
    for event in events {
        super::record(state, &source, &event)
            .await
            .map_err(|e| match e {
                super::IntegrationError::Store(error) => PollError::Store(error),
                other => PollError::Answer(other.to_string()),
            })?;
    }
    Ok(())
}

/// The first poll of a source: the current problems, and the newest event id as the cursor.
async fn start(state: &AppState, source_id: &str, config: &PollConfig) -> Result<i64, PollError> {
    let client = &state.http_client;
    let newest = call(
        client,
        config,
        "event.get",
        json!({"output": ["eventid"], "source": 0, "object": 0, "sortfield": ["eventid"], "sortorder": "DESC", "limit": 1}),
    )
    .await?;
    let cursor = newest
        .get(0)
        .and_then(|e| number(e, "eventid"))
        .unwrap_or(0);
    let mut params = json!({"output": ["eventid"], "source": 0, "object": 0, "recent": false});
    if let Some(groups) = &config.groupids {
        params["groupids"] = json!(groups);
    }
    let problems = call(client, config, "problem.get", params).await?;
    let ids: Vec<String> = problems
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| text(p, "eventid"))
        .filter(|id| !id.is_empty())
        .collect();
    for chunk in ids.chunks(PAGE) {
        let events = call(
            client,
            config,
            "event.get",
            event_params(config, json!({"eventids": chunk})),
        )
        .await?;
        let rows: Vec<NewEvent> = events
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(problem_event)
            .collect();
        store_all(state, source_id, rows).await?;
    }
    state.store.set_poll_cursor(source_id, cursor).await?;
    Ok(cursor)
}

/// One page after `cursor`: stores its events; the new cursor and whether the page was full.
async fn page(
    state: &AppState,
    source_id: &str,
    config: &PollConfig,
    cursor: i64,
) -> Result<(i64, bool), PollError> {
    let client = &state.http_client;
    let events = call(
        client,
        config,
        "event.get",
        event_params(
            config,
            json!({"eventid_from": cursor.to_string(), "sortfield": ["eventid"], "sortorder": "ASC", "limit": PAGE}),
        ),
    )
    .await?;
    let events = events
        .as_array()
        .ok_or_else(|| PollError::Answer("event.get's result is not a list".into()))?;
    let full = events.len() >= PAGE;
    // eventid_from is inclusive: the boundary event was stored last time.
    let fresh: Vec<&Value> = events
        .iter()
        .filter(|e| number(e, "eventid").is_some_and(|id| id > cursor))
        .collect();
    let recoveries: Vec<String> = fresh
        .iter()
        .filter(|e| text(e, "value") == "0")
        .map(|e| text(e, "eventid"))
        .collect();
    let mut problems: HashMap<String, Value> = HashMap::new();
    for chunk in recoveries.chunks(PAGE) {
        let found = call(
            client,
            config,
            "event.get",
            event_params(config, json!({"value": 1, "filter": {"r_eventid": chunk}})),
        )
        .await?;
        for problem in found.as_array().into_iter().flatten() {
            problems.insert(text(problem, "r_eventid"), problem.clone());
        }
    }
    let mut rows = Vec::with_capacity(fresh.len());
    let mut next = cursor;
    for event in fresh {
        let id = number(event, "eventid").unwrap_or(cursor);
        next = next.max(id);
        let row = if text(event, "value") == "1" {
            problem_event(event)
        } else {
            // A recovery whose problem Zabbix no longer has is skipped (and counted).
            problems
                .get(&id.to_string())
                .and_then(|problem| resolution_event(event, problem))
        };
        match row {
            Some(row) => rows.push(row),
            None => {
                state
                    .counters
                    .zabbix_poll_skipped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    store_all(state, source_id, rows).await?;
    if next > cursor {
        state.store.set_poll_cursor(source_id, next).await?;
    }
    Ok((next, full))
}

/// Polls one source until aborted.
pub async fn run(state: AppState, source_id: String, config: PollConfig, cursor: Option<i64>) {
    let mut cursor = cursor;
    let mut failures: u32 = 0;
    loop {
        let result = match cursor {
            None => start(&state, &source_id, &config).await.map(|c| (c, false)),
            Some(at) => page(&state, &source_id, &config, at).await,
        };
        state.counters.zabbix_polls.fetch_add(1, Ordering::Relaxed);
        let pause = match result {
            Ok((next, full)) => {
                cursor = Some(next);
                failures = 0;
                if full {
                    Duration::from_millis(1000 / PAGES_PER_S)
                } else {
                    Duration::from_secs(u64::from(config.interval_s))
                }
            }
            Err(error) => {
                state
                    .counters
                    .zabbix_poll_errors
                    .fetch_add(1, Ordering::Relaxed);
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(source = %source_id, %error, failures, "Zabbix poll failed; retrying");
                }
                Duration::from_secs((1u64 << failures.min(6)).min(60))
                    .max(Duration::from_secs(u64::from(config.interval_s)))
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Keeps one poller per polled source: starts new ones, restarts changed ones, stops those
/// of deleted sources.
pub async fn supervise(state: AppState) {
    let mut running: HashMap<String, (PollConfig, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        match state.store.list_sources().await {
            Ok(sources) => {
                let wanted: HashMap<String, (PollConfig, Option<i64>)> = sources
                    .iter()
                    .filter_map(|s| s.poll_config().map(|p| (s.id.clone(), (p, s.poll_cursor))))
                    .collect();
                running.retain(|id, (config, task)| {
                    let keep =
                        wanted.get(id).is_some_and(|(c, _)| c == config) && !task.is_finished();
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for (id, (config, cursor)) in wanted {
                    if running.contains_key(&id) {
                        continue;
                    }
                    tracing::info!(source = %id, api = %config.api_url, interval_s = config.interval_s, "Polling Zabbix");
                    let task = tokio::spawn(run(state.clone(), id.clone(), config.clone(), cursor));
                    running.insert(id, (config, task));
                }
            }
            Err(error) => tracing::warn!(%error, "Cannot read the sources to poll"),
        }
        tokio::time::sleep(SUPERVISE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_takes_its_problems_id_name_and_severity() {
        let problem = json!({"eventid": "41", "value": "1", "name": "Disk full on db-7", "severity": "4",
            "clock": "1735812672", "ns": "500000000", "r_eventid": "45",
            "hosts": [{"hostid": "10", "host": "db-7", "name": "Database 7"}],
            "tags": [{"tag": "service", "value": "db"}]});
        let recovery = json!({"eventid": "45", "value": "0", "name": "Disk full on db-7", "severity": "0",
            "clock": "1735813000", "ns": "0"});
        let p = problem_event(&problem).unwrap();
        assert_eq!(
            (p.dedup_key.as_str(), p.status),
            ("41:1", EventStatus::Problem)
        );
        assert_eq!(p.occurred_at_ms, 1_735_812_672_500);
        assert_eq!(p.host.as_deref(), Some("db-7"));
        assert_eq!(p.host_name, "Database 7");
        let r = resolution_event(&recovery, &problem).unwrap();
        assert_eq!(
            (r.dedup_key.as_str(), r.external_id.as_str()),
            ("41:0", "41")
        );
        assert_eq!(r.severity, vantage_mqtt::EventSeverity::High);
        assert_eq!(r.occurred_at_ms, 1_735_813_000_000);
        assert!(problem_event(&json!({"name": "no id"})).is_none());
    }
}
