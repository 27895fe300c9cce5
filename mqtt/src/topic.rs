//! Topic names: builders, a parser, identifier rules and the per-identity access rules.
//!
//! Every topic lives under [`PREFIX`]. An agent id is also the CN of the agent's client
//! certificate and becomes a topic level, so its characters are restricted (see
//! [`valid_id`]). The access rules here are the single definition used by the control plane's
//! front door: what an agent may publish and subscribe to, and what a viewer may read.

use std::fmt;

/// Prefix of every Vantage topic.
pub const PREFIX: &str = "vantage/v1/";

/// The per-agent topics, relative to `vantage/v1/agents/{id}/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentTopic {
    /// Agent → control plane: facts sent on every connect.
    Hello,
    /// Agent → control plane: retained `online`; the last will sets `offline`.
    Status,
    /// Agent → control plane: liveness, spool and drop counters.
    Heartbeat,
    /// Agent → control plane: host metrics batches.
    Metrics,
    /// Agent → control plane: check result batches.
    Results,
    /// Agent → control plane: relayed events.
    Events,
    /// Agent → control plane: acknowledgement of a config revision or command.
    Ack,
    /// Agent → control plane: a certificate signing request for a new key (renewal); the
    /// certificate comes back on `cmd`.
    Csr,
    /// Control plane → agent: retained desired state.
    Config,
    /// Control plane → agent: commands.
    Cmd,
    /// Control plane → agent: highest sequence committed to the store.
    ResultsAck,
}

impl AgentTopic {
    /// All per-agent topics.
    pub const ALL: [AgentTopic; 11] = [
        AgentTopic::Hello,
        AgentTopic::Status,
        AgentTopic::Heartbeat,
        AgentTopic::Metrics,
        AgentTopic::Results,
        AgentTopic::Events,
        AgentTopic::Ack,
        AgentTopic::Csr,
        AgentTopic::Config,
        AgentTopic::Cmd,
        AgentTopic::ResultsAck,
    ];

    /// The topic suffix after `agents/{id}/`.
    pub fn suffix(self) -> &'static str {
        match self {
            AgentTopic::Hello => "hello",
            AgentTopic::Status => "status",
            AgentTopic::Heartbeat => "heartbeat",
            AgentTopic::Metrics => "metrics",
            AgentTopic::Results => "results",
            AgentTopic::Events => "events",
            AgentTopic::Ack => "ack",
            AgentTopic::Csr => "csr",
            AgentTopic::Config => "config",
            AgentTopic::Cmd => "cmd",
            AgentTopic::ResultsAck => "results/ack",
        }
    }

    /// Whether the agent itself publishes on this topic (as opposed to receiving on it).
    pub fn is_agent_published(self) -> bool {
        !matches!(
            self,
            AgentTopic::Config | AgentTopic::Cmd | AgentTopic::ResultsAck
        )
    }

    fn from_suffix(suffix: &str) -> Option<AgentTopic> {
        AgentTopic::ALL.into_iter().find(|t| t.suffix() == suffix)
    }
}

/// A parsed Vantage topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `agents/{id}/{kind}`.
    Agent { id: String, kind: AgentTopic },
    /// `status/nodes/{id}` (retained).
    StatusNode { id: String },
    /// `status/checks/{check}` (retained, the check's overall state).
    StatusCheck { check: String },
    /// `status/checks/{check}/{region}` (retained).
    StatusCheckRegion { check: String, region: String },
    /// `events/{source}`.
    Events { source: String },
    /// `incidents`.
    Incidents,
}

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {topic:?} is not under {PREFIX}")]
    Prefix { topic: String },
    #[error("topic {topic:?} is not a Vantage topic")]
    Unknown { topic: String },
    #[error("identifier {id:?} in topic {topic:?} is not valid (1-64 of a-z, 0-9, '-', '_', '.')")]
    Identifier { topic: String, id: String },
}

