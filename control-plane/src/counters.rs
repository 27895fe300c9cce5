//! Process-wide counters and gauges, rendered in the Prometheus text format on `GET /metrics`.
//!
//! Plain atomics: every counter and gauge is a named field, so a typo is a compile error and
//! rendering is one pass with no locks. Labels are fixed per field. Counters only grow;
//! gauges ([`Gauges`], reached as `counters.gauges`) go up and down, either kept by guards
//! that release what they took on drop, or set from the owner's size just before rendering.
//! The agent certificate expiry gauges ([`render_cert_expiry`]) are read from the store
//! when `/metrics` is scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($field:ident => ($name:literal, $help:literal $(, $label:literal)?)),* $(,)?) => {
        /// Every counter of the process.
        #[derive(Debug, Default)]
        pub struct Counters {
            $(pub $field: AtomicU64,)*
            /// The values that go up and down.
            pub gauges: Gauges,
        }

        impl Counters {
            /// Renders every counter in the Prometheus text exposition format.
            pub fn render(&self) -> String {
                let mut out = String::new();
                let mut seen = std::collections::BTreeSet::new();
                $(
                    if seen.insert($name) {
                        let _ = writeln!(out, "# HELP {} {}", $name, $help);
                        let _ = writeln!(out, "# TYPE {} counter", $name);
                    }
                    let labels: &str = counters!(@label $($label)?);
                    let _ = writeln!(out, "{}{} {}", $name, labels, self.$field.load(Ordering::Relaxed));
                )*
                out.push_str(&self.gauges.render());
                out
            }
        }
    };
    (@label $label:literal) => { $label };
    (@label) => { "" };
}

macro_rules! gauges {
    ($($field:ident => ($name:literal, $help:literal)),* $(,)?) => {
        /// Every gauge of the process (current values, not totals).
        #[derive(Debug, Default)]
        pub struct Gauges {
            $(pub $field: AtomicU64,)*
        }

        impl Gauges {
            /// Renders every gauge in the Prometheus text exposition format.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP {} {}", $name, $help);
                    let _ = writeln!(out, "# TYPE {} gauge", $name);
                    let _ = writeln!(out, "{} {}", $name, self.$field.load(Ordering::Relaxed));
                )*
                out
            }
        }
    };
}

