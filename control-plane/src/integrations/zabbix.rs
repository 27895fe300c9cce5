//! Zabbix events: the body the webhook media type in `provision/zabbix/` posts, read into
//! the event Vantage stores.
//!
//! Zabbix numbers a problem with its event id and sends its resolution under the same
//! `event.id` (with `event.value` 0 and the recovery event in `recovery`), so the pair shares
//! an external id and the dedup key is (event id, value): a problem and its resolution are
//! stored once each however often Zabbix retries. An update (a comment or acknowledgement in
//! Zabbix) is keyed by the event id and a digest of what it says. Severity comes from
//! `event.nseverity` (0-5), or from the severity's English name when that is missing.

use serde::Deserialize;
use vantage_mqtt::{EventSeverity, EventStatus};

use super::{
    IntegrationError, MAX_FIELD_BYTES, MAX_TITLE_BYTES, Parsed, bounded, bounded_tags, raw_payload,
};
use crate::store::{NewEvent, now_ms};

/// The media type's body (`v` 1); fields Vantage does not use are ignored.
#[derive(Debug, Deserialize)]
struct Webhook {
    v: u32,
    event: WebhookEvent,
    #[serde(default)]
    trigger: Option<Trigger>,
    #[serde(default)]
    recovery: Option<Recovery>,
    #[serde(default)]
    update: Option<Update>,
    #[serde(default)]
    host: Option<Host>,
}

