//! Fuzz target: every payload the control plane or the agent decodes from MQTT. Nothing may
//! panic; a row that decodes is brought within its text bounds once and for all (a second
//! repair changes nothing), and what decodes encodes to something that decodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use vantage_mqtt::payload::Versioned;
use vantage_mqtt::text::Repair;
use vantage_mqtt::{
    AgentAck, CheckResult, CommandMessage, CsrRequest, DesiredConfig, Event, Heartbeat, Hello,
    HostMetrics, MAX_CONFIG_BYTES, ResultsAck, Status, decode, decode_limited, decode_rows, encode,
};

/// Decodes `bytes` as `T`; when it decodes, its encoding must decode too.
fn whole<T: DeserializeOwned + Serialize + Versioned>(bytes: &[u8]) -> Option<T> {
    let value = decode::<T>(bytes).ok()?;
    let again = encode(&value);
    assert!(
        decode_limited::<T>(&again, usize::MAX).is_ok(),
        "a decoded payload's encoding does not decode: {}",
        String::from_utf8_lossy(&again)
    );
    Some(value)
}

/// Decodes `bytes` as a batch of `T`, repairs every row that decodes, and checks the repair.
fn rows<T: DeserializeOwned + Serialize>(bytes: &[u8], repair: fn(&mut T) -> Repair) {
    let Ok(rows) = decode_rows::<T>(bytes) else {
        return;
    };
    for row in rows {
        match row {
            Ok(mut row) => {
                repair(&mut row);
                assert!(
                    !repair(&mut row).any(),
                    "a repaired row needed repair again"
                );
                let again = encode(&row);
                assert!(
                    serde_json::from_slice::<T>(&again).is_ok(),
                    "a repaired row's encoding does not decode: {}",
                    String::from_utf8_lossy(&again)
                );
            }
            // A refused row names its place; its seq, when it has one, is what gets acked.
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    rows::<CheckResult>(bytes, CheckResult::bound_texts);
    rows::<HostMetrics>(bytes, HostMetrics::bound_texts);
    rows::<Event>(bytes, Event::bound_texts);
    if let Some(mut hello) = whole::<Hello>(bytes) {
        hello.bound_texts();
        assert!(
            !hello.bound_texts().any(),
            "a repaired hello needed repair again"
        );
    }
    whole::<Status>(bytes);
    whole::<Heartbeat>(bytes);
    whole::<AgentAck>(bytes);
    whole::<CsrRequest>(bytes);
    whole::<CommandMessage>(bytes);
    if let Some(ack) = whole::<ResultsAck>(bytes) {
        // What an ack covers is what the agent deletes from its spool: it must agree with
        // the ranges it was built from.
        let rebuilt = ResultsAck::from_seqs(
            (0..64u64)
                .filter(|seq| ack.covers(*seq))
                .collect::<Vec<_>>(),
        );
        for seq in 0..64u64 {
            assert_eq!(rebuilt.covers(seq), ack.covers(seq), "seq {seq}");
        }
    }
    let _ = decode_limited::<DesiredConfig>(bytes, MAX_CONFIG_BYTES);
});
