//! Notifications: channel definitions and the sender that drains the outbox.
//!
//! Channels: `webhook` (JSON body, signed), `slack` (a Slack-compatible incoming webhook),
//! `ntfy` and `email` (SMTP with STARTTLS through lettre). The MQTT channel needs no
//! definition: every incident change is published on `incidents` for viewers. Each opening and resolution of an incident puts one outbox row per enabled channel
//! in the same transaction as the change (see [`crate::incidents`]). [`worker`] delivers them:
//! only the oldest pending row of each (incident, channel) is taken, so a resolution never
//! overtakes its alert; a failed attempt is retried with capped exponential backoff (1 s,
//! 2 s, 4 s, … up to [`MAX_BACKOFF_S`]), across restarts since the state is in the store;
//! after `notify_max_attempts` the row is a dead letter, kept and listed by the API. A channel
//! may cap its deliveries per hour: rows over the cap wait (no attempt spent), none is dropped. Every
//! request carries `Idempotency-Key` (the row's dedup key), so a receiver can drop the repeat
//! a crash between its answer and our record of it would cause.
//!
//! Webhook signature: `X-Vantage-Timestamp: <unix seconds>` and
//! `X-Vantage-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. Receivers
//! recompute it, compare in constant time and refuse timestamps more than
//! [`REPLAY_WINDOW_S`] from their clock.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vantage_mqtt::{IncidentChange, IncidentView, topic};

use crate::AppState;
use crate::store::{ChannelRow, OutboxRow, OutboxState, StoreError, now_ms, random_id};

/// Longest wait between two attempts.
pub const MAX_BACKOFF_S: u64 = 300;
/// How far a webhook's timestamp may be from the receiver's clock.
pub const REPLAY_WINDOW_S: i64 = 300;
/// How long one delivery may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight at once.
const WINDOW: usize = 32;

/// Where and how a channel delivers; stored as JSON with its secrets.
#[derive(Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ChannelConfig {
    /// POSTs the incident as JSON, signed with `secret`.
    Webhook { url: String, secret: String },
    /// POSTs `{"text": …}` to a Slack-compatible incoming webhook (its URL is its secret).
    Slack { url: String },
    /// POSTs the text to an ntfy topic URL, with an optional access token.
    Ntfy {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Sends a mail over SMTP: STARTTLS required by default (`security`: `starttls`, `tls`
    /// for implicit TLS, or `none` for a trusted local relay).
    Email {
        host: String,
        #[serde(default = "default_smtp_port")]
        port: u16,
        #[serde(default)]
        security: SmtpSecurity,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        from: String,
        to: Vec<String>,
        /// A private CA the server's certificate is checked against instead of the public
        /// roots.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_pem: Option<String>,
    },
}

/// How an email channel secures its SMTP connection.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// STARTTLS, required: a server that does not offer it is an error.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain text, for a relay on a trusted network only.
    None,
}

fn default_smtp_port() -> u16 {
    587
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets (the webhook secret, the Slack URL, the ntfy token, the SMTP password)
        // never reach a log.
        f.write_str(self.kind())
    }
}