#[derive(Debug, Deserialize)]
struct WebhookEvent {
    id: String,
    #[serde(default)]
    name: String,
    status: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    nseverity: Option<i64>,
    #[serde(default)]
    opdata: String,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    timestamp: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Tag {
    tag: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
struct Trigger {
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
struct Recovery {
    #[serde(default)]
    timestamp: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Update {
    #[serde(default)]
    action: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Deserialize)]
struct Host {
    #[serde(default)]
    host: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    ip: String,
}

/// A severity from Zabbix's `nseverity`, else from its name.
pub fn severity(nseverity: Option<i64>, name: &str) -> EventSeverity {
    if let Some(severity) = nseverity.and_then(EventSeverity::from_zabbix) {
        return severity;
    }
    match name.to_ascii_lowercase().as_str() {
        "information" => EventSeverity::Information,
        "warning" => EventSeverity::Warning,
        "average" => EventSeverity::Average,
        "high" => EventSeverity::High,
        "disaster" => EventSeverity::Disaster,
        _ => EventSeverity::NotClassified,
    }
}

/// Whether `id` looks like a Zabbix event id (a positive integer).
fn valid_event_id(id: &str) -> bool {
    (1..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// Reads one webhook body.
///
/// # Errors
/// [`IntegrationError::Malformed`] when the body is not JSON of the media type's shape; the
/// row itself is refused (`Err` inside) when it is JSON of that shape but unusable (an empty
/// or non-numeric event id, an unknown status).
pub fn parse_webhook(body: &[u8]) -> Result<Parsed, IntegrationError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| IntegrationError::Malformed(format!("body is not JSON: {e}")))?;
    let hook: Webhook = serde_json::from_value(value.clone()).map_err(|e| {
        IntegrationError::Malformed(format!(
            "body is not the Vantage media type's JSON (provision/zabbix/): {e}"
        ))
    })?;
    if hook.v != 1 {
        return Err(IntegrationError::Malformed(format!(
            "unsupported payload version {} (this control plane reads 1)",
            hook.v
        )));
    }
    Ok(event_of(hook, &value))
}

fn event_of(hook: Webhook, raw: &serde_json::Value) -> Parsed {
    let event = hook.event;
    if !valid_event_id(&event.id) {
        return Err(format!(
            "event.id must be Zabbix's numeric event id, got {:?}",
            bounded(event.id, 40)
        ));
    }
    let status = match event.status.as_str() {
        "problem" => EventStatus::Problem,
        "resolved" => EventStatus::Resolved,
        "update" => EventStatus::Update,
        other => {
            return Err(format!(
                "event.status must be problem, resolved or update, got {:?}",
                bounded(other.to_owned(), 40)
            ));
        }
    };
    let received = now_ms();
    let occurred_at_ms = match status {
        EventStatus::Resolved => hook
            .recovery
            .as_ref()
            .and_then(|r| r.timestamp)
            .or(event.timestamp),
        _ => event.timestamp,
    }
    .filter(|s| *s > 0 && *s < 100_000_000_000)
    .map_or(received, |s| s * 1000);
    let dedup_key = match status {
        EventStatus::Problem => format!("{}:1", event.id),
        EventStatus::Resolved => format!("{}:0", event.id),
        _ => {
            let update = hook.update.as_ref();
            let said = format!(
                "{}\u{0}{}\u{0}{}\u{0}{}",
                update.map_or("", |u| u.action.as_str()),
                update.map_or("", |u| u.message.as_str()),
                update.map_or("", |u| u.user.as_str()),
                raw.pointer("/alert/message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
            );
            let digest = ring::digest::digest(&ring::digest::SHA256, said.as_bytes());
            format!("{}:u:{}", event.id, hex::encode(&digest.as_ref()[..12]))
        }
    };
    let mut title = if event.name.is_empty() {
        hook.trigger.map(|t| t.description).unwrap_or_default()
    } else {
        event.name
    };
    if status == EventStatus::Update
        && let Some(update) = &hook.update
    {
        title = format!("{title}: {} {}", update.action, update.message)
            .trim()
            .to_owned();
    }
    if !event.opdata.is_empty() && status == EventStatus::Problem {
        title = format!("{title} ({})", event.opdata);
    }
    if title.is_empty() {
        title = format!("Zabbix event {}", event.id);
    }
    let host = hook.host.unwrap_or(Host {
        host: String::new(),
        name: String::new(),
        ip: String::new(),
    });
    let tags = bounded_tags(event.tags.into_iter().map(|t| (t.tag, t.value)));
    let (payload, payload_truncated) = raw_payload(raw);
    Ok(NewEvent {
        dedup_key,
        external_id: event.id,
        status,
        severity: severity(event.nseverity, &event.severity),
        title: bounded(title, MAX_TITLE_BYTES),
        host: (!host.host.is_empty()).then(|| bounded(host.host, MAX_FIELD_BYTES)),
        host_name: bounded(host.name, MAX_FIELD_BYTES),
        host_address: bounded(host.ip, MAX_FIELD_BYTES),
        occurred_at_ms,
        block: None,
        accounts: Vec::new(),
        tags,
        payload,
        payload_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(status: &str, value: i64, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"v":1,"source":"zabbix","event":{{"id":"4242","name":"CPU load is too high on edge-1",
            "source":0,"value":{value},"status":"{status}","zabbix_status":"PROBLEM","severity":"High",
            "nseverity":4,"opdata":"","acknowledged":false,"tags":[{{"tag":"region","value":"fra1"}}],
            "timestamp":1735812672,"date":"2025.01.02","time":"10:11:12"}},
            "trigger":{{"id":"17001","value":1,"description":"Load above 8"}},
            "recovery":{extra},"update":null,
            "host":{{"host":"edge-1","name":"Edge 1","ip":"192.0.2.10"}},
            "alert":{{"sendto":"ops","subject":"Problem","message":"m"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_problem_and_its_resolution_share_the_external_id_with_their_own_keys() {
        let problem = parse_webhook(&body("problem", 1, "null")).unwrap().unwrap();
        assert_eq!(problem.status, EventStatus::Problem);
        assert_eq!(problem.severity, EventSeverity::High);
        assert_eq!(problem.external_id, "4242");
        assert_eq!(problem.dedup_key, "4242:1");
        assert_eq!(problem.occurred_at_ms, 1_735_812_672_000);
        assert_eq!(problem.host.as_deref(), Some("edge-1"));
        assert_eq!(problem.host_address, "192.0.2.10");
        assert_eq!(problem.tags, vec![("region".into(), "fra1".into())]);
        let resolved = parse_webhook(&body(
            "resolved",
            0,
            r#"{"id":"4250","value":0,"timestamp":1735812999,"date":"","time":""}"#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(resolved.external_id, "4242");
        assert_eq!(resolved.dedup_key, "4242:0");
        assert_eq!(resolved.occurred_at_ms, 1_735_812_999_000);
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        for (bad, expect) in [
            (b"not json".to_vec(), "not JSON"),
            (br#"{"v":1}"#.to_vec(), "media type"),
            (
                br#"{"v":2,"event":{"id":"1","status":"problem"}}"#.to_vec(),
                "version 2",
            ),
        ] {
            match parse_webhook(&bad) {
                Err(IntegrationError::Malformed(m)) => assert!(m.contains(expect), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        let row =
            parse_webhook(br#"{"v":1,"event":{"id":"{EVENT.ID}","status":"problem"}}"#).unwrap();
        assert!(row.unwrap_err().contains("numeric event id"));
        let row = parse_webhook(br#"{"v":1,"event":{"id":"7","status":"exploded"}}"#).unwrap();
        assert!(row.unwrap_err().contains("problem, resolved or update"));
    }

    #[test]
    fn hostile_texts_are_bounded() {
        let long = "x".repeat(100_000);
        let raw = format!(
            r#"{{"v":1,"event":{{"id":"9","status":"problem","name":"{long}","tags":[{}]}},"host":{{"host":"{long}"}}}}"#,
            vec![r#"{"tag":"t","value":"v"}"#; 100].join(",")
        );
        let event = parse_webhook(raw.as_bytes()).unwrap().unwrap();
        assert!(event.title.len() <= MAX_TITLE_BYTES);
        assert!(event.host.unwrap().len() <= MAX_FIELD_BYTES);
        assert_eq!(event.tags.len(), super::super::MAX_TAGS);
        assert!(event.payload_truncated);
        assert!(event.payload.len() <= super::super::MAX_PAYLOAD_BYTES);
    }

    #[test]
    fn updates_are_keyed_by_what_they_say() {
        let update = |message: &str| {
            format!(
                r#"{{"v":1,"event":{{"id":"5","status":"update"}},"update":{{"action":"commented","message":"{message}","user":"Admin"}}}}"#
            )
        };
        let a = parse_webhook(update("one").as_bytes()).unwrap().unwrap();
        let b = parse_webhook(update("two").as_bytes()).unwrap().unwrap();
        let a_again = parse_webhook(update("one").as_bytes()).unwrap().unwrap();
        assert_eq!(a.status, EventStatus::Update);
        assert_ne!(a.dedup_key, b.dedup_key);
        assert_eq!(a.dedup_key, a_again.dedup_key);
        assert!(a.title.contains("commented one"), "{}", a.title);
    }
}
