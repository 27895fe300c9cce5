//! Chain events: Helius's Solana webhooks, Alchemy's notify webhooks, and a generic signed
//! webhook, read into the events Vantage stores.
//!
//! - Helius posts a JSON array of transactions, enhanced (`signature`, `slot`, `timestamp`,
//!   `type`, `description`, `accountData`, …) or raw (`transaction.signatures`,
//!   `transaction.message.accountKeys`, `slot`, `blockTime`). One event per transaction,
//!   deduplicated by its signature.
//! - Alchemy posts one object (`id`, `type`, `event`); an `ADDRESS_ACTIVITY` or
//!   `NFT_ACTIVITY` body carries `event.activity[]`, one event per activity deduplicated by
//!   its transaction hash (and log index, when one transaction moves several tokens). Other
//!   types become one event keyed by Alchemy's event id.
//! - The generic webhook (`hmac`) posts one object or an array of objects:
//!   `{"id", "title"?, "status"?, "severity"?, "host"?, "occurred_at_ms"?, "block"?,
//!   "accounts"?, "tags"?}`, deduplicated by (id, status), so `problem` and `resolved` with
//!   one id pair up like Zabbix's.
//!
//! A row that lacks its id is refused on its own; the body is refused whole only when it is
//! not JSON of the sender's shape at all or holds more than [`MAX_EVENTS_PER_BODY`] rows.

use serde_json::Value;
use vantage_mqtt::{EventSeverity, EventStatus};

use super::{
    IntegrationError, MAX_ACCOUNTS, MAX_EVENTS_PER_BODY, MAX_FIELD_BYTES, MAX_TITLE_BYTES, Parsed,
    bounded, bounded_tags, raw_payload,
};
use crate::store::{NewEvent, now_ms};

fn json(body: &[u8]) -> Result<Value, IntegrationError> {
    serde_json::from_slice(body)
        .map_err(|e| IntegrationError::Malformed(format!("body is not JSON: {e}")))
}

/// The rows of a body that is one object or an array of them.
fn rows(value: Value, sender: &str) -> Result<Vec<Value>, IntegrationError> {
    let rows = match value {
        Value::Array(rows) => rows,
        row @ Value::Object(_) => vec![row],
        _ => {
            return Err(IntegrationError::Malformed(format!(
                "a {sender} body is a JSON object or an array of objects"
            )));
        }
    };
    if rows.len() > MAX_EVENTS_PER_BODY {
        return Err(IntegrationError::Malformed(format!(
            "{} events in one body; at most {MAX_EVENTS_PER_BODY}",
            rows.len()
        )));
    }
    Ok(rows)
}

fn text(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An id a sender controls: non-empty, bounded, printable.
fn id_of(value: Option<String>, what: &str) -> Result<String, String> {
    let id = value.ok_or_else(|| format!("{what} is missing"))?;
    if id.len() > MAX_FIELD_BYTES || id.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be at most {MAX_FIELD_BYTES} bytes of printable text"
        ));
    }
    Ok(id)
}

/// Accounts, deduplicated in order, bounded.
fn accounts<'a>(found: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for account in found {
        if out.len() == MAX_ACCOUNTS {
            break;
        }
        if !account.is_empty() && !out.iter().any(|a| a == account) {
            out.push(bounded(account.to_owned(), 128));
        }
    }
    out
}

/// Seconds since the epoch (as senders write them) to milliseconds, when plausible.
fn seconds_to_ms(value: Option<&Value>) -> Option<i64> {
    value
        .and_then(Value::as_i64)
        .filter(|s| *s > 0 && *s < 100_000_000_000)
        .map(|s| s * 1000)
}

fn info_event(
    dedup_key: String,
    external_id: String,
    title: String,
    occurred_at_ms: Option<i64>,
    block: Option<i64>,
    accounts: Vec<String>,
    raw: &Value,
) -> NewEvent {
    let (payload, payload_truncated) = raw_payload(raw);
    NewEvent {
        dedup_key,
        external_id,
        status: EventStatus::Info,
        severity: EventSeverity::Information,
        title: bounded(title, MAX_TITLE_BYTES),
        host: None,
        host_name: String::new(),
        host_address: String::new(),
        occurred_at_ms: occurred_at_ms.unwrap_or_else(now_ms),
        block,
        accounts,
        tags: Vec::new(),
        payload,
        payload_truncated,
    }
}