impl ChannelConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelConfig::Webhook { .. } => "webhook",
            ChannelConfig::Slack { .. } => "slack",
            ChannelConfig::Ntfy { .. } => "ntfy",
            ChannelConfig::Email { .. } => "email",
        }
    }

    fn url(&self) -> Option<&str> {
        match self {
            ChannelConfig::Webhook { url, .. }
            | ChannelConfig::Slack { url }
            | ChannelConfig::Ntfy { url, .. } => Some(url),
            ChannelConfig::Email { .. } => None,
        }
    }

    /// Where it delivers, without secrets: scheme, host and port (a Slack URL's path is its
    /// secret; a webhook's path and query may hold one); for email the server and the
    /// recipients.
    pub fn target(&self) -> String {
        let Some(url) = self.url() else {
            return match self {
                ChannelConfig::Email { host, port, to, .. } => {
                    format!("smtp://{host}:{port} → {}", to.join(", "))
                }
                _ => String::new(),
            };
        };
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        format!("{scheme}://{host}/…")
    }

    /// Checks the config.
    ///
    /// # Errors
    /// A message naming the invalid field.
    pub fn validate(&self) -> Result<(), String> {
        if let ChannelConfig::Email {
            host,
            from,
            to,
            ca_pem,
            username,
            password,
            ..
        } = self
        {
            if host.is_empty()
                || host.len() > 253
                || host.chars().any(|c| c.is_control() || c == ' ')
            {
                return Err("host must be a host name or address".into());
            }
            if from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(format!("from {from:?} is not a mail address"));
            }
            if to.is_empty() || to.len() > 50 {
                return Err("to must name 1 to 50 addresses".into());
            }
            if let Some(bad) = to
                .iter()
                .find(|a| a.parse::<lettre::message::Mailbox>().is_err())
            {
                return Err(format!("to: {bad:?} is not a mail address"));
            }
            if username.is_some() != password.is_some() {
                return Err("username and password go together".into());
            }
            if let Some(pem) = ca_pem
                && lettre::transport::smtp::client::Certificate::from_pem(pem.as_bytes()).is_err()
            {
                return Err("ca_pem is not a PEM certificate".into());
            }
            return Ok(());
        }
        let url = self.url().unwrap_or_default();
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
            return Err("url must be an http(s) URL of at most 2048 bytes".into());
        }
        if url.chars().any(char::is_control) {
            return Err("url must not hold control characters".into());
        }
        match self {
            ChannelConfig::Webhook { secret, .. } if secret.len() < 16 || secret.len() > 256 => {
                Err("secret must be 16 to 256 bytes".into())
            }
            ChannelConfig::Ntfy {
                token: Some(token), ..
            } if token.len() > 256 || token.chars().any(char::is_control) => {
                Err("token must be at most 256 printable bytes".into())
            }
            _ => Ok(()),
        }
    }
}

/// A channel as the API takes it.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelDefinition {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub config: ChannelConfig,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Reminders every this many seconds while an incident stays open and unacknowledged
    /// (0: none; at least 5 otherwise).
    #[serde(default)]
    pub reminder_s: u32,
    /// Deliveries per hour at most; more wait their turn, none is dropped (0: no limit).
    #[serde(default)]
    pub max_per_hour: u32,
}

fn default_enabled() -> bool {
    true
}

/// A channel as the API shows it: never its secrets.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ChannelSummary {
    pub id: String,
    pub name: String,
    pub kind: String,
    /// Scheme and host it delivers to.
    pub target: String,
    pub enabled: bool,
    pub reminder_s: i64,
    pub max_per_hour: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Why a channel could not be read, written or tested.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}")]
    Invalid(String),
    #[error("channel {0:?} not found")]
    NotFound(String),
    /// The stored config does not decode.
    #[error("stored channel {0} is corrupt")]
    Corrupt(String),
    /// A test send failed; the message says how.
    #[error("test delivery failed: {0}")]
    Delivery(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn summary(row: &ChannelRow) -> ChannelSummary {
    let target = serde_json::from_str::<ChannelConfig>(&row.config)
        .map(|c| c.target())
        .unwrap_or_else(|_| "(corrupt)".into());
    ChannelSummary {
        id: row.id.clone(),
        name: row.name.clone(),
        kind: row.kind.clone(),
        target,
        enabled: row.enabled,
        reminder_s: row.reminder_s,
        max_per_hour: row.max_per_hour,
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
    }
}

/// Creates or replaces a channel.
///
/// # Errors
/// Invalid fields, or the store.
pub async fn put_channel(
    state: &AppState,
    id: Option<&str>,
    body: ChannelDefinition,
) -> Result<ChannelSummary, ChannelError> {
    let id = id
        .map(str::to_owned)
        .or(body.id.clone())
        .unwrap_or_else(|| random_id("ch-", 6));
    if !topic::valid_id(&id) {
        return Err(ChannelError::Invalid(
            "id must be 1-64 of a-z 0-9 - _ .".into(),
        ));
    }
    if body.name.trim().is_empty()
        || body.name.len() > 255
        || body.name.chars().any(char::is_control)
    {
        return Err(ChannelError::Invalid(
            "name must be 1-255 printable characters".into(),
        ));
    }
    body.config.validate().map_err(ChannelError::Invalid)?;
    if body.reminder_s != 0 && !(5..=7 * 86_400).contains(&body.reminder_s) {
        return Err(ChannelError::Invalid(
            "reminder_s must be 0 (none) or 5..=604800".into(),
        ));
    }
    if body.max_per_hour > 3600 {
        return Err(ChannelError::Invalid(
            "max_per_hour must be 0 (no limit) or up to 3600".into(),
        ));
    }
    let now = now_ms();
    let created_at_ms = state
        .store
        .get_channel(&id)
        .await?
        .map_or(now, |c| c.created_at_ms);
    let row = ChannelRow {
        id,
        name: body.name,
        kind: body.config.kind().to_owned(),
        config: serde_json::to_string(&body.config).unwrap_or_default(),
        enabled: body.enabled,
        reminder_s: i64::from(body.reminder_s),
        max_per_hour: i64::from(body.max_per_hour),
        created_at_ms,
        updated_at_ms: now,
    };
    state.store.upsert_channel(&row).await?;
    Ok(summary(&row))
}

/// Every channel, without secrets.
///
/// # Errors
/// The store.
pub async fn list_channels(state: &AppState) -> Result<Vec<ChannelSummary>, ChannelError> {
    Ok(state
        .store
        .list_channels()
        .await?
        .iter()
        .map(summary)
        .collect())
}

/// Deletes a channel.
///
/// # Errors
/// Not found, or the store.
pub async fn delete_channel(state: &AppState, id: &str) -> Result<(), ChannelError> {
    if state.store.delete_channel(id).await? {
        Ok(())
    } else {
        Err(ChannelError::NotFound(id.to_owned()))
    }
}

/// Sends a test notification through a channel now and says how it went.
///
/// # Errors
/// Not found, corrupt, or the delivery's failure.
pub async fn test_channel(state: &AppState, id: &str) -> Result<(), ChannelError> {
    let row = state
        .store
        .get_channel(id)
        .await?
        .ok_or_else(|| ChannelError::NotFound(id.to_owned()))?;
    let config: ChannelConfig =
        serde_json::from_str(&row.config).map_err(|_| ChannelError::Corrupt(id.to_owned()))?;
    let now = now_ms();
    let view = IncidentView {
        v: vantage_mqtt::PROTOCOL_VERSION,
        id: "test".into(),
        subject: vantage_mqtt::IncidentSubject::Check,
        subject_id: "test".into(),
        title: format!("test notification from Vantage to channel {}", row.name),
        change: IncidentChange::Opened,
        text: "This is a test: nothing is down.".into(),
        open: false,
        dependent: false,
        opened_at_ms: now,
        resolved_at_ms: None,
        acknowledged_at_ms: None,
        at_ms: now,
    };
    let body = serde_json::to_string(&view).unwrap_or_default();
    let key = random_id("test-", 8);
    deliver(&state.http_client, &config, &key, &view, &body)
        .await
        .map_err(ChannelError::Delivery)
}

/// Lower-case hex HMAC-SHA256 of `"{timestamp}.{body}"`: the webhook signature.
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body.as_bytes());
    hex::encode(context.sign().as_ref())
}