/// Whether `id` may be used as an agent, check, region or source id (it becomes a topic level).
///
/// Allowed: 1 to 64 characters of ASCII lower-case letters, digits, `-`, `_` and `.`, not
/// starting with `.`. This excludes MQTT wildcards, separators and `$`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// Whether `id` may name an integration source: 1 to 64 lower-case letters, digits, `-` and
/// `_`, starting with a letter or digit (it appears in webhook URLs and `events/{source}`).
pub fn valid_source_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric()
}

/// The full name of a per-agent topic.
pub fn agent(id: &str, kind: AgentTopic) -> String {
    format!("{PREFIX}agents/{id}/{}", kind.suffix())
}

/// `vantage/v1/status/nodes/{id}`.
pub fn status_node(id: &str) -> String {
    format!("{PREFIX}status/nodes/{id}")
}

/// `vantage/v1/status/checks/{check}`.
pub fn status_check(check: &str) -> String {
    format!("{PREFIX}status/checks/{check}")
}

/// `vantage/v1/status/checks/{check}/{region}`.
pub fn status_check_region(check: &str, region: &str) -> String {
    format!("{PREFIX}status/checks/{check}/{region}")
}

/// `vantage/v1/events/{source}`.
pub fn events(source: &str) -> String {
    format!("{PREFIX}events/{source}")
}

/// `vantage/v1/incidents`.
pub fn incidents() -> String {
    format!("{PREFIX}incidents")
}

/// The subscription filters the control plane uses for everything agents publish: one per
/// agent-published kind, so its ingest log never carries its own `config`, `cmd` or
/// `results/ack` publishes, and the embedded broker can size those logs apart from the
/// per-agent filters ([`agent_filter_patterns`] match those and not these).
pub fn all_agents_filters() -> Vec<String> {
    AgentTopic::ALL
        .iter()
        .filter(|kind| kind.is_agent_published())
        .map(|kind| format!("{PREFIX}agents/+/{}", kind.suffix()))
        .collect()
}

/// Patterns matching the subscription filters an agent holds on its own topics (`config`,
/// `cmd`, `results/ack`): one filter per agent each, so the embedded broker keeps their logs
/// small. None of them matches [`all_agents_filters`] or [`viewer_filter_patterns`].
pub fn agent_filter_patterns() -> [String; 3] {
    [
        format!("{PREFIX}agents/+/{}", AgentTopic::Config.suffix()),
        format!("{PREFIX}agents/+/{}", AgentTopic::Cmd.suffix()),
        format!("{PREFIX}agents/+/{}", AgentTopic::ResultsAck.suffix()),
    ]
}

/// Patterns matching every subscription filter a viewer may hold (anything below `status/`,
/// `events/`, and `incidents`): few filters, shared by every viewer that holds them.
pub fn viewer_filter_patterns() -> [String; 3] {
    [
        format!("{PREFIX}status/#"),
        format!("{PREFIX}events/#"),
        format!("{PREFIX}incidents"),
    ]
}

impl Topic {
    /// Parses a full topic name.
    ///
    /// # Errors
    /// Returns a [`TopicError`] for names outside the tree or with invalid identifiers.
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let rest = topic
            .strip_prefix(PREFIX)
            .ok_or_else(|| TopicError::Prefix {
                topic: topic.to_owned(),
            })?;
        let unknown = || TopicError::Unknown {
            topic: topic.to_owned(),
        };
        let check_id = |id: &str| -> Result<String, TopicError> {
            if valid_id(id) {
                Ok(id.to_owned())
            } else {
                Err(TopicError::Identifier {
                    topic: topic.to_owned(),
                    id: id.to_owned(),
                })
            }
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["agents", id, suffix @ ..] => {
                let kind = AgentTopic::from_suffix(&suffix.join("/")).ok_or_else(unknown)?;
                Ok(Topic::Agent {
                    id: check_id(id)?,
                    kind,
                })
            }
            ["status", "nodes", id] => Ok(Topic::StatusNode { id: check_id(id)? }),
            ["status", "checks", check] => Ok(Topic::StatusCheck {
                check: check_id(check)?,
            }),
            ["status", "checks", check, region] => Ok(Topic::StatusCheckRegion {
                check: check_id(check)?,
                region: check_id(region)?,
            }),
            ["events", source] => Ok(Topic::Events {
                source: check_id(source)?,
            }),
            ["incidents"] => Ok(Topic::Incidents),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Topic::Agent { id, kind } => agent(id, *kind),
            Topic::StatusNode { id } => status_node(id),
            Topic::StatusCheck { check } => status_check(check),
            Topic::StatusCheckRegion { check, region } => status_check_region(check, region),
            Topic::Events { source } => events(source),
            Topic::Incidents => incidents(),
        };
        f.write_str(&name)
    }
}

