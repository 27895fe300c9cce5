//! Fuzz target: the topic parser and the per-identity topic rules the front door enforces.
//! The input is an agent id and a topic (or filter), split at the first newline. A parsed
//! topic prints back to itself; an agent may publish only on its own agent-published topics
//! and subscribe only to its own three exact topics; no filter a viewer may subscribe with
//! matches any agent's topic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vantage_mqtt::{AgentTopic, Topic, topic};

/// Whether an MQTT filter matches a topic name (MQTT 3.1.1 §4.7).
fn matches(filter: &str, name: &str) -> bool {
    let mut names = name.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if names.next().is_none() {
                    return false;
                }
            }
            exact => {
                if names.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    names.next().is_none()
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let (id, name) = text.split_once('\n').unwrap_or(("ag-1", text));

    if let Ok(parsed) = Topic::parse(name) {
        assert_eq!(
            parsed.to_string(),
            name,
            "a parsed topic prints back to itself"
        );
    }

    if topic::agent_may_publish(id, name) {
        assert!(topic::valid_id(id));
        let own = AgentTopic::ALL
            .into_iter()
            .filter(|kind| kind.is_agent_published())
            .any(|kind| topic::agent(id, kind) == name);
        assert!(
            own,
            "agent {id:?} may publish on {name:?}, not one of its own topics"
        );
    }

    if topic::agent_may_subscribe(id, name) {
        assert!(
            !name.contains(['+', '#']),
            "agent {id:?} may subscribe with the wildcard filter {name:?}"
        );
        assert!(matches!(
            Topic::parse(name),
            Ok(Topic::Agent { id: ref owner, kind }) if owner == id && !kind.is_agent_published()
        ));
    }

    if topic::viewer_may_subscribe(name) {
        // Any agent id: the filter's levels stand in for it where they are exact.
        let some_id = if topic::valid_id(id) { id } else { "ag-1" };
        for kind in AgentTopic::ALL {
            let agent_topic = topic::agent(some_id, kind);
            assert!(
                !matches(name, &agent_topic),
                "the viewer filter {name:?} matches {agent_topic:?}"
            );
        }
        for level in name.split('/') {
            assert!(
                !(level.contains(['+', '#']) && level.len() > 1),
                "a wildcard shares a level in {name:?}"
            );
        }
    }
});