counters! {
    frontdoor_accepted => ("vantage_frontdoor_connections_total", "TCP connections accepted by the MQTT front door."),
    frontdoor_over_limit => ("vantage_frontdoor_refused_total", "Front-door connections refused, by reason.", "{reason=\"connection_limit\"}"),
    frontdoor_handshake_failed => ("vantage_frontdoor_refused_total", "Front-door connections refused, by reason.", "{reason=\"tls_handshake\"}"),
    frontdoor_handshake_timeout => ("vantage_frontdoor_refused_total", "Front-door connections refused, by reason.", "{reason=\"tls_timeout\"}"),
    frontdoor_address_limit => ("vantage_frontdoor_refused_total", "Front-door connections refused, by reason.", "{reason=\"address_limit\"}"),
    frontdoor_connect_timeout => ("vantage_frontdoor_refused_total", "Front-door connections refused, by reason.", "{reason=\"connect_timeout\"}"),
    frontdoor_revoked => ("vantage_frontdoor_refused_total", "Front-door connections refused, by reason.", "{reason=\"revoked\"}"),
    frontdoor_bad_credentials => ("vantage_frontdoor_refused_total", "Front-door connections refused, by reason.", "{reason=\"credentials\"}"),
    frontdoor_identity_mismatch => ("vantage_frontdoor_refused_total", "Front-door connections refused, by reason.", "{reason=\"identity\"}"),
    frontdoor_protocol_errors => ("vantage_frontdoor_protocol_errors_total", "Connections closed for speaking something other than MQTT 3.1.1."),
    frontdoor_acl_violations => ("vantage_frontdoor_acl_violations_total", "Connections closed for publishing or subscribing outside their topics."),
    frontdoor_logins => ("vantage_frontdoor_logins_total", "MQTT logins forwarded to the broker."),
    ingest_messages => ("vantage_ingest_messages_total", "Messages received from agents."),
    ingest_malformed => ("vantage_ingest_rejected_total", "Agent messages dropped, by reason.", "{reason=\"malformed\"}"),
    ingest_oversize => ("vantage_ingest_rejected_total", "Agent messages dropped, by reason.", "{reason=\"oversize\"}"),
    ingest_bad_version => ("vantage_ingest_rejected_total", "Agent messages dropped, by reason.", "{reason=\"version\"}"),
    ingest_unknown_agent => ("vantage_ingest_rejected_total", "Agent messages dropped, by reason.", "{reason=\"unknown_agent\"}"),
    ingest_bad_topic => ("vantage_ingest_rejected_total", "Agent messages dropped, by reason.", "{reason=\"topic\"}"),
    ingest_row_undecodable => ("vantage_ingest_rows_refused_total", "Rows refused for good (acknowledged when they carry a seq), by reason.", "{reason=\"undecodable\"}"),
    ingest_row_invalid_id => ("vantage_ingest_rows_refused_total", "Rows refused for good (acknowledged when they carry a seq), by reason.", "{reason=\"invalid_id\"}"),
    ingest_row_seq_rewound => ("vantage_ingest_rows_held_total", "Rows not stored yet because their agent reused seqs the store holds; they come back renumbered.", "{reason=\"seq_rewound\"}"),
    ingest_row_cut => ("vantage_ingest_rows_repaired_total", "Rows stored after a repair, by repair.", "{repair=\"cut\"}"),
    ingest_row_nul => ("vantage_ingest_rows_repaired_total", "Rows stored after a repair, by repair.", "{repair=\"nul\"}"),
    ingest_seq_rewound => ("vantage_ingest_seq_rewound_total", "Hellos whose next seq was at or below the seqs stored for the agent."),
    ingest_ack_publish_failed => ("vantage_ingest_ack_publish_failed_total", "results/ack publishes that failed (the agent resends those rows)."),
    ingest_batches_given_up => ("vantage_ingest_batches_given_up_total", "Ingest batches not committed after every retry (the agents resend them)."),
    ingest_rows_committed => ("vantage_ingest_rows_committed_total", "Results, metrics and events rows committed (replays included)."),
    ingest_batches => ("vantage_ingest_batches_total", "Ingest transactions committed."),
    ingest_commit_errors => ("vantage_ingest_commit_errors_total", "Ingest transactions that failed (their rows are not acknowledged)."),
    config_too_large => ("vantage_config_too_large_total", "Desired configs not published because they exceeded the size an agent accepts."),
    api_rate_limited => ("vantage_api_rate_limited_total", "API requests refused by the rate limiter."),
    http_over_limit => ("vantage_http_refused_total", "HTTPS connections refused or closed early, by reason.", "{reason=\"connection_limit\"}"),
    http_handshake_timeout => ("vantage_http_refused_total", "HTTPS connections refused or closed early, by reason.", "{reason=\"tls_timeout\"}"),
    http_header_timeout => ("vantage_http_refused_total", "HTTPS connections refused or closed early, by reason.", "{reason=\"header_timeout\"}"),
    http_idle_closed => ("vantage_http_idle_closed_total", "HTTPS connections closed after the idle timeout with no request in flight."),
    cert_renewals_issued => ("vantage_cert_renewals_issued_total", "Agent certificates renewed over MQTT (a new certificate sent on cmd)."),
    cert_renewals_bad_request => ("vantage_cert_renewals_refused_total", "Agent certificate renewals refused, by reason.", "{reason=\"bad_request\"}"),
    cert_renewals_bad_csr => ("vantage_cert_renewals_refused_total", "Agent certificate renewals refused, by reason.", "{reason=\"bad_csr\"}"),
    cert_renewals_identity => ("vantage_cert_renewals_refused_total", "Agent certificate renewals refused, by reason.", "{reason=\"identity\"}"),
    cert_renewals_throttled => ("vantage_cert_renewals_refused_total", "Agent certificate renewals refused, by reason.", "{reason=\"throttled\"}"),
    cert_renewals_failed => ("vantage_cert_renewals_failed_total", "Agent certificate renewals not completed for a fault of ours (store or publish failed; the agent asks again)."),
    verdict_results => ("vantage_verdict_checks_judged_total", "Checks judged after a committed batch (once per check per batch)."),
    heartbeats_deferred => ("vantage_heartbeats_deferred_total", "Heartbeats left for the next group because another transaction (an ingest commit, most often) held their agent's row."),
    judge_queue_full => ("vantage_judge_queue_full_total", "Committed batches that waited for the judging task because its queue was full (judging slowed ingest)."),
    live_coalesced => ("vantage_live_coalesced_total", "Live-feed events replaced by a newer one of their key before a slow client was sent them."),
    live_missed => ("vantage_live_missed_total", "Live-feed events a slow client was told it missed (events without a key past its queue's bound, or past the hub's)."),
    events_accepted => ("vantage_events_total", "Events from integration sources, by outcome.", "{outcome=\"stored\"}"),
    events_duplicate => ("vantage_events_total", "Events from integration sources, by outcome.", "{outcome=\"duplicate\"}"),
    events_refused => ("vantage_events_total", "Events from integration sources, by outcome.", "{outcome=\"refused\"}"),
    webhooks_unauthorized => ("vantage_webhooks_refused_total", "Webhook requests refused before their events were read, by reason.", "{reason=\"unauthorized\"}"),
    webhooks_malformed => ("vantage_webhooks_refused_total", "Webhook requests refused before their events were read, by reason.", "{reason=\"malformed\"}"),
    zabbix_polls => ("vantage_zabbix_polls_total", "Zabbix API polls made (pages of event.get, or a poller's first read)."),
    zabbix_poll_errors => ("vantage_zabbix_poll_errors_total", "Zabbix API polls that failed (retried after a pause)."),
    zabbix_poll_skipped => ("vantage_zabbix_poll_skipped_total", "Zabbix recovery events whose problem the API no longer had (not stored)."),
    events_relayed => ("vantage_events_relayed_total", "Webhook bodies agents relayed from their network, by outcome.", "{outcome=\"taken\"}"),
    events_relayed_refused => ("vantage_events_relayed_total", "Webhook bodies agents relayed from their network, by outcome.", "{outcome=\"refused\"}"),
    events_relayed_retry => ("vantage_events_relayed_total", "Webhook bodies agents relayed from their network, by outcome.", "{outcome=\"retry\"}"),
    webhooks_oversize => ("vantage_webhooks_refused_total", "Webhook requests refused before their events were read, by reason.", "{reason=\"oversize\"}"),
    verdict_transitions => ("vantage_verdict_transitions_total", "Check state changes stored with their evidence."),
    notify_delivered => ("vantage_notifications_total", "Notification delivery outcomes, by outcome.", "{outcome=\"delivered\"}"),
    notify_retried => ("vantage_notifications_total", "Notification delivery outcomes, by outcome.", "{outcome=\"retried\"}"),
    notify_dead => ("vantage_notifications_total", "Notification delivery outcomes, by outcome.", "{outcome=\"dead\"}"),
    notify_rate_limited => ("vantage_notifications_total", "Notification delivery outcomes, by outcome.", "{outcome=\"postponed_rate\"}"),
    fallback_runs => ("vantage_fallback_runs_total", "Checks run by the control plane for regions with no online agent that can take them."),
    expired_results => ("vantage_retention_deleted_rows_total", "Rows deleted after their retention window, by table.", "{table=\"results\"}"),
    expired_host_metrics => ("vantage_retention_deleted_rows_total", "Rows deleted after their retention window, by table.", "{table=\"host_metrics\"}"),
    expired_events => ("vantage_retention_deleted_rows_total", "Rows deleted after their retention window, by table.", "{table=\"source_events\"}"),
    expired_rollup_minute => ("vantage_retention_deleted_rows_total", "Rows deleted after their retention window, by table.", "{table=\"rollup_minute\"}"),
    expired_rollup_hour => ("vantage_retention_deleted_rows_total", "Rows deleted after their retention window, by table.", "{table=\"rollup_hour\"}"),
    packed_rows => ("vantage_packed_rows_total", "Rows of days that are over moved into day packs (PostgreSQL).", ""),
    retention_errors => ("vantage_retention_errors_total", "Retention passes that failed (the next pass goes on)."),
    live_relay_sent => ("vantage_live_relay_events_total", "Live updates relayed between replicas through PostgreSQL, by direction.", "{direction=\"sent\"}"),
    live_relay_received => ("vantage_live_relay_events_total", "Live updates relayed between replicas through PostgreSQL, by direction.", "{direction=\"received\"}"),
    live_relay_oversize => ("vantage_live_relay_dropped_total", "Live updates not relayed to other replicas, by reason (backlog: batches the relay queue had no room for).", "{reason=\"oversize\"}"),
    live_relay_backlog => ("vantage_live_relay_dropped_total", "Live updates not relayed to other replicas, by reason (backlog: batches the relay queue had no room for).", "{reason=\"backlog\"}"),
    live_relay_failed => ("vantage_live_relay_dropped_total", "Live updates not relayed to other replicas, by reason (backlog: batches the relay queue had no room for).", "{reason=\"notify_failed\"}"),
    broker_allowed_agent => ("vantage_broker_callout_allowed_total", "Connections to the external broker the auth callout allowed, by identity.", "{identity=\"agent\"}"),
    broker_allowed_control_plane => ("vantage_broker_callout_allowed_total", "Connections to the external broker the auth callout allowed, by identity.", "{identity=\"control_plane\"}"),
    broker_refused_no_certificate => ("vantage_broker_callout_refused_total", "Connections to the external broker the auth callout refused, by reason.", "{reason=\"no_certificate\"}"),
    broker_refused_subject => ("vantage_broker_callout_refused_total", "Connections to the external broker the auth callout refused, by reason.", "{reason=\"subject\"}"),
    broker_refused_not_mqtt => ("vantage_broker_callout_refused_total", "Connections to the external broker the auth callout refused, by reason.", "{reason=\"not_mqtt\"}"),
    broker_refused_identity => ("vantage_broker_callout_refused_total", "Connections to the external broker the auth callout refused, by reason.", "{reason=\"identity\"}"),
    broker_refused_revoked => ("vantage_broker_callout_refused_total", "Connections to the external broker the auth callout refused, by reason.", "{reason=\"revoked\"}"),
    broker_requests_invalid => ("vantage_broker_callout_invalid_total", "Auth callout requests that did not decode or whose signature did not verify (not answered)."),
    broker_log_skipped => ("vantage_broker_log_skipped_total", "Messages the embedded broker dropped from a filter's log before a subscriber read them, summed per subscriber: the subscriber (ingest, an agent, a viewer) fell further behind than the log holds. Agents resend rows that were not acknowledged; a skipped config reaches its agent with the next change or at its next connection (it is retained)."),
    broker_ingested => ("vantage_broker_ingested_total", "Agent messages taken from the broker cluster's ingest stream."),
    broker_publish_dropped => ("vantage_broker_publish_dropped_total", "Messages for agents on the broker cluster dropped because the publisher's queue was full."),
    broker_kicks => ("vantage_broker_kicks_total", "Connections of revoked agents the external broker was told to close."),
    broker_kick_failures => ("vantage_broker_kick_failures_total", "Revoked agents whose broker connections could not be looked up or closed (retried)."),
    live_relay_refused => ("vantage_live_relay_refused_total", "Live payloads or events from other replicas that did not decode."),
}

