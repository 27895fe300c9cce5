//! The application: build it from settings, read the bound ports, run it until stopped.
//!
//! Start order: store (migrations, everyone offline), PKI, broker (and its readiness probe),
//! the public listeners (bound before anything is reported), retained state republished from
//! the store, then the ingest, front door, HTTP and housekeeping tasks.

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use vantage_mqtt::{AgentTopic, CheckStatusView, NodeState, NodeStatusView, encode, topic};

use crate::AppState;
use crate::broker::Broker;
use crate::counters::Counters;
use crate::frontdoor::{FrontDoor, FrontDoorSettings, Registry};
use crate::hub::Hub;
use crate::pki::Pki;
use crate::settings::Settings;
use crate::store::{Role, Store};

/// A built, listening control plane.
pub struct Application {
    http_port: u16,
    mqtt_port: u16,
    state: AppState,
    tasks: Vec<JoinHandle<()>>,
}

/// File in the data dir naming the bound ports (`{"http_port":…,"mqtt_port":…}`), written
/// once both listeners are bound and everything is started.
pub const PORTS_FILE: &str = "ports.json";

/// File in the data dir holding the first admin API token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

impl Application {
    /// Builds everything and binds the listeners; nothing is served until [`Self::run_until`].
    ///
    /// # Errors
    /// Any start-up failure, with context.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        crate::limits::raise_open_files(crate::limits::open_files_needed(
            settings.max_connections,
            settings.http_max_connections,
        ))
        .context("cannot read the open-file limit")?;
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
        let store = Store::connect(
            settings.database_url.as_ref().map(|s| s.0.as_str()),
            &settings.data_dir,
        )
        .await
        .context("cannot open the store")?;
        store.migrate().await.context("migrations failed")?;
        store
            .prepare_partitions(&settings.retention(), crate::store::now_ms())
            .await
            .context("cannot make the day partitions")?;
        // After a restart nobody is connected yet: every agent is offline until its hello.
        // Not so while other replicas serve this store: their agents stay connected, and
        // marking them offline would move their checks away until their next heartbeat.
        // The leader's silent-agent sweep marks offline whoever stopped beating then.
        match store.replicas_listening().await? {
            0 => store.mark_all_offline().await?,
            replicas => tracing::info!(
                replicas,
                "Other replicas serve this store: agents keep their stored state"
            ),
        }
        bootstrap_admin_token(&store, &settings.data_dir).await?;

        let pki = Arc::new(
            Pki::load_or_create(
                &settings.data_dir,
                std::slice::from_ref(&settings.public_host),
            )
            .context("cannot load or create the CA")?,
        );
        // The public listeners first: the broker then picks its loopback port among ports
        // nobody holds, never one of ours.
        let mqtt_listener = TcpListener::bind(settings.mqtt_addr)
            .await
            .with_context(|| format!("cannot bind MQTT listener {}", settings.mqtt_addr))?;
        let http_listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("cannot bind HTTP listener {}", settings.http_addr))?;
        let mqtt_port = mqtt_listener.local_addr()?.port();
        let http_port = http_listener.local_addr()?.port();

        let (broker, subscription) = Broker::start(
            settings.max_connections,
            crate::frontdoor::MAX_PACKET_BYTES,
            &topic::all_agents_filters(),
        )
        .await?;
        crate::frontdoor::probe_broker(broker.addr, &broker.credential)
            .await
            .map_err(|reason| anyhow::anyhow!("embedded broker is not serving: {reason}"))?;

        let registry = Arc::new(Registry::default());
        registry.set_revoked(store.revoked_agent_ids().await?);
        let counters = Arc::new(Counters::default());
        if settings.heap_trim_interval_ms > 0 {
            crate::memory::spawn_trimmer(
                Duration::from_millis(settings.heap_trim_interval_ms),
                counters.clone(),
            )
            .context("cannot start the heap trimmer")?;
        }
        let (event_writes, event_queue) = crate::integrations::EventWrites::new();
        let (judge_queue, judge_batches) =
            tokio::sync::mpsc::channel(crate::verdict::JUDGE_QUEUE_BATCHES);
        let lease = crate::lease::Lease::start(&store, counters.clone());
        // With an external broker cluster: the queue of what agents there receive.
        let mut cluster_queue = settings
            .broker_mqtt_addrs
            .as_ref()
            .map(|_| tokio::sync::mpsc::channel(crate::clusterlink::PUBLISH_QUEUE));
        let state = AppState {
            store: store.clone(),
            pki: pki.clone(),
            hub: Hub::default(),
            latest: Arc::default(),
            keys: Arc::default(),
            counters: counters.clone(),
            publisher: match &cluster_queue {
                Some((sender, _)) => broker
                    .publisher
                    .clone()
                    .with_cluster(sender.clone(), counters.clone()),
                None => broker.publisher.clone(),
            },
            registry: registry.clone(),
            mqtt_public_addr: settings
                .broker_mqtt_addrs
                .clone()
                .unwrap_or_else(|| format!("{}:{mqtt_port}", settings.public_host)),
            settings: Arc::new(settings.clone()),
            assign_lock: Arc::default(),
            config_budget: Arc::default(),
            reassign: Arc::default(),
            pending: Arc::default(),
            csr_throttle: Arc::default(),
            plan: Arc::new(tokio::sync::watch::Sender::new(Arc::default())),
            judge: Arc::default(),
            rules: Arc::default(),
            judge_queue,
            rejudge: Arc::default(),
            notify_outbox: Arc::default(),
            http_client: reqwest::Client::builder()
                .user_agent(concat!("vantage/", env!("CARGO_PKG_VERSION")))
                .build()
                .context("cannot build the notification HTTP client")?,
            hosts: Arc::default(),
            sources: Arc::default(),
            event_writes: Arc::new(event_writes),
            external_seen: Arc::default(),
            source_counters: Arc::default(),
            lease,
        };
        let mut tasks = Vec::new();
        // With an external broker cluster agents use (its MQTT addresses given), ingest also
        // takes what agents publish there, and what agents receive is published there too.
        // (The callout alone runs with the cluster's URLs only.)
        let subscription = match (&settings.broker_nats_urls, cluster_queue.take()) {
            (Some(urls), Some((_, queue))) => {
                let (sender, receiver) = tokio::sync::mpsc::channel(4096);
                tasks.push(tokio::spawn(crate::clusterlink::consume(
                    state.clone(),
                    urls.clone(),
                    usize::from(settings.broker_stream_replicas),
                    sender.clone(),
                )));
                if let Some(addrs) = settings.broker_mqtt_addrs.clone() {
                    tasks.push(tokio::spawn(crate::clusterlink::publish(
                        state.clone(),
                        addrs,
                        queue,
                    )));
                }
                subscription.merge(sender, receiver)
            }
            _ => subscription,
        };
        republish_retained(&state).await?;

        tasks.push(tokio::spawn(crate::integrations::EventWrites::run(
            state.store.clone(),
            event_queue,
        )));
        tasks.push(tokio::spawn(crate::livesync::run(state.clone())));
        tasks.push(tokio::spawn(crate::ingest::run(
            state.clone(),
            subscription,
        )));
        let door = Arc::new(FrontDoor::new(
            tokio_rustls::TlsAcceptor::from(pki.mqtt_server_config()?),
            broker.streams.clone(),
            broker.credential.clone(),
            registry,
            counters,
            store,
            FrontDoorSettings {
                handshake_timeout: settings.handshake_timeout(),
                connect_timeout: Duration::from_secs(10),
                max_connections: settings.max_connections,
                max_pending_per_address: settings.max_pending_handshakes_per_address,
            },
        ));
        tasks.push(tokio::spawn(door.serve(mqtt_listener)));
        tasks.push(tokio::spawn(crate::api::server::serve(
            http_listener,
            pki.http_server_config()?,
            crate::api::router(state.clone()),
            settings.http_limits(),
            state.counters.clone(),
        )));
        tasks.push(tokio::spawn(refresh_revoked(state.clone())));
        if let Some(urls) = settings.broker_nats_urls.clone() {
            tasks.push(tokio::spawn(crate::callout::run(state.clone(), urls)));
        }
        tasks.push(tokio::spawn(crate::assign::worker(state.clone())));
        // One assignment run at start, so checks of regions with no agent back yet run on the
        // fallback executor after a restart without waiting for an agent or a check change.
        state.reassign.notify_one();
        tasks.push(tokio::spawn(crate::verdict::judge_worker(
            state.clone(),
            judge_batches,
        )));
        tasks.push(tokio::spawn(crate::fallback::worker(state.clone())));
        // Maintenance windows and re-judging on every replica; settling on the leader.
        tasks.push(tokio::spawn(crate::verdict::worker(state.clone())));
        // The duties of exactly one replica: the one holding the scheduling lease.
        tasks.push(lead(&state, "silent agent sweep", |s| {
            Box::pin(sweep_silent_agents(s))
        }));
        tasks.push(lead(&state, "agent incidents", |s| {
            Box::pin(crate::incidents::agent_worker(s))
        }));
        tasks.push(lead(&state, "notifications", |s| {
            Box::pin(crate::notify::worker(s))
        }));
        tasks.push(lead(&state, "retention", |s| {
            Box::pin(crate::retention::worker(s))
        }));
        tasks.push(lead(&state, "integration pollers", |s| {
            Box::pin(crate::integrations::poller::supervise(s))
        }));
        // Where to reach this process, for scripts and tests that start it on port 0.
        let ports = serde_json::json!({ "http_port": http_port, "mqtt_port": mqtt_port });
        std::fs::write(settings.data_dir.join(PORTS_FILE), ports.to_string())
            .with_context(|| format!("cannot write {PORTS_FILE}"))?;
        tracing::info!(
            http_port,
            mqtt_port,
            store = state.store.backend(),
            data_dir = %settings.data_dir.display(),
            "Control plane ready"
        );
        Ok(Application {
            http_port,
            mqtt_port,
            state,
            tasks,
        })
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops every task and closes the store.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        tracing::info!("Control plane stopping");
        for task in &self.tasks {
            task.abort();
        }
        self.state.store.close().await;
    }
}