/// Reads a Helius webhook body.
///
/// # Errors
/// [`IntegrationError::Malformed`] when it is not JSON, not an object or array, or too long.
pub fn parse_helius(body: &[u8]) -> Result<Vec<Parsed>, IntegrationError> {
    Ok(rows(json(body)?, "Helius")?
        .iter()
        .map(helius_row)
        .collect())
}

fn helius_row(tx: &Value) -> Parsed {
    if !tx.is_object() {
        return Err("a transaction must be a JSON object".into());
    }
    let signature = id_of(
        text(tx, "/signature").or_else(|| text(tx, "/transaction/signatures/0")),
        "signature (or transaction.signatures[0])",
    )?;
    let slot = tx.get("slot").and_then(Value::as_i64);
    let occurred = seconds_to_ms(tx.get("timestamp").or_else(|| tx.get("blockTime")));
    let kind = text(tx, "/type").unwrap_or_else(|| "TRANSACTION".into());
    let title = match text(tx, "/description") {
        Some(description) => description,
        None => match text(tx, "/source") {
            Some(source) => format!("{kind} ({source})"),
            None => kind,
        },
    };
    let failed = tx
        .get("transactionError")
        .or_else(|| tx.pointer("/meta/err"))
        .is_some_and(|e| !e.is_null());
    let title = if failed {
        format!("failed: {title}")
    } else {
        title
    };
    let enhanced = tx
        .get("accountData")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("account").and_then(Value::as_str));
    let fee_payer = tx.get("feePayer").and_then(Value::as_str);
    let raw_keys = tx
        .pointer("/transaction/message/accountKeys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|k| {
            k.as_str()
                .or_else(|| k.get("pubkey").and_then(Value::as_str))
        });
    let found = accounts(fee_payer.into_iter().chain(enhanced).chain(raw_keys));
    Ok(info_event(
        signature.clone(),
        signature,
        title,
        occurred,
        slot,
        found,
        tx,
    ))
}

/// Reads an Alchemy webhook body.
///
/// # Errors
/// [`IntegrationError::Malformed`] when it is not a JSON object with Alchemy's `id`,
/// `type` and `event`.
pub fn parse_alchemy(body: &[u8]) -> Result<Vec<Parsed>, IntegrationError> {
    let value = json(body)?;
    let (Some(id), Some(kind), Some(event)) = (
        text(&value, "/id"),
        text(&value, "/type"),
        value.get("event").filter(|e| e.is_object()),
    ) else {
        return Err(IntegrationError::Malformed(
            "an Alchemy body is a JSON object with id, type and event".into(),
        ));
    };
    let network = text(event, "/network").unwrap_or_default();
    let Some(activity) = event.get("activity").and_then(Value::as_array) else {
        let block = event.pointer("/data/block/number").and_then(Value::as_i64);
        let row = id_of(Some(id), "id").map(|id| {
            info_event(
                id.clone(),
                id,
                format!("{kind} {network}").trim().to_owned(),
                None,
                block,
                Vec::new(),
                &value,
            )
        });
        return Ok(vec![row]);
    };
    if activity.len() > MAX_EVENTS_PER_BODY {
        return Err(IntegrationError::Malformed(format!(
            "{} activities in one body; at most {MAX_EVENTS_PER_BODY}",
            activity.len()
        )));
    }
    let occurred = text(&value, "/createdAt").and_then(|at| {
        time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
    });
    Ok(activity
        .iter()
        .map(|a| alchemy_activity(a, &network, occurred))
        .collect())
}

