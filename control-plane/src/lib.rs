//! Vantage control plane: enrolls agents, runs the MQTT front door and embedded broker,
//! ingests what agents send into the store, assigns checks, serves the API and live feed.
//!
//! Layout:
//! - [`app`]: [`app::Application`] — build from [`settings::Settings`], report the bound
//!   ports, run until stopped.
//! - [`broker`]: rumqttd on loopback and the in-process links; [`frontdoor`]: the public TLS
//!   listener that polices identities and topics in front of it.
//! - [`ingest`]: decodes agent messages, commits batches, acknowledges, fans out.
//! - [`assign`]: turns checks and online agents into each agent's retained desired config.
//! - Domain: [`enrollment`], [`checks`], [`runnow`], [`verdict`] (state per check across regions),
//!   [`incidents`], [`notify`] (channels and the outbox sender), [`regions`],
//!   [`maintenance`], [`rules`] (host-metric rules; maths in [`signals`]), [`fallback`].
//! - [`store`]: PostgreSQL and SQLite; [`pki`]: the CA; [`renew`]: agent certificate renewal
//!   over MQTT; [`api`]: HTTP routes.
//! - [`hub`]: the live fan-out; [`counters`]: Prometheus counters; [`cli`]: subcommands;
//!   [`cloudinit`]: the user-data `vantage cloud-init` prints.

pub mod api;
pub mod apiclient;
pub mod app;
pub mod assign;
pub mod backup;
pub mod broker;
pub mod brokerauth;
pub mod callout;
pub mod checks;
pub mod cli;
pub mod cloudinit;
pub mod clusterlink;
pub mod counters;
pub mod demo;
pub mod enrollment;
pub mod exporter;
pub mod fallback;
pub mod frontdoor;
pub mod hub;
pub mod incidents;
pub mod ingest;
pub mod integrations;
pub mod lease;
pub mod limits;
pub mod livesync;
pub mod maintenance;
pub mod memory;
pub mod notify;
pub mod overview;
pub mod pki;
pub mod regions;
pub mod renew;
pub mod retention;
pub mod rollup;
pub mod rules;
pub mod runnow;
pub mod settings;
pub mod signals;
pub mod sketch;
pub mod status_page;
pub mod store;
pub mod telemetry;
pub mod verdict;

use std::sync::Arc;

/// State shared by every task and handler.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    pub pki: Arc<pki::Pki>,
    pub hub: hub::Hub,
    /// Phases and certificate days of each (check, region)'s latest result, for
    /// `/metrics/checks`.
    pub latest: Arc<exporter::Latest>,
    /// Keys of names and texts ingest has committed ([`store::keys::KeyCache`]).
    pub keys: Arc<store::keys::KeyCache>,
    pub counters: Arc<counters::Counters>,
    pub publisher: broker::Publisher,
    pub registry: Arc<frontdoor::Registry>,
    pub settings: Arc<settings::Settings>,
    /// The MQTT address agents are told to connect to (`host:port`).
    pub mqtt_public_addr: String,
    /// Serialises reassignment runs and holds what each agent was last given.
    pub assign_lock: Arc<tokio::sync::Mutex<assign::Published>>,
    /// Each region's config size, guarding check writes against oversize configs.
    pub config_budget: Arc<tokio::sync::Mutex<assign::ConfigBudget>>,
    /// Wakes the reassignment worker; bursts of state changes coalesce into one run.
    pub reassign: Arc<tokio::sync::Notify>,
    /// Run-now requests waiting for agents' answers.
    pub pending: Arc<runnow::Pending>,
    /// One certificate renewal request handled per agent per window.
    pub csr_throttle: Arc<renew::CsrThrottle>,
    /// The last assignment run's plan: which (check, region) pairs run on the fallback.
    pub plan: Arc<tokio::sync::watch::Sender<Arc<assign::Plan>>>,
    /// Every check's verdict in memory.
    pub judge: Arc<verdict::Judge>,
    /// Host-metric rules and their state.
    pub rules: Arc<rules::Engine>,
    /// Committed batches on their way to judging ([`verdict::judge_worker`]).
    pub judge_queue: tokio::sync::mpsc::Sender<verdict::Judged>,
    /// Wakes the re-judging worker (check changes, agents coming and going).
    pub rejudge: Arc<tokio::sync::Notify>,
    /// Wakes the notification sender when rows were queued.
    pub notify_outbox: Arc<tokio::sync::Notify>,
    /// The HTTP client notifications are delivered with.
    pub http_client: reqwest::Client,
    /// Agents by the host names integration sources know them by.
    pub hosts: Arc<integrations::HostMap>,
    /// Integration sources, cached for their webhooks.
    pub sources: Arc<integrations::SourceCache>,
    /// The group writer integration events are stored through.
    pub event_writes: Arc<integrations::EventWrites>,
    /// Events per source and outcome.
    pub source_counters: Arc<integrations::SourceCounters>,
    /// External nodes written lately (one write a minute per busy host).
    pub external_seen: Arc<integrations::ExternalSeen>,
    /// Whether this replica holds the scheduling lease.
    pub lease: lease::Lease,
}
