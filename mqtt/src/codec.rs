//! The payload codec: size limit, version check, strict JSON decoding, and encoding.
//!
//! Decoding never panics: an oversize payload, invalid JSON, a missing or unknown `v`, a wrong
//! field type or an unknown field each come back as a [`DecodeError`] that names the cause.
//! Batches of rows (results, metrics, events) are decoded row by row with [`decode_rows`], so
//! one row a decoder refuses never takes the other rows of its batch with it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::payload::Versioned;
use crate::{MAX_PAYLOAD_BYTES, PROTOCOL_VERSION};

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("payload has no numeric `v` field")]
    MissingVersion,
    #[error("payload version {found} is not supported (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { found: u64 },
    #[error("payload is not valid: {source}")]
    Invalid {
        #[source]
        source: serde_json::Error,
    },
}

#[derive(serde::Deserialize)]
struct VersionPeek {
    v: Option<serde_json::Value>,
}

/// Decodes a payload of type `T`, refusing anything over [`MAX_PAYLOAD_BYTES`].
///
/// # Errors
/// See [`DecodeError`].
pub fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_limited(bytes, MAX_PAYLOAD_BYTES)
}

/// Decodes a payload of type `T` with an explicit size limit in bytes.
///
/// # Errors
/// See [`DecodeError`].
pub fn decode_limited<T: DeserializeOwned + Versioned>(
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    // Fast path: one parse. The version is checked on the decoded value, so a payload of a
    // known shape but another version is still refused.
    if let Ok(value) = serde_json::from_slice::<T>(bytes) {
        let found = value.version();
        if found != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: u64::from(found),
            });
        }
        return Ok(value);
    }
    // Slow path: say why, version first.
    let peek: VersionPeek =
        serde_json::from_slice(bytes).map_err(|source| DecodeError::Invalid { source })?;
    check_version(&peek)?;
    serde_json::from_slice(bytes).map_err(|source| DecodeError::Invalid { source })
}

fn check_version(peek: &VersionPeek) -> Result<(), DecodeError> {
    match peek.v.as_ref().and_then(serde_json::Value::as_u64) {
        None => Err(DecodeError::MissingVersion),
        Some(v) if v != u64::from(PROTOCOL_VERSION) => {
            Err(DecodeError::UnsupportedVersion { found: v })
        }
        Some(_) => Ok(()),
    }
}

/// A batch envelope with its rows decoded in the same pass (the fast path of
/// [`decode_rows`]).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedBatch<T> {
    v: u32,
    items: Vec<T>,
}

/// A batch envelope whose rows are left undecoded.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch<'a> {
    v: u32,
    #[serde(borrow)]
    items: Vec<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct SeqPeek {
    seq: Option<u64>,
}

/// One row of a batch that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("row {index} (seq {seq:?}) is not valid: {source}")]
pub struct RowError {
    /// Position in the batch.
    pub index: usize,
    /// The row's `seq`, when it has a numeric one: it can then be acknowledged as refused.
    pub seq: Option<u64>,
    #[source]
    pub source: serde_json::Error,
}

/// Decodes a batch (`{"v":1,"items":[…]}`) row by row: the envelope must be valid (size,
/// version, shape), each row is decoded on its own.
///
/// Fast path: a batch whose every row decodes is decoded in one pass. Only when that fails
/// is the envelope read with its rows left raw and each row decoded on its own (two passes
/// over every row, the cost of per-row refusal, paid only by a batch that needs it).
///
/// # Errors
/// A [`DecodeError`] when the envelope is refused; rows that fail come back as [`RowError`]s
/// in their place.
pub fn decode_rows<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<Vec<Result<T, RowError>>, DecodeError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    if let Ok(batch) = serde_json::from_slice::<TypedBatch<T>>(bytes)
        && batch.v == PROTOCOL_VERSION
    {
        return Ok(batch.items.into_iter().map(Ok).collect());
    }
    let batch: RawBatch<'_> = match serde_json::from_slice(bytes) {
        Ok(batch) => batch,
        Err(source) => {
            let peek: VersionPeek =
                serde_json::from_slice(bytes).map_err(|source| DecodeError::Invalid { source })?;
            check_version(&peek)?;
            return Err(DecodeError::Invalid { source });
        }
    };
    if batch.v != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: u64::from(batch.v),
        });
    }
    Ok(batch
        .items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            serde_json::from_str::<T>(raw.get()).map_err(|source| RowError {
                index,
                seq: serde_json::from_str::<SeqPeek>(raw.get())
                    .ok()
                    .and_then(|p| p.seq),
                source,
            })
        })
        .collect())
}