fn alchemy_activity(activity: &Value, network: &str, occurred: Option<i64>) -> Parsed {
    let hash = id_of(text(activity, "/hash"), "activity hash")?;
    let log_index = text(activity, "/log/logIndex");
    let dedup_key = match &log_index {
        Some(index) => format!("{hash}:{index}"),
        None => {
            let category = text(activity, "/category").unwrap_or_default();
            format!("{hash}:{category}")
        }
    };
    let block = text(activity, "/blockNum")
        .and_then(|b| i64::from_str_radix(b.trim_start_matches("0x"), 16).ok());
    let from = text(activity, "/fromAddress").unwrap_or_default();
    let to = text(activity, "/toAddress").unwrap_or_default();
    let amount = match activity.get("value") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let asset = text(activity, "/asset").unwrap_or_default();
    let category = text(activity, "/category").unwrap_or_else(|| "activity".into());
    let title = format!("{category} {amount} {asset} {from} → {to} ({network})")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Ok(info_event(
        dedup_key,
        hash,
        title,
        occurred,
        block,
        accounts([from.as_str(), to.as_str()].into_iter()),
        activity,
    ))
}

/// Reads a generic signed webhook body.
///
/// # Errors
/// [`IntegrationError::Malformed`] when it is not JSON, not an object or array, or too long.
pub fn parse_generic(body: &[u8]) -> Result<Vec<Parsed>, IntegrationError> {
    Ok(rows(json(body)?, "generic webhook")?
        .iter()
        .map(generic_row)
        .collect())
}