/// The NATS subject an MQTT broker on NATS uses for `topic`: levels joined by `.`, and a
/// `.` inside a level written as `//` (NATS's own mapping, so that permissions the control
/// plane grants on subjects match what agents publish as topics). Wildcards map to `*`/`>`.
pub fn nats_subject(topic: &str) -> String {
    topic
        .split('/')
        .map(|level| match level {
            "+" => "*".to_owned(),
            "#" => ">".to_owned(),
            level => level.replace('.', "//"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The MQTT topic of a NATS subject a broker on NATS carries MQTT messages on: the
/// inverse of [`nats_subject`] for topics without wildcards.
pub fn topic_of_nats_subject(subject: &str) -> String {
    subject
        .split('.')
        .map(|level| level.replace("//", "."))
        .collect::<Vec<_>>()
        .join("/")
}

/// The MQTT client id an agent presents: its id with `.` written as `~` (a broker on NATS
/// refuses `.` in client ids; `~` is never part of an id, see [`valid_id`], so the mapping
/// is one to one). Ids without `.` are their own client id.
pub fn nats_client_id(id: &str) -> String {
    id.replace('.', "~")
}

/// Whether the agent `id` may publish on `topic` (only its own agent-published topics).
pub fn agent_may_publish(id: &str, topic: &str) -> bool {
    matches!(Topic::parse(topic), Ok(Topic::Agent { id: ref owner, kind }) if owner == id && kind.is_agent_published())
}

/// Whether the agent `id` may subscribe with `filter` (only its own config, cmd, results/ack).
///
/// Wildcards are refused: an agent subscribes to exact topics. An id outside the id rules
/// ([`valid_id`]) may subscribe to nothing, as it may publish nothing.
pub fn agent_may_subscribe(id: &str, filter: &str) -> bool {
    valid_id(id)
        && [AgentTopic::Config, AgentTopic::Cmd, AgentTopic::ResultsAck]
            .into_iter()
            .any(|kind| agent(id, kind) == filter)
}

/// Whether a read-only viewer may subscribe with `filter`: `status/#`, `events/#`,
/// `incidents` and anything below them, wildcards allowed only inside those subtrees.
pub fn viewer_may_subscribe(filter: &str) -> bool {
    let Some(rest) = filter.strip_prefix(PREFIX) else {
        return false;
    };
    let first = rest.split('/').next().unwrap_or("");
    matches!(first, "status" | "events" | "incidents")
        && (first != "incidents" || rest == "incidents")
        && !rest
            .split('/')
            .any(|level| level.contains('#') && level != "#")
        && !rest
            .split('/')
            .any(|level| level.contains('+') && level != "+")
        && rest.find('#').is_none_or(|pos| pos == rest.len() - 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nats_subjects_and_client_ids_follow_the_brokers_mapping() {
        assert_eq!(
            super::nats_subject("vantage/v1/agents/edge.1/results/ack"),
            "vantage.v1.agents.edge//1.results.ack"
        );
        assert_eq!(
            super::nats_subject("vantage/v1/status/#"),
            "vantage.v1.status.>"
        );
        assert_eq!(
            super::nats_subject("vantage/v1/agents/+/hello"),
            "vantage.v1.agents.*.hello"
        );
        assert_eq!(super::nats_client_id("edge.1.eu"), "edge~1~eu");
        for topic in [
            "vantage/v1/agents/edge.1/results/ack",
            "vantage/v1/agents/a-1/hello",
        ] {
            assert_eq!(
                super::topic_of_nats_subject(&super::nats_subject(topic)),
                topic
            );
        }
        assert_eq!(super::nats_client_id("ag-7"), "ag-7");
    }

    use super::*;

    #[test]
    fn agent_topics_round_trip_through_the_parser() {
        for kind in AgentTopic::ALL {
            let name = agent("ag-1", kind);
            let parsed = Topic::parse(&name).unwrap();
            assert_eq!(
                parsed,
                Topic::Agent {
                    id: "ag-1".into(),
                    kind
                }
            );
            assert_eq!(parsed.to_string(), name);
        }
    }

    #[test]
    fn status_topics_round_trip() {
        for name in [
            status_node("n1"),
            status_check("web"),
            status_check_region("web", "us-east"),
            events("zabbix"),
            incidents(),
        ] {
            assert_eq!(Topic::parse(&name).unwrap().to_string(), name);
        }
    }

    #[test]
    fn hostile_topics_are_refused_with_a_typed_error() {
        assert!(matches!(
            Topic::parse("other/agents/a/hello"),
            Err(TopicError::Prefix { .. })
        ));
        assert!(matches!(
            Topic::parse("vantage/v1/agents/a/nope"),
            Err(TopicError::Unknown { .. })
        ));
        assert!(matches!(
            Topic::parse("vantage/v1/agents/+/hello"),
            Err(TopicError::Identifier { .. })
        ));
        assert!(matches!(
            Topic::parse("vantage/v1/agents/A B/hello"),
            Err(TopicError::Identifier { .. })
        ));
        assert!(Topic::parse("").is_err());
    }

    #[test]
    fn identifier_rules() {
        assert!(valid_id("ag-0123abcd"));
        assert!(valid_id("us-east"));
        for bad in [
            "",
            "a/b",
            "a+",
            "#",
            "$SYS",
            "UPPER",
            ".hidden",
            &"x".repeat(65),
        ] {
            assert!(!valid_id(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn agents_publish_and_subscribe_only_their_own_topics() {
        assert!(agent_may_publish("a", &agent("a", AgentTopic::Results)));
        assert!(agent_may_publish("a", &agent("a", AgentTopic::Status)));
        assert!(!agent_may_publish("a", &agent("b", AgentTopic::Results)));
        assert!(!agent_may_publish("a", &agent("a", AgentTopic::Config)));
        assert!(!agent_may_publish("a", &agent("a", AgentTopic::ResultsAck)));
        assert!(agent_may_publish("a", &agent("a", AgentTopic::Csr)));
        assert!(!agent_may_publish("a", &agent("b", AgentTopic::Csr)));
        assert!(!agent_may_subscribe("a", &agent("a", AgentTopic::Csr)));
        assert!(!agent_may_publish("a", &status_node("a")));
        assert!(agent_may_subscribe("a", &agent("a", AgentTopic::Config)));
        assert!(agent_may_subscribe(
            "a",
            &agent("a", AgentTopic::ResultsAck)
        ));
        assert!(!agent_may_subscribe("a", &agent("b", AgentTopic::Config)));
        assert!(!agent_may_subscribe("a", "vantage/v1/agents/+/config"));
        assert!(!agent_may_subscribe("a", "#"));
        // Found by the topic fuzz target: an id outside the rules (here empty) could subscribe
        // to the topics its name builds, though it could publish on none.
        assert!(!agent_may_subscribe("", "vantage/v1/agents//results/ack"));
        assert!(!agent_may_subscribe("+", "vantage/v1/agents/+/config"));
    }

    #[test]
    fn viewers_read_only_status_events_and_incidents() {
        assert!(viewer_may_subscribe("vantage/v1/status/#"));
        assert!(viewer_may_subscribe("vantage/v1/status/checks/+/us-east"));
        assert!(viewer_may_subscribe("vantage/v1/events/#"));
        assert!(viewer_may_subscribe("vantage/v1/incidents"));
        assert!(!viewer_may_subscribe("vantage/v1/#"));
        assert!(!viewer_may_subscribe("#"));
        assert!(!viewer_may_subscribe("vantage/v1/agents/a/config"));
        assert!(!viewer_may_subscribe("vantage/v1/incidents/#"));
        assert!(!viewer_may_subscribe("vantage/v1/status/a#"));
    }
}