/// The text of a notification, for chat-like channels.
pub fn text_of(view: &IncidentView) -> String {
    let verb = match view.change {
        IncidentChange::Opened => "Opened",
        IncidentChange::Resolved => "Resolved",
        IncidentChange::Updated => "Updated",
        IncidentChange::Acknowledged => "Acknowledged",
        IncidentChange::Note => "Note",
        IncidentChange::Reminder => "Still open",
    };
    format!("{verb}: {} - {}", view.title, view.text)
}

/// Sends one mail; the dedup key is its Message-ID, so a mail server or client can drop a
/// repeat.
async fn send_mail(config: &ChannelConfig, key: &str, view: &IncidentView) -> Result<(), String> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let ChannelConfig::Email {
        host,
        port,
        security,
        username,
        password,
        from,
        to,
        ca_pem,
    } = config
    else {
        return Err("not an email channel".into());
    };
    let mut builder = Message::builder()
        .from(from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(text_of(view).chars().take(200).collect::<String>())
        .message_id(Some(format!("<{}@vantage>", key.replace('/', "."))));
    for address in to {
        builder = builder.to(address.parse().map_err(|e| format!("to: {e}"))?);
    }
    let text = format!(
        "{}\n\nIncident: {}\nAbout: {} {}\nChange: {}\nOpened: {} (ms since the epoch)\n",
        text_of(view),
        view.id,
        view.subject.as_str(),
        view.subject_id,
        view.change.as_str(),
        view.opened_at_ms
    );
    let message = builder.body(text).map_err(|e| format!("message: {e}"))?;
    let tls = || -> Result<TlsParameters, String> {
        let mut parameters = TlsParameters::builder(host.clone());
        if let Some(pem) = ca_pem {
            let certificate =
                Certificate::from_pem(pem.as_bytes()).map_err(|e| format!("ca_pem: {e}"))?;
            parameters = parameters
                .certificate_store(lettre::transport::smtp::client::CertificateStore::None)
                .add_root_certificate(certificate);
        }
        parameters.build_rustls().map_err(|e| format!("TLS: {e}"))
    };
    let tls = match security {
        SmtpSecurity::Starttls => Tls::Required(tls()?),
        SmtpSecurity::Tls => Tls::Wrapper(tls()?),
        SmtpSecurity::None => Tls::None,
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
        .port(*port)
        .tls(tls)
        .timeout(Some(ATTEMPT_TIMEOUT));
    if let (Some(username), Some(password)) = (username, password) {
        transport = transport.credentials(Credentials::new(username.clone(), password.clone()));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP: {e}"))
}

/// One delivery attempt.
async fn deliver(
    client: &reqwest::Client,
    config: &ChannelConfig,
    key: &str,
    view: &IncidentView,
    body: &str,
) -> Result<(), String> {
    let request = match config {
        ChannelConfig::Email { .. } => return send_mail(config, key, view).await,
        ChannelConfig::Webhook { url, secret } => {
            let timestamp = now_ms() / 1000;
            client
                .post(url)
                .header("content-type", "application/json")
                .header("x-vantage-timestamp", timestamp.to_string())
                .header(
                    "x-vantage-signature",
                    format!("v1={}", signature(secret, timestamp, body)),
                )
                .body(body.to_owned())
        }
        ChannelConfig::Slack { url } => client
            .post(url)
            .json(&serde_json::json!({ "text": text_of(view) })),
        ChannelConfig::Ntfy { url, token } => {
            let mut request = client
                .post(url)
                .header("title", view.title.clone())
                .header(
                    "priority",
                    if view.change == IncidentChange::Opened {
                        "high"
                    } else {
                        "default"
                    },
                )
                .body(text_of(view));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request
        }
    };
    let response = request
        .header("idempotency-key", key)
        .timeout(ATTEMPT_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            // reqwest's message names the URL, which may hold a secret (a Slack path).
            let e = e.without_url();
            format!("{e}")
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("receiver answered {status}"))
    }
}

/// The wait before attempt `attempts + 1` after `attempts` failures: 1 s doubling, capped.
pub fn backoff(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    Duration::from_secs((1u64 << exponent).min(MAX_BACKOFF_S))
}

/// Delivers one outbox row and records the outcome.
async fn attempt(state: &AppState, row: OutboxRow) -> Result<(), StoreError> {
    let now = now_ms();
    let channel = state.store.get_channel(&row.channel_id).await?;
    if let Some(channel) = channel.as_ref().filter(|c| c.enabled && c.max_per_hour > 0) {
        let delivered = state
            .store
            .delivered_since(&channel.id, now - 3_600_000)
            .await?;
        if delivered >= channel.max_per_hour {
            // Over the channel's rate: wait a minute, without spending an attempt.
            state
                .counters
                .notify_rate_limited
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %row.dedup_key, channel = %channel.id, delivered, "Channel over its hourly rate; notification postponed");
            return state.store.postpone(row.id, now + 60_000).await;
        }
    }
    let config = channel
        .as_ref()
        .filter(|c| c.enabled)
        .map(|c| serde_json::from_str::<ChannelConfig>(&c.config));
    let outcome = match config {
        None => Err("channel deleted or disabled".to_owned()),
        Some(Err(_)) => Err("channel config is corrupt".to_owned()),
        Some(Ok(config)) => match serde_json::from_str::<IncidentView>(&row.body) {
            Ok(view) => {
                deliver(
                    &state.http_client,
                    &config,
                    &row.dedup_key,
                    &view,
                    &row.body,
                )
                .await
            }
            Err(_) => Err("notification body is corrupt".to_owned()),
        },
    };
    let attempts = u32::try_from(row.attempts)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    match outcome {
        Ok(()) => {
            state
                .counters
                .notify_delivered
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(key = %row.dedup_key, channel = %row.channel_id, attempts, "Notification delivered");
            state
                .store
                .record_attempt(row.id, OutboxState::Delivered, now, "", now_ms())
                .await
        }
        Err(error) if attempts >= state.settings.notify_max_attempts || channel.is_none() => {
            state.counters.notify_dead.fetch_add(1, Ordering::Relaxed);
            tracing::error!(key = %row.dedup_key, channel = %row.channel_id, attempts, %error, "Notification given up: kept as a dead letter");
            state
                .store
                .record_attempt(row.id, OutboxState::Dead, now, &error, now)
                .await
        }
        Err(error) => {
            state
                .counters
                .notify_retried
                .fetch_add(1, Ordering::Relaxed);
            let wait = backoff(attempts);
            tracing::warn!(key = %row.dedup_key, channel = %row.channel_id, attempts, retry_in_s = wait.as_secs(), %error, "Notification failed; retrying");
            state
                .store
                .record_attempt(
                    row.id,
                    OutboxState::Pending,
                    now + wait.as_millis() as i64,
                    &error,
                    now,
                )
                .await
        }
    }
}