/// A worker of the leading replica ([`crate::lease::lead`]).
type Duty = fn(AppState) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `duty` while this replica holds the scheduling lease.
fn lead(state: &AppState, name: &'static str, duty: Duty) -> tokio::task::JoinHandle<()> {
    let shared = state.clone();
    tokio::spawn(crate::lease::lead(state.lease.clone(), name, move || {
        duty(shared.clone())
    }))
}

/// Creates the first admin token when no API token exists and stores it in the data dir.
async fn bootstrap_admin_token(store: &Store, data_dir: &std::path::Path) -> anyhow::Result<()> {
    if store.count_api_tokens().await? > 0 {
        return Ok(());
    }
    let (_, secret) = store
        .create_api_token(Role::Admin, "bootstrap admin")
        .await?;
    let path: PathBuf = data_dir.join(ADMIN_TOKEN_FILE);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{secret}")?;
    tracing::info!(path = %path.display(), "Created the first admin API token");
    Ok(())
}

/// Publishes every retained desired config and status the store holds.
async fn republish_retained(state: &AppState) -> anyhow::Result<()> {
    for stored in state.store.desired_configs().await? {
        let (agent, config) = (stored.agent_id, stored.config_json);
        state
            .publisher
            .publish(
                &topic::agent(&agent, AgentTopic::Config),
                config.into_bytes(),
                true,
            )
            .await?;
    }
    for agent in state.store.list_agents(None).await? {
        if agent.revoked_at_ms.is_some() {
            continue;
        }
        let view = NodeStatusView {
            v: vantage_mqtt::PROTOCOL_VERSION,
            agent_id: agent.id.clone(),
            region: agent.region.clone(),
            state: NodeState::Offline,
            at_ms: crate::store::now_ms(),
        };
        state
            .publisher
            .publish(&topic::status_node(&agent.id), encode(&view), true)
            .await?;
    }
    for verdict in state.store.list_verdicts().await? {
        state
            .publisher
            .publish(
                &topic::status_check(&verdict.check_id),
                encode(&verdict),
                true,
            )
            .await?;
    }
    for status in state.store.list_check_status().await? {
        let view = CheckStatusView {
            v: vantage_mqtt::PROTOCOL_VERSION,
            check_id: status.check_id.clone(),
            region: status.region.clone(),
            agent_id: status.agent_id,
            ok: status.ok,
            reason: status.reason,
            total_ms: status.total_ms,
            measured_at_ms: status.measured_at_ms,
        };
        state
            .publisher
            .publish(
                &topic::status_check_region(&status.check_id, &status.region),
                encode(&view),
                true,
            )
            .await?;
    }
    Ok(())
}

