//! Fuzz target: the agent's config file (`agent.toml`). Any text either parses into a config
//! that passes its own checks or is refused with an error naming the file; nothing panics,
//! and a config's `Debug` (what a log line shows) never holds its enrollment token or its
//! relay's secret.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vantage_agent::config::AgentConfig;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let path = Path::new("/etc/vantage/agent.toml");
    match AgentConfig::parse(text, path) {
        Ok(config) => {
            // The same config with other secrets must show the same.
            let mut scrubbed = config.clone();
            if let Some(token) = &mut scrubbed.enrollment_token {
                *token = "x".repeat(token.len() + 1);
            }
            if let Some(relay) = &mut scrubbed.relay {
                relay.secret = "x".repeat(relay.secret.len() + 1);
            }
            assert_eq!(
                format!("{config:?}"),
                format!("{scrubbed:?}"),
                "Debug shows a secret"
            );
            // What the agent derives from a config that passed must not panic either.
            if let Some(zabbix) = &config.zabbix_sender {
                let _ = zabbix.server_addr();
                let _ = zabbix.host_name("node-1");
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains("agent.toml"), "{message}");
        }
    }
});
