//! Fuzz target: a check definition as the API and the CLI take it (JSON). Anything either is
//! refused with a message or validates; a valid definition survives its round trip through
//! the stored row unchanged, and the spec an agent receives for it decodes on the agent into
//! the same probe, which the agent's own validation accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vantage_control_plane::checks::{self, CheckDefinition};
use vantage_mqtt::{DesiredConfig, MAX_CONFIG_BYTES, PROTOCOL_VERSION};

fuzz_target!(|bytes: &[u8]| {
    let Ok(definition) = serde_json::from_slice::<CheckDefinition>(bytes) else {
        return;
    };
    if let Err(error) = checks::validate(&definition) {
        assert!(!error.to_string().is_empty());
        return;
    }
    let row = checks::to_row("c-1".into(), &definition, 0);
    let back = checks::to_definition(&row);
    let mut expected = definition.clone();
    expected.id = Some("c-1".into());
    assert_eq!(
        serde_json::to_value(&back).ok(),
        serde_json::to_value(&expected).ok(),
        "the stored row changes the definition"
    );

    let config = DesiredConfig {
        v: PROTOCOL_VERSION,
        revision: 1,
        region: "r1".into(),
        metrics_interval_s: 10,
        heartbeat_interval_s: 10,
        checks: vec![row.spec()],
    };
    let wire = vantage_mqtt::encode(&config);
    if wire.len() <= MAX_CONFIG_BYTES {
        let received = vantage_mqtt::decode_limited::<DesiredConfig>(&wire, MAX_CONFIG_BYTES)
            .expect("the agent decodes the spec it is sent");
        assert_eq!(received.checks[0].kind, definition.kind);
        vantage_agent::probe::validate(&received.checks[0].kind)
            .expect("the agent accepts what the control plane validated");
    }
});