/// Picks up revocations made by other processes (the CLI, other replicas).
async fn refresh_revoked(state: AppState) {
    let mut interval = tokio::time::interval(Duration::from_secs(2));
    loop {
        interval.tick().await;
        match state.store.revoked_agent_ids().await {
            Ok(ids) => state.registry.set_revoked(ids),
            Err(error) => tracing::warn!(%error, "Cannot refresh the revoked set"),
        }
        match state.store.revoked_api_token_ids().await {
            Ok(ids) => state.registry.set_revoked_tokens(ids),
            Err(error) => tracing::warn!(%error, "Cannot refresh the revoked API tokens"),
        }
    }
}

/// Marks agents offline whose heartbeats stopped (a half-open connection that the last will
/// did not report): silent for three heartbeat intervals.
async fn sweep_silent_agents(state: AppState) {
    let window_ms = i64::from(state.settings.heartbeat_interval_s.max(1)) * 3_000;
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        interval.tick().await;
        let agents = match state.store.list_agents(None).await {
            Ok(agents) => agents,
            Err(error) => {
                tracing::warn!(%error, "Cannot list agents for the heartbeat sweep");
                continue;
            }
        };
        let cutoff = crate::store::now_ms() - window_ms;
        for agent in agents {
            let silent = agent.last_seen_ms.is_none_or(|seen| seen < cutoff);
            if agent.revoked_at_ms.is_some() || agent.state != NodeState::Online || !silent {
                continue;
            }
            // Conditional on the row as it is now, not on this snapshot.
            match state.store.mark_offline_if_silent(&agent.id, cutoff).await {
                Ok(true) => {
                    tracing::warn!(agent = %agent.id, "No heartbeat for three intervals; marked offline");
                    crate::ingest::publish_status(
                        &state,
                        &agent.id,
                        &agent.region,
                        NodeState::Offline,
                    )
                    .await;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "Heartbeat sweep failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    /// Agents cannot publish outside their own topics (the front door refuses it), so only a
    /// publish on the control plane's own link reaches ingest on a topic it cannot parse:
    /// ingest drops it, counts it under `reason="topic"`, and goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ingest_counts_and_skips_messages_on_unparseable_topics() {
        let dir = tempfile::tempdir().unwrap();
        let app = Application::build(Settings::ephemeral(dir.path().to_owned()))
            .await
            .unwrap();
        let state = app.state.clone();
        for topic in [
            "vantage/v1/agents/Not An Id/results",
            "vantage/v1/agents/UPPER/hello",
            "vantage/v1/agents/.hidden/metrics",
        ] {
            state
                .publisher
                .publish(topic, b"{}".to_vec(), false)
                .await
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while state.counters.ingest_bad_topic.load(Ordering::Relaxed) < 3
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(state.counters.ingest_bad_topic.load(Ordering::Relaxed), 3);
        assert_eq!(state.counters.ingest_messages.load(Ordering::Relaxed), 0);
        let text = state.counters.render();
        assert!(
            text.contains("vantage_ingest_rejected_total{reason=\"topic\"} 3"),
            "{text}"
        );
    }
}