gauges! {
    http_connections_open => ("vantage_http_connections_open", "HTTPS connections open now (TLS handshakes and upgraded live feeds included)."),
    leader => ("vantage_leader", "1 while this replica holds the scheduling lease (schedules, assigns, notifies), else 0."),
    broker_ingest_reading => ("vantage_broker_ingest_reading", "1 while this replica reads agents' messages from the broker cluster's ingest stream, else 0."),
    run_now_pending => ("vantage_run_now_pending", "Run-now answers awaited now (one per asked region of each request in progress)."),
}

/// Renders the gauges of agent certificate expiry: the soonest `notAfter` among agents that
/// are not revoked, as a Unix timestamp and as seconds left from `now_ms` (negative once it
/// passed). With no agent, only the help lines are rendered.
pub fn render_cert_expiry(soonest_ms: Option<i64>, now_ms: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP vantage_agent_cert_soonest_expiry_timestamp_seconds The earliest notAfter among the certificates of agents that are not revoked."
    );
    let _ = writeln!(
        out,
        "# TYPE vantage_agent_cert_soonest_expiry_timestamp_seconds gauge"
    );
    if let Some(ms) = soonest_ms {
        let _ = writeln!(
            out,
            "vantage_agent_cert_soonest_expiry_timestamp_seconds {}",
            ms.div_euclid(1000)
        );
    }
    let _ = writeln!(
        out,
        "# HELP vantage_agent_cert_soonest_expiry_seconds Seconds until the earliest agent certificate expiry (negative once it passed)."
    );
    let _ = writeln!(
        out,
        "# TYPE vantage_agent_cert_soonest_expiry_seconds gauge"
    );
    if let Some(ms) = soonest_ms {
        let _ = writeln!(
            out,
            "vantage_agent_cert_soonest_expiry_seconds {}",
            (ms - now_ms).div_euclid(1000)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_once_per_name_and_labels_per_field() {
        let counters = Counters::default();
        counters.ingest_malformed.fetch_add(3, Ordering::Relaxed);
        let text = counters.render();
        assert_eq!(
            text.matches("# HELP vantage_ingest_rejected_total").count(),
            1
        );
        assert!(text.contains("vantage_ingest_rejected_total{reason=\"malformed\"} 3\n"));
        assert!(text.contains("vantage_frontdoor_connections_total 0\n"));
    }

    #[test]
    fn renders_gauges_as_gauges() {
        let counters = Counters::default();
        counters
            .gauges
            .http_connections_open
            .fetch_add(2, Ordering::Relaxed);
        let text = counters.render();
        assert!(text.contains("# TYPE vantage_http_connections_open gauge\n"));
        assert!(text.contains("vantage_http_connections_open 2\n"));
        assert!(text.contains("# TYPE vantage_run_now_pending gauge\n"));
        assert!(text.contains("# TYPE vantage_http_idle_closed_total counter\n"));
    }

    #[test]
    fn cert_expiry_gauges_show_the_soonest_expiry_or_no_sample() {
        let text = render_cert_expiry(Some(1_000_090_500), 1_000_000_000);
        assert!(text.contains("vantage_agent_cert_soonest_expiry_timestamp_seconds 1000090\n"));
        assert!(text.contains("vantage_agent_cert_soonest_expiry_seconds 90\n"));
        assert!(text.contains("# TYPE vantage_agent_cert_soonest_expiry_seconds gauge\n"));
        let expired = render_cert_expiry(Some(1_000), 61_000);
        assert!(expired.contains("vantage_agent_cert_soonest_expiry_seconds -60\n"));
        let none = render_cert_expiry(None, 0);
        assert!(!none.lines().any(|l| !l.starts_with('#')), "{none}");
    }
}