/// Drains the outbox, keeping up to [`WINDOW`] deliveries in flight: as each ends the next
/// fetched row starts, so a slow receiver holds only its own slot. Due rows are fetched
/// ahead into a local queue, with a fresh query when fewer than half a window is queued. A
/// row queued or in flight is not taken again (its id is held until its outcome is stored),
/// and since only the oldest pending row of each (incident, channel) is due, the next row of
/// a pair is fetched only after the previous one's outcome is stored. With nothing due it
/// sleeps until the next row is due, at most 5 s, or until woken by a new row.
///
/// Each delivery is a task of its own: a delivery holding a store connection must go on
/// while this loop waits for one to fetch more rows.
pub async fn worker(state: AppState) {
    let mut in_flight: tokio::task::JoinSet<Result<(), StoreError>> = tokio::task::JoinSet::new();
    // The row each delivery task carries.
    let mut rows_of: std::collections::HashMap<tokio::task::Id, i64> =
        std::collections::HashMap::new();
    // Ids queued or in flight.
    let mut known: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut queue: std::collections::VecDeque<OutboxRow> = std::collections::VecDeque::new();
    // Whether the store may hold due rows we have not fetched.
    let mut more = true;
    loop {
        if more && queue.len() < WINDOW / 2 {
            let limit = (2 * WINDOW + known.len()) as i64;
            match state.store.due_outbox(now_ms(), limit).await {
                Ok(due) => {
                    let n_due = due.len();
                    let before = queue.len();
                    for row in due {
                        if known.insert(row.id) {
                            queue.push_back(row);
                        }
                    }
                    // A full page may have more behind it; otherwise wait for a delivery to
                    // end (the next row of its pair may be due) or for a new row.
                    more = n_due as i64 == limit && queue.len() > before;
                }
                Err(error) => {
                    tracing::warn!(%error, "Cannot read the outbox; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        while in_flight.len() < WINDOW
            && let Some(row) = queue.pop_front()
        {
            let (state, id) = (state.clone(), row.id);
            let task = in_flight.spawn(async move { attempt(&state, row).await });
            rows_of.insert(task.id(), id);
        }
        if in_flight.is_empty() {
            if more {
                continue;
            }
            let wait = match state.store.next_outbox_due().await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(0, 5000) as u64),
                _ => Duration::from_secs(5),
            };
            let _ = tokio::time::timeout(wait, state.notify_outbox.notified()).await;
            more = true;
            continue;
        }
        tokio::select! {
            Some(joined) = in_flight.join_next_with_id() => {
                let (task, outcome) = match joined {
                    Ok((task, outcome)) => (task, outcome),
                    // A delivery that panicked: its row stays pending and is fetched again.
                    Err(error) => {
                        tracing::error!(%error, "A delivery task failed");
                        (error.id(), Ok(()))
                    }
                };
                if let Some(id) = rows_of.remove(&task) {
                    known.remove(&id);
                }
                if let Err(error) = outcome {
                    tracing::warn!(%error, "Cannot record a delivery attempt; it is attempted again");
                }
                more = true;
            }
            () = state.notify_outbox.notified() => more = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_is_capped() {
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), MAX_BACKOFF_S);
    }

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Computed independently: printf '%s' '1700000000.{"a":1}' |
        //   openssl dgst -sha256 -hmac 0123456789abcdef
        let sig = signature("0123456789abcdef", 1_700_000_000, "{\"a\":1}");
        assert_eq!(
            sig,
            "9eb18f493f8ec135d9eb2dad817c369bb4e9cbfa818657897a7437c1cd8c3a23"
        );
    }

    #[test]
    fn configs_are_validated_and_never_show_secrets() {
        let webhook = ChannelConfig::Webhook {
            url: "https://user:pw@hooks.example.com/path/s3cret?token=x".into(),
            secret: "0123456789abcdef".into(),
        };
        webhook.validate().unwrap();
        assert_eq!(webhook.target(), "https://hooks.example.com/…");
        assert_eq!(format!("{webhook:?}"), "webhook");
        let short = ChannelConfig::Webhook {
            url: "https://x/".into(),
            secret: "short".into(),
        };
        assert!(short.validate().unwrap_err().contains("secret"));
        let ftp = ChannelConfig::Slack {
            url: "ftp://x/".into(),
        };
        assert!(ftp.validate().unwrap_err().contains("url"));
        let slack: ChannelConfig = serde_json::from_value(serde_json::json!({
            "type": "slack", "url": "https://hooks.slack.com/services/T/B/XXXX"
        }))
        .unwrap();
        assert_eq!(slack.target(), "https://hooks.slack.com/…");
        let unknown = serde_json::from_value::<ChannelConfig>(serde_json::json!({
            "type": "webhook", "url": "https://x/", "secret": "0123456789abcdef", "extra": 1
        }));
        assert!(unknown.is_err());
    }

    /// The sender keeps its window full against a slow receiver and delivers every row once,
    /// each (incident, channel) in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_receiver_gets_every_row_once_in_order_per_incident() {
        use std::collections::HashMap;
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        #[derive(Default)]
        struct Seen {
            now: AtomicUsize,
            peak: AtomicUsize,
            keys: std::sync::Mutex<Vec<String>>,
        }
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new().route(
            "/",
            axum::routing::post({
                let seen = seen.clone();
                move |headers: axum::http::HeaderMap| {
                    let seen = seen.clone();
                    async move {
                        let now = seen.now.fetch_add(1, Ordering::SeqCst) + 1;
                        seen.peak.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        seen.keys.lock().unwrap().push(key);
                        seen.now.fetch_sub(1, Ordering::SeqCst);
                        "ok"
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let dir = tempfile::tempdir().unwrap();
        let cp = crate::app::Application::build(crate::settings::Settings::ephemeral(
            dir.path().to_owned(),
        ))
        .await
        .unwrap();
        let state = cp.state().clone();
        let definition: ChannelDefinition = serde_json::from_value(serde_json::json!({
            "name": "slow", "config": {"type": "webhook", "url": format!("http://127.0.0.1:{port}/"),
            "secret": "0123456789abcdef"}
        }))
        .unwrap();
        put_channel(&state, Some("slow"), definition).await.unwrap();
        // 100 incidents with an alert and a resolve each.
        let (n_incidents, at) = (100, now_ms());
        for change in [IncidentChange::Opened, IncidentChange::Resolved] {
            for i in 0..n_incidents {
                let incident = format!("in-{i:03}");
                let view: IncidentView = serde_json::from_value(serde_json::json!({
                    "v": 1, "id": incident, "subject": "check", "subject_id": "web",
                    "title": "web is down", "change": change.as_str(), "text": "t",
                    "open": true, "dependent": false, "opened_at_ms": at,
                    "resolved_at_ms": null, "acknowledged_at_ms": null, "at_ms": at
                }))
                .unwrap();
                let key = format!("{incident}/{}/slow", change.as_str());
                let body = serde_json::to_string(&view).unwrap();
                assert!(
                    state
                        .store
                        .queue_notification(&key, &incident, "slow", change, &body, at)
                        .await
                        .unwrap()
                );
            }
        }
        let run = tokio::spawn(cp.run_until(std::future::pending()));
        state.notify_outbox.notify_one();
        let started = std::time::Instant::now();
        while seen.keys.lock().unwrap().len() < 2 * n_incidents {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} of {} delivered",
                seen.keys.lock().unwrap().len(),
                2 * n_incidents
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let keys = seen.keys.lock().unwrap().clone();
        let mut per_key: HashMap<&str, usize> = HashMap::new();
        for key in &keys {
            *per_key.entry(key).or_default() += 1;
        }
        assert!(
            per_key.values().all(|n| *n == 1),
            "a row was delivered twice"
        );
        assert_eq!(per_key.len(), 2 * n_incidents);
        for i in 0..n_incidents {
            let at = |change: &str| {
                keys.iter()
                    .position(|k| *k == format!("in-{i:03}/{change}/slow"))
                    .unwrap()
            };
            assert!(
                at("opened") < at("resolved"),
                "in-{i:03} resolved before its alert"
            );
        }
        let peak = seen.peak.load(Ordering::SeqCst);
        assert!(peak <= WINDOW, "{peak} in flight");
        // Kept full, never over the window.
        assert!(peak >= WINDOW / 2, "only {peak} in flight at most");
        run.abort();
    }
}