/// Encodes a payload as JSON bytes.
pub fn encode<T: Serialize>(payload: &T) -> Vec<u8> {
    // Serializing these plain data types cannot fail: no maps with non-string keys, no
    // fallible Serialize impls.
    serde_json::to_vec(payload).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::check::*;
    use crate::payload::*;

    fn sample_result(seq: u64) -> CheckResult {
        CheckResult {
            seq,
            measured_at_ms: 1_700_000_000_000,
            check_id: "web".into(),
            ok: true,
            reason: "200 OK".into(),
            timings: Timings {
                connect_ms: Some(1.5),
                total_ms: 3.25,
                ..Timings::default()
            },
            status_code: Some(200),
            values: BTreeMap::from([("rtt_avg_ms".to_owned(), 1.5)]),
        }
    }

    fn round_trip<T: Serialize + DeserializeOwned + Versioned + PartialEq + std::fmt::Debug>(
        value: T,
    ) {
        let bytes = encode(&value);
        let back: T = decode(&bytes).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn every_payload_round_trips() {
        round_trip(Hello {
            v: 1,
            version: "0.1.0".into(),
            arch: "x86_64".into(),
            os: "linux".into(),
            hostname: "n1".into(),
            labels: BTreeMap::from([("role".into(), "web".into())]),
            capabilities: vec!["http".into(), "tcp".into()],
            boot_id: "b".into(),
            next_seq: 7,
            config_revision: 2,
        });
        round_trip(Status {
            v: 1,
            state: NodeState::Offline,
        });
        round_trip(Heartbeat {
            v: 1,
            at_ms: 1,
            uptime_s: 2,
            spool_len: 3,
            spool_dropped_total: 4,
            spool_unsendable_total: 1,
            spool_write_errors_total: 2,
            next_seq: 5,
            config_revision: 6,
        });
        round_trip(MetricsBatch {
            v: 1,
            items: vec![HostMetrics {
                seq: 1,
                measured_at_ms: 2,
                cpu_pct: 12.5,
                cores_pct: Some(vec![10.0, 15.0]),
                mem_total_bytes: 100,
                mem_used_bytes: 50,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
                load1: 0.1,
                load5: 0.2,
                load15: 0.3,
                uptime_s: 9,
                disks: vec![DiskUsage {
                    mount: "/".into(),
                    total_bytes: 10,
                    used_bytes: 5,
                }],
                nets: vec![NetUsage {
                    iface: "eth0".into(),
                    rx_bytes: 1,
                    tx_bytes: 2,
                    rx_bytes_per_s: 0.5,
                    tx_bytes_per_s: 0.25,
                }],
            }],
        });
        round_trip(ResultsBatch {
            v: 1,
            items: vec![sample_result(1), sample_result(2)],
        });
        round_trip(EventsBatch {
            v: 1,
            items: vec![
                Event {
                    seq: 3,
                    measured_at_ms: 4,
                    source: "zabbix".into(),
                    severity: "high".into(),
                    message: "disk full".into(),
                    relayed: None,
                },
                Event {
                    seq: 4,
                    measured_at_ms: 5,
                    source: "zabbix".into(),
                    severity: String::new(),
                    message: String::new(),
                    relayed: Some(RelayedBody {
                        body: "{\"v\":1}".into(),
                        signature: "sha256=00".into(),
                    }),
                },
            ],
        });
        round_trip(DesiredConfig {
            v: 1,
            revision: 3,
            region: "europe".into(),
            metrics_interval_s: 10,
            heartbeat_interval_s: 5,
            checks: vec![
                CheckSpec {
                    id: "web".into(),
                    interval_s: 30,
                    timeout_ms: 5000,
                    kind: CheckKind::Http(HttpCheck::get("http://127.0.0.1/")),
                },
                CheckSpec {
                    id: "ssh".into(),
                    interval_s: 30,
                    timeout_ms: 5000,
                    kind: CheckKind::Tcp(TcpCheck::connect("127.0.0.1", 22)),
                },
            ],
        });
        round_trip(CommandMessage {
            v: 1,
            request_id: "r1".into(),
            command: Command::Restart,
        });
        round_trip(CommandMessage {
            v: 1,
            request_id: "renew-1".into(),
            command: Command::RenewedCertificate {
                cert_pem: "-----BEGIN CERTIFICATE-----".into(),
                not_after_ms: 1_700_000_000_000,
            },
        });
        round_trip(CsrRequest {
            v: 1,
            request_id: "renew-1".into(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
        });
        assert!(
            decode::<CsrRequest>(br#"{"v":1,"request_id":"r","csr_pem":"x","cn":"other"}"#)
                .is_err(),
            "an unknown field in a CSR request was accepted"
        );
        round_trip(AgentAck {
            v: 1,
            config_revision: None,
            request_id: Some("r1".into()),
            result: Some(sample_result(9)),
            error: None,
        });
        round_trip(ResultsAck::from_seqs(vec![42, 7, 8, 9, 44, 43]));
        let ack = ResultsAck::from_seqs(vec![5, 3, 4, 9, 4]);
        assert_eq!(ack.ranges, vec![(3, 5), (9, 9)]);
        assert!(ack.covers(4) && ack.covers(9) && !ack.covers(6));
        assert_eq!(
            String::from_utf8(encode(&ack)).unwrap(),
            r#"{"v":1,"ranges":[[3,5],[9,9]]}"#
        );
        // A hello's answer names the hello's next_seq and acknowledges nothing; an ack
        // without the field (as control planes before it send) decodes as no answer.
        let answer = ResultsAck::hello_answer(17);
        round_trip(answer.clone());
        assert_eq!(
            String::from_utf8(encode(&answer)).unwrap(),
            r#"{"v":1,"ranges":[],"hello":17}"#
        );
        assert!(!answer.covers(17));
        assert_eq!(
            decode::<ResultsAck>(br#"{"v":1,"ranges":[]}"#)
                .unwrap()
                .hello,
            None
        );
    }

    #[test]
    fn unknown_or_missing_version_is_a_typed_error() {
        assert!(matches!(
            decode::<ResultsAck>(br#"{"v":2,"ranges":[]}"#),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        ));
        assert!(matches!(
            decode::<ResultsAck>(br#"{"ranges":[]}"#),
            Err(DecodeError::MissingVersion)
        ));
        assert!(matches!(
            decode::<ResultsAck>(br#"{"v":"1","ranges":[]}"#),
            Err(DecodeError::MissingVersion)
        ));
    }

    #[test]
    fn wrong_types_unknown_fields_and_garbage_are_typed_errors() {
        for bad in [
            &br#"{"v":1,"ranges":"one"}"#[..],
            br#"{"v":1,"ranges":[[-1,2]]}"#,
            br#"{"v":1,"ranges":[],"extra":true}"#,
            br#"{"v":1}"#,
            b"not json",
            b"",
            b"\xff\xfe",
            br#"[1,2,3]"#,
        ] {
            assert!(
                matches!(
                    decode::<ResultsAck>(bad),
                    Err(DecodeError::Invalid { .. } | DecodeError::MissingVersion)
                ),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn batches_decode_row_by_row() {
        let good = String::from_utf8(encode(&sample_result(1))).unwrap();
        let payload = format!(
            r#"{{"v":1,"items":[{good},{{"seq":2,"check_id":7}},{{"oops":true}},{good}]}}"#
        );
        let rows = decode_rows::<CheckResult>(payload.as_bytes()).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].as_ref().unwrap().seq, 1);
        assert_eq!(rows[1].as_ref().unwrap_err().seq, Some(2));
        assert_eq!(rows[2].as_ref().unwrap_err().seq, None);
        assert_eq!(rows[2].as_ref().unwrap_err().index, 2);
        assert!(rows[3].is_ok());
        assert!(matches!(
            decode_rows::<CheckResult>(br#"{"v":2,"items":[]}"#),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        ));
        assert!(matches!(
            decode_rows::<CheckResult>(br#"{"items":[]}"#),
            Err(DecodeError::MissingVersion)
        ));
        assert!(matches!(
            decode_rows::<CheckResult>(br#"{"v":1,"items":{}}"#),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            decode_rows::<CheckResult>(br#"{"v":1,"items":[],"x":1}"#),
            Err(DecodeError::Invalid { .. })
        ));
    }

    /// The one-pass decode of a batch whose rows all decode gives what the row-by-row decode
    /// gives; one bad row sends the batch down the row-by-row path, its good rows intact.
    #[test]
    fn a_good_batch_decodes_in_one_pass_as_row_by_row() {
        let mut rows: Vec<CheckResult> = (1..=5).map(sample_result).collect();
        rows[1].reason = "é \"quoted\" \\ \u{1F600} \n".into();
        rows[2].values = BTreeMap::from([("loss_pct".to_owned(), 0.25)]);
        rows[3].status_code = Some(503);
        let items: Vec<String> = rows
            .iter()
            .map(|r| String::from_utf8(encode(r)).unwrap())
            .collect();
        let payload = format!(r#"{{"v":1,"items":[{}]}}"#, items.join(","));
        let decoded: Vec<CheckResult> = decode_rows::<CheckResult>(payload.as_bytes())
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(decoded, rows);
        let one_by_one: Vec<CheckResult> = items
            .iter()
            .map(|item| serde_json::from_str(item).unwrap())
            .collect();
        assert_eq!(decoded, one_by_one);
        let with_bad = format!(
            r#"{{"v":1,"items":[{},{{"seq":9}},{}]}}"#,
            items[0], items[4]
        );
        let decoded = decode_rows::<CheckResult>(with_bad.as_bytes()).unwrap();
        assert_eq!(decoded[0].as_ref().unwrap(), &rows[0]);
        assert_eq!(decoded[1].as_ref().unwrap_err().seq, Some(9));
        assert_eq!(decoded[2].as_ref().unwrap(), &rows[4]);
    }

    #[test]
    fn oversize_payloads_are_refused_before_parsing() {
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            decode::<ResultsAck>(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn check_kinds_use_a_type_tag() {
        let spec: CheckSpec = serde_json::from_str(
            r#"{"id":"a","interval_s":5,"timeout_ms":100,"kind":{"type":"tcp","host":"h","port":1}}"#,
        )
        .unwrap();
        assert_eq!(spec.kind.type_name(), "tcp");
        assert!(
            serde_json::from_str::<CheckSpec>(
                r#"{"id":"a","interval_s":5,"timeout_ms":100,"kind":{"type":"gopher"}}"#
            )
            .is_err()
        );
    }
}