fn generic_row(row: &Value) -> Parsed {
    if !row.is_object() {
        return Err("an event must be a JSON object".into());
    }
    let id = id_of(
        match row.get("id") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        },
        "id",
    )?;
    let status = match text(row, "/status") {
        None => EventStatus::Info,
        Some(name) => EventStatus::parse(&name).ok_or_else(|| {
            format!(
                "status must be problem, resolved, update or info, got {:?}",
                bounded(name, 40)
            )
        })?,
    };
    let severity = match text(row, "/severity") {
        None => EventSeverity::Information,
        Some(name) => EventSeverity::parse(&name).ok_or_else(|| {
            format!(
                "severity must be one of not_classified, information, warning, average, high, disaster; got {:?}",
                bounded(name, 40)
            )
        })?,
    };
    let title = text(row, "/title").unwrap_or_else(|| format!("event {id}"));
    let found = accounts(
        row.get("accounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str),
    );
    let tags = bounded_tags(
        row.get("tags")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            }),
    );
    let (payload, payload_truncated) = raw_payload(row);
    Ok(NewEvent {
        dedup_key: format!("{id}:{}", status.as_str()),
        external_id: id,
        status,
        severity,
        title: bounded(title, MAX_TITLE_BYTES),
        host: text(row, "/host").map(|h| bounded(h, MAX_FIELD_BYTES)),
        host_name: String::new(),
        host_address: String::new(),
        occurred_at_ms: row
            .get("occurred_at_ms")
            .and_then(Value::as_i64)
            .filter(|t| *t > 0)
            .unwrap_or_else(now_ms),
        block: row.get("block").and_then(Value::as_i64),
        accounts: found,
        tags,
        payload,
        payload_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An enhanced transaction in the shape Helius documents (a fake of its sender).
    const HELIUS_ENHANCED: &str = r#"[{"accountData":[{"account":"CKs1E69a2e9TmH4mKKLrXFF8kD3ZnwKjoEuXa6sz9WqX","nativeBalanceChange":-72938049280,"tokenBalanceChanges":[]},{"account":"NTYeYJ1wr4bpM5xo6zx5En44SvJFAd35zTxxNoERYqd","nativeBalanceChange":0,"tokenBalanceChanges":[]}],"description":"CKs1E69a2e9TmH4mKKLrXFF8kD3ZnwKjoEuXa6sz9WqX transferred 72.9 SOL to NTYeYJ1wr4bpM5xo6zx5En44SvJFAd35zTxxNoERYqd.","events":{},"fee":5000,"feePayer":"CKs1E69a2e9TmH4mKKLrXFF8kD3ZnwKjoEuXa6sz9WqX","instructions":[],"nativeTransfers":[{"amount":72936000000,"fromUserAccount":"CKs1E69a2e9TmH4mKKLrXFF8kD3ZnwKjoEuXa6sz9WqX","toUserAccount":"NTYeYJ1wr4bpM5xo6zx5En44SvJFAd35zTxxNoERYqd"}],"signature":"5nNtjezQMYBHvgSQmoRmJPiXGsPAWmJPoGSa64xanqrauogiVzFyGQhKeFataHGXq51jR2hjbzNTkPUpP787HAmL","slot":171942732,"source":"SYSTEM_PROGRAM","timestamp":1673445241,"tokenTransfers":[],"type":"TRANSFER"}]"#;

    #[test]
    fn helius_transactions_become_events_keyed_by_signature() {
        let rows = parse_helius(HELIUS_ENHANCED.as_bytes()).unwrap();
        let event = rows[0].as_ref().unwrap();
        assert!(event.dedup_key.starts_with("5nNtjez"));
        assert_eq!(event.external_id, event.dedup_key);
        assert_eq!(event.block, Some(171_942_732));
        assert_eq!(event.occurred_at_ms, 1_673_445_241_000);
        assert_eq!(event.accounts.len(), 2, "{:?}", event.accounts);
        assert!(event.title.contains("transferred 72.9 SOL"));
        let raw = r#"[{"blockTime":1673445241,"slot":5,"meta":{"err":{"x":1}},"transaction":{"signatures":["sig1"],"message":{"accountKeys":["k1","k2"]}}},{"slot":6}]"#;
        let rows = parse_helius(raw.as_bytes()).unwrap();
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.dedup_key, "sig1");
        assert_eq!(first.accounts, vec!["k1", "k2"]);
        assert!(first.title.starts_with("failed:"), "{}", first.title);
        assert!(rows[1].as_ref().unwrap_err().contains("signature"));
        assert!(matches!(
            parse_helius(b"42"),
            Err(IntegrationError::Malformed(_))
        ));
    }

    #[test]
    fn alchemy_activities_become_events_keyed_by_hash() {
        let body = r#"{"webhookId":"wh_k63lg72rxda78gce","id":"whevt_vq499kv7elmlbp2v","createdAt":"2024-01-23T07:42:26.411977228Z","type":"ADDRESS_ACTIVITY","event":{"network":"ETH_MAINNET","activity":[{"blockNum":"0xdf34a3","hash":"0x7a4a39da2a3fa1fc2ef88fd1eaea070286ed2aba21e0419dcfb6d5c5d9f02a72","fromAddress":"0x503828976d22510aad0201ac7ec88293211d23da","toAddress":"0xbe3f4b43db5eb49d1f48f53443b9abce45da3b79","value":293.092129,"asset":"USDC","category":"token","rawContract":{"rawValue":"0x","address":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","decimals":6},"log":{"logIndex":"0x6e"}},{"fromAddress":"0x1"}]}}"#;
        let rows = parse_alchemy(body.as_bytes()).unwrap();
        let event = rows[0].as_ref().unwrap();
        assert_eq!(
            event.dedup_key,
            "0x7a4a39da2a3fa1fc2ef88fd1eaea070286ed2aba21e0419dcfb6d5c5d9f02a72:0x6e"
        );
        assert_eq!(event.block, Some(0xdf34a3));
        assert_eq!(event.occurred_at_ms, 1_705_995_746_411);
        assert!(event.title.contains("293.092129 USDC"), "{}", event.title);
        assert!(rows[1].as_ref().unwrap_err().contains("hash"));
        assert!(matches!(
            parse_alchemy(br#"{"id":"x"}"#),
            Err(IntegrationError::Malformed(_))
        ));
    }

    #[test]
    fn generic_events_pair_problem_and_resolution_by_id() {
        let rows = parse_generic(
            br#"[{"id":"disk-1","status":"problem","severity":"high","title":"disk"},{"id":"disk-1","status":"resolved"},{"title":"no id"},{"id":"x","status":"odd"}]"#,
        )
        .unwrap();
        let (p, r) = (rows[0].as_ref().unwrap(), rows[1].as_ref().unwrap());
        assert_eq!(
            (p.status, p.severity),
            (EventStatus::Problem, EventSeverity::High)
        );
        assert_eq!(p.external_id, r.external_id);
        assert_ne!(p.dedup_key, r.dedup_key);
        assert!(rows[2].as_ref().unwrap_err().contains("id is missing"));
        assert!(rows[3].as_ref().unwrap_err().contains("status must be"));
        let many = format!(
            "[{}]",
            vec![r#"{"id":"a"}"#; MAX_EVENTS_PER_BODY + 1].join(",")
        );
        assert!(matches!(
            parse_generic(many.as_bytes()),
            Err(IntegrationError::Malformed(_))
        ));
    }
}
