//! Test harness for the end-to-end suite: real control planes and agents as processes, real
//! stores, real TLS and MQTT, on ports reserved at run time.
//!
//! - [`Backend`] and [`TestStore`]: SQLite in a temp dir, or a uniquely named PostgreSQL
//!   database on the cluster named by `VANTAGE_TEST_PG_URL` (started by `scripts/test`).
//! - [`ControlPlane`]: `vantage serve` as a child process, with an API client that trusts
//!   its CA and holds its admin token.
//! - [`Agent`]: `vantage-agent run` as a child process with its own config and state dir.
//! - [`MqttIdentity`]: an enrolled identity for a hand-driven rumqttc client, to play a
//!   misbehaving agent.
//! - [`wait_for`]: polls a condition until a deadline.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub mod nats;
pub mod postgres;
pub mod receiver;
pub mod regions;
pub mod smtp;
pub mod zabbix;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(name: &str) -> anyhow::Result<Backend> {
        match name {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" => Ok(Backend::Postgres),
            other => bail!("unknown backend {other} (sqlite or postgres)"),
        }
    }

    /// The backend's name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The `--flag value` pairs of this process's command line, for the benchmark binaries.
///
/// # Errors
/// A flag without a value.
pub fn flags() -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        pairs.push((flag, value));
    }
    Ok(pairs)
}

/// A WebSocket client of the live feed.
pub type LiveSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A reserved free loopback port. The listener is dropped just before use.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests live in target/<profile>/deps/, benchmark binaries in target/<profile>/.
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("profile dir").to_owned()
    } else {
        dir.to_owned()
    }
}

/// Path of a workspace binary; fails with a clear message when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (scripts/test does)",
        path.display()
    );
    path
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
///
/// # Errors
/// Names `what` when the deadline passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A store for one test.
pub struct TestStore {
    pub backend: Backend,
    /// `DATABASE_URL` for the control plane (`None` = SQLite in its data dir).
    pub url: Option<String>,
}

impl TestStore {
    /// A fresh store; for PostgreSQL a new database named after the test.
    ///
    /// # Errors
    /// `VANTAGE_TEST_PG_URL` unset or the cluster unreachable.
    pub async fn create(backend: Backend) -> anyhow::Result<TestStore> {
        match backend {
            Backend::Sqlite => Ok(TestStore { backend, url: None }),
            Backend::Postgres => {
                let admin_url = std::env::var("VANTAGE_TEST_PG_URL").context(
                    "VANTAGE_TEST_PG_URL is not set: run the suite with scripts/test, which starts PostgreSQL",
                )?;
                let mut suffix = [0u8; 6];
                rand::fill(&mut suffix[..]);
                let name = format!("vantage_test_{}", hex::encode(suffix));
                let pool = sqlx::PgPool::connect(&admin_url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await?;
                pool.close().await;
                let base = admin_url
                    .rsplit_once('/')
                    .map(|(base, _)| base.to_owned())
                    .context("VANTAGE_TEST_PG_URL has no database part")?;
                Ok(TestStore {
                    backend,
                    url: Some(format!("{base}/{name}")),
                })
            }
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Copies what replicas share besides the store from one replica's data directory to
/// another's: the CA (agents trust one CA, whichever replica they reach), the broker secrets
/// when `vantage broker-config` made them, and the admin token file (the token itself is in
/// the store).
pub fn share_replica_identity(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to.join("pki"))?;
    for (name, needed) in [
        ("ca.pem", true),
        ("ca.key", true),
        ("broker-issuer.nk", false),
        ("broker-users.secret", false),
    ] {
        let source = from.join("pki").join(name);
        if needed || source.exists() {
            std::fs::copy(&source, to.join("pki").join(name))
                .with_context(|| format!("copy {}", source.display()))?;
        }
    }
    std::fs::copy(from.join("admin-token"), to.join("admin-token"))?;
    Ok(())
}

/// A `vantage serve` child process.
pub struct ControlPlane {
    pub data_dir: PathBuf,
    pub http_port: u16,
    pub mqtt_port: u16,
    pub admin_token: String,
    pub client: reqwest::Client,
    pub ca_pem: String,
    database_url: Option<String>,
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ControlPlane {
    /// Starts a control plane on `store` in a fresh data dir, on free ports.
    ///
    /// # Errors
    /// The process does not become healthy.
    pub async fn start(store: &TestStore) -> anyhow::Result<ControlPlane> {
        Self::start_with(store, &[]).await
    }

    /// Like [`Self::start`] with extra `VANTAGE_*` variables. `("RUST_LOG", "")` removes
    /// `RUST_LOG`, so the process logs at its default level.
    ///
    /// # Errors
    /// The process does not become healthy.
    pub async fn start_with(
        store: &TestStore,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ControlPlane> {
        let temp = tempfile::tempdir()?;
        let data_dir = temp.path().join("data");
        Self::launch(store, data_dir, env, Some(temp)).await
    }

    /// Like [`Self::start_with`] on an existing data dir `data_dir` (for SQLite, a store
    /// seeded there beforehand: `vantage.db`). The caller keeps the directory.
    ///
    /// # Errors
    /// The process does not become healthy.
    pub async fn start_in(
        store: &TestStore,
        data_dir: &std::path::Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ControlPlane> {
        Self::launch(store, data_dir.to_owned(), env, None).await
    }

    /// Starts a control plane on `data_dir`, keeping `temp` (its parent, if it owns one).
    async fn launch(
        store: &TestStore,
        data_dir: PathBuf,
        env: &[(&str, &str)],
        temp: Option<tempfile::TempDir>,
    ) -> anyhow::Result<ControlPlane> {
        let mut cp = ControlPlane {
            data_dir,
            // Port 0 at first start: the control plane binds, then names its ports in
            // ports.json; restarts reuse them.
            http_port: 0,
            mqtt_port: 0,
            admin_token: String::new(),
            client: reqwest::Client::new(),
            ca_pem: String::new(),
            database_url: store.url.clone(),
            extra_env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
            _temp: temp,
        };
        cp.spawn().await?;
        Ok(cp)
    }

    /// Starts the process (again) on the same data dir, store and ports.
    ///
    /// # Errors
    /// The process does not become healthy.
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data_dir)?;
        let ports_path = self.data_dir.join("ports.json");
        let _ = std::fs::remove_file(&ports_path);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("control-plane.log"))?;
        let mut command = Command::new(bin("vantage"));
        command
            .arg("serve")
            .env("VANTAGE_DATA_DIR", &self.data_dir)
            .env("VANTAGE_HTTP_ADDR", format!("127.0.0.1:{}", self.http_port))
            .env("VANTAGE_MQTT_ADDR", format!("127.0.0.1:{}", self.mqtt_port))
            .env("VANTAGE_PUBLIC_HOST", "127.0.0.1")
            .env("RUST_LOG", "info,vantage_control_plane=debug")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(url) = &self.database_url {
            command.env("DATABASE_URL", url);
        }
        for (key, value) in &self.extra_env {
            if key == "RUST_LOG" && value.is_empty() {
                command.env_remove(key);
            } else {
                command.env(key, value);
            }
        }
        self.child = Some(command.spawn().context("cannot start vantage serve")?);
        let ca_path = self.data_dir.join("pki").join("ca.pem");
        let token_path = self.data_dir.join("admin-token");
        let ports: Value = wait_for("ports.json", Duration::from_secs(30), || async {
            let text = std::fs::read_to_string(&ports_path).ok()?;
            serde_json::from_str(&text).ok()
        })
        .await
        .with_context(|| self.log_tail())?;
        self.http_port = ports["http_port"].as_u64().context("http_port")? as u16;
        self.mqtt_port = ports["mqtt_port"].as_u64().context("mqtt_port")? as u16;
        anyhow::ensure!(
            ca_path.exists() && token_path.exists(),
            "no CA or admin token"
        );
        self.ca_pem = std::fs::read_to_string(&ca_path)?;
        self.admin_token = std::fs::read_to_string(&token_path)?.trim().to_owned();
        self.client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?)
            .use_rustls_tls()
            .build()?;
        let url = self.url("/healthz");
        let client = self.client.clone();
        wait_for("/healthz", Duration::from_secs(30), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        })
        .await
        .with_context(|| self.log_tail())?;
        Ok(())
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the control plane's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.data_dir.join("control-plane.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "control plane log tail:\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }

    /// The lines of the control plane's log (all its runs) that contain `needle`, its starts and
    /// its delivery failures, for failure messages.
    pub fn log_lines_with(&self, needle: &str) -> String {
        let text =
            std::fs::read_to_string(self.data_dir.join("control-plane.log")).unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.contains(needle) || l.contains("Control plane ready") || l.contains("delivery")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.http_port)
    }

    /// GET with the admin token; returns status and JSON (or `Null`).
    ///
    /// # Errors
    /// Transport failures.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.request(reqwest::Method::GET, path, Some(&self.admin_token), None)
            .await
    }

    /// POST JSON with the admin token.
    ///
    /// # Errors
    /// Transport failures.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.request(
            reqwest::Method::POST,
            path,
            Some(&self.admin_token),
            Some(body),
        )
        .await
    }

    /// PUT with the admin token.
    ///
    /// # Errors
    /// Transport failures only; the status is returned.
    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.request(
            reqwest::Method::PUT,
            path,
            Some(&self.admin_token),
            Some(body),
        )
        .await
    }

    /// Any request with an optional bearer token and body.
    ///
    /// # Errors
    /// Transport failures.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Creates an integration source (`POST /api/v1/sources`); its secret, shown this once.
    ///
    /// # Errors
    /// The API refuses.
    pub async fn create_source(&self, definition: Value) -> anyhow::Result<String> {
        let (status, body) = self.post("/api/v1/sources", definition).await?;
        anyhow::ensure!(status == 201, "creating a source: {status} {body}");
        Ok(body["secret"]
            .as_str()
            .context("the source's secret")?
            .to_owned())
    }

    /// Creates an enrollment token for `region` with `uses`.
    ///
    /// # Errors
    /// The API refuses.
    pub async fn enrollment_token(&self, region: &str, uses: u32) -> anyhow::Result<String> {
        let (status, body) = self
            .post(
                "/api/v1/enrollment-tokens",
                json!({ "region": region, "uses": uses }),
            )
            .await?;
        anyhow::ensure!(status == 201, "token creation failed: {status} {body}");
        Ok(body["token"].as_str().context("no token")?.to_owned())
    }

    /// The Prometheus text of `/metrics`.
    ///
    /// # Errors
    /// Transport failures.
    pub async fn prometheus(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .get(self.url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// The value of one counter line (`name{labels}`) in `/metrics`.
    ///
    /// # Errors
    /// Transport failures or a missing line.
    pub async fn counter(&self, line: &str) -> anyhow::Result<u64> {
        let text = self.prometheus().await?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(line)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .with_context(|| format!("no counter {line} in /metrics"))
    }

    /// Opens `/api/v1/live?{query}` as a WebSocket with the admin token, trusting only this
    /// control plane's CA.
    ///
    /// # Errors
    /// The connection or upgrade failed.
    pub async fn live_socket(&self, query: &str) -> anyhow::Result<LiveSocket> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("wss://127.0.0.1:{}/api/v1/live?{query}", self.http_port)
            .into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.admin_token).parse()?,
        );
        let tls = vantage_agent::tls::pinned_client(&self.ca_pem)?;
        let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            true,
            Some(tokio_tungstenite::Connector::Rustls(Arc::new(tls))),
        )
        .await?;
        Ok(socket)
    }

    /// One agent as the API shows it.
    ///
    /// # Errors
    /// Transport failures or a non-200.
    pub async fn agent(&self, id: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(&format!("/api/v1/agents/{id}")).await?;
        anyhow::ensure!(status == 200, "GET agent {id}: {status} {body}");
        Ok(body)
    }

    /// Waits until agent `id` is in `state` (`online`, `offline`); returns its view.
    ///
    /// # Errors
    /// It is not within `timeout`.
    pub async fn wait_agent_state(
        &self,
        id: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        wait_for(&format!("agent {id} {state}"), timeout, || async {
            let agent = self.agent(id).await.ok()?;
            (agent["state"] == state).then_some(agent)
        })
        .await
    }

    /// Waits until some agent of `region` is online; returns its view.
    ///
    /// # Errors
    /// None is within `timeout`.
    pub async fn wait_online_in(&self, region: &str, timeout: Duration) -> anyhow::Result<Value> {
        wait_for(&format!("an agent online in {region}"), timeout, || async {
            let (_, agents) = self.get("/api/v1/agents").await.ok()?;
            agents
                .as_array()?
                .iter()
                .find(|a| a["region"] == region && a["state"] == "online")
                .cloned()
        })
        .await
    }

    /// Runs `vantage <args>` against this control plane's data dir and store; returns
    /// (success, stdout, stderr).
    ///
    /// # Errors
    /// The binary cannot run.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let mut command = Command::new(bin("vantage"));
        command
            .args(args)
            .env("VANTAGE_DATA_DIR", &self.data_dir)
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL");
        if let Some(url) = &self.database_url {
            command.env("DATABASE_URL", url);
        }
        let output = command.output()?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Makes the store refuse every insert into `table` (a trigger that raises "injected
    /// fault"), to test what the control plane does when a write fails.
    /// [`Self::clear_insert_fault`] removes it.
    ///
    /// # Errors
    /// The store cannot be reached or refuses the trigger.
    pub async fn inject_insert_fault(&self, table: &str) -> anyhow::Result<()> {
        let pool = self.store_pool().await?;
        let statements = if self.database_url.is_some() {
            vec![
                format!(
                    "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
                ),
                format!(
                    "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_{table}()"
                ),
            ]
        } else {
            vec![format!(
                "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            )]
        };
        for sql in statements {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
        }
        Ok(())
    }

    /// Removes the fault [`Self::inject_insert_fault`] put on `table`.
    ///
    /// # Errors
    /// The store cannot be reached or the trigger is not there.
    pub async fn clear_insert_fault(&self, table: &str) -> anyhow::Result<()> {
        let pool = self.store_pool().await?;
        let sql = if self.database_url.is_some() {
            format!("DROP TRIGGER refuse_{table} ON {table}")
        } else {
            format!("DROP TRIGGER refuse_{table}")
        };
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
        Ok(())
    }

    /// Connects to the store the control plane uses, for assertions on raw rows.
    ///
    /// # Errors
    /// Connection failures.
    pub async fn store_pool(&self) -> anyhow::Result<sqlx::AnyPool> {
        sqlx::any::install_default_drivers();
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("vantage.db").display()),
        };
        Ok(sqlx::AnyPool::connect(&url).await?)
    }
}

/// A `vantage-agent run` child process.
pub struct Agent {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// The program and leading arguments (a qemu-user runner, then the binary).
    command: Vec<PathBuf>,
    child: Option<Child>,
    _temp: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Agent {
    /// Writes a config that enrolls with `token` at `cp` and starts the agent.
    ///
    /// # Errors
    /// The process cannot start.
    pub fn start(cp: &ControlPlane, token: &str, extra_config: &str) -> anyhow::Result<Agent> {
        Self::start_command(cp, token, extra_config, vec![bin("vantage-agent")])
    }

    /// Like [`Self::start`] with another agent binary, run through `command` (e.g.
    /// `["qemu-aarch64-static", "dist/bin/aarch64/vantage-agent"]`).
    ///
    /// # Errors
    /// The process cannot start.
    pub fn start_command(
        cp: &ControlPlane,
        token: &str,
        extra_config: &str,
        command: Vec<PathBuf>,
    ) -> anyhow::Result<Agent> {
        anyhow::ensure!(!command.is_empty(), "no agent command");
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_owned();
        let config_path = dir.join("agent.toml");
        std::fs::write(
            &config_path,
            format!(
                "server_url = \"{}\"\nenrollment_token = \"{token}\"\nca_file = \"{}\"\nstate_dir = \"{}\"\n{extra_config}\n",
                cp.api_url(),
                cp.data_dir.join("pki").join("ca.pem").display(),
                dir.join("state").display(),
            ),
        )?;
        let mut agent = Agent {
            dir,
            config_path,
            command,
            child: None,
            _temp: temp,
        };
        agent.spawn()?;
        Ok(agent)
    }

    /// Starts the process (again) with the same config and state dir.
    ///
    /// # Errors
    /// The process cannot start.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .arg("--config")
            .arg(&self.config_path)
            .arg("run")
            .env("RUST_LOG", "info,vantage_agent=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start vantage-agent")?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process with SIGKILL. Under a wrapper (strace, a qemu-user runner that
    /// forks) the agent is the wrapper's child and outlives it: it is killed first.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.command.len() > 1 {
                let _ = Command::new("pkill")
                    .args(["-KILL", "-P", &child.id().to_string()])
                    .status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to the agent and waits up to `timeout` for the process to exit. When the
    /// agent runs under a wrapper (strace, a qemu-user runner that forks), the signal goes to
    /// the agent itself, and the wrapper's exit status (which mirrors the agent's) is returned.
    ///
    /// # Errors
    /// The process is not running or does not exit in time (it is killed then).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("the agent is not running")?;
        let agent_pid = Command::new("pgrep")
            .args(["-P", &child.id().to_string(), "vantage-agent"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|text| text.lines().next().map(str::to_owned))
            .unwrap_or_else(|| child.id().to_string());
        let sent = Command::new("kill").arg("-TERM").arg(&agent_pid).status()?;
        anyhow::ensure!(sent.success(), "kill -TERM {agent_pid} failed");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the agent did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent's state dir (identity, spool, last desired config).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent id once enrolled.
    pub fn id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join("state").join("identity.json")).ok()?;
        let value: Value = serde_json::from_str(&text).ok()?;
        value["agent_id"].as_str().map(str::to_owned)
    }

    /// Waits until enrolled and returns the id.
    ///
    /// # Errors
    /// Enrollment does not happen within 30 s.
    pub async fn wait_enrolled(&self) -> anyhow::Result<String> {
        wait_for("agent enrollment", Duration::from_secs(30), || async {
            self.id()
        })
        .await
        .with_context(|| self.log())
    }

    /// The agent's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

/// An enrolled identity for a hand-driven MQTT client.
pub struct MqttIdentity {
    pub agent_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub mqtt_port: u16,
}

impl MqttIdentity {
    /// Enrolls a new identity in `region` through the API.
    ///
    /// # Errors
    /// The API refuses.
    pub async fn enroll(cp: &ControlPlane, region: &str) -> anyhow::Result<MqttIdentity> {
        let token = cp.enrollment_token(region, 1).await?;
        Self::enroll_with(cp, &token, "test").await
    }

    /// Enrolls a new identity with an existing enrollment `token`, as `hostname`.
    ///
    /// # Errors
    /// The API refuses.
    pub async fn enroll_with(
        cp: &ControlPlane,
        token: &str,
        hostname: &str,
    ) -> anyhow::Result<MqttIdentity> {
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)?
            .pem()?;
        let (status, body) = cp
            .request(
                reqwest::Method::POST,
                "/api/v1/enroll",
                None,
                Some(json!({ "token": token, "csr_pem": csr, "hostname": hostname })),
            )
            .await?;
        anyhow::ensure!(status == 201, "enroll failed: {status} {body}");
        Ok(MqttIdentity {
            agent_id: body["agent_id"].as_str().context("agent_id")?.to_owned(),
            cert_pem: body["cert_pem"].as_str().context("cert_pem")?.to_owned(),
            key_pem: key.serialize_pem(),
            ca_pem: body["ca_pem"].as_str().context("ca_pem")?.to_owned(),
            mqtt_port: cp.mqtt_port,
        })
    }

    /// Connects as this agent, subscribes to its own topic `kind` (`config`, `cmd`,
    /// `results/ack`) and hands every message received there, decoded as JSON, to the
    /// returned channel.
    ///
    /// # Errors
    /// The connection or subscription fails.
    pub async fn listen(
        &self,
        kind: &str,
    ) -> anyhow::Result<(
        rumqttc::AsyncClient,
        tokio::sync::mpsc::UnboundedReceiver<Value>,
    )> {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(self.options(&self.agent_id)?, 64);
        connect(&mut eventloop).await?;
        client
            .subscribe(
                format!("vantage/v1/agents/{}/{kind}", self.agent_id),
                rumqttc::QoS::AtLeastOnce,
            )
            .await?;
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p)) = event
                    && let Ok(value) = serde_json::from_slice(&p.payload)
                {
                    let _ = sender.send(value);
                }
            }
        });
        Ok((client, receiver))
    }

    /// Reads acks off a [`Self::listen`] channel of `results/ack` until `n` distinct seqs are
    /// acknowledged; the seqs acknowledged.
    ///
    /// # Errors
    /// Fewer within `within`, or an ack without ranges.
    pub async fn acked_seqs(
        acks: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
        n: usize,
        within: Duration,
    ) -> anyhow::Result<std::collections::BTreeSet<u64>> {
        let mut acked = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + within;
        while acked.len() < n {
            let ack = tokio::time::timeout_at(deadline, acks.recv())
                .await
                .with_context(|| format!("acks so far: {acked:?}"))?
                .context("ack stream ended")?;
            for range in ack["ranges"].as_array().context("ranges")? {
                let (from, to) = (
                    range[0].as_u64().context("from")?,
                    range[1].as_u64().context("to")?,
                );
                acked.extend(from..=to);
            }
        }
        Ok(acked)
    }

    /// rumqttc options for this identity with `client_id`.
    ///
    /// # Errors
    /// TLS configuration failures.
    pub fn options(&self, client_id: &str) -> anyhow::Result<rumqttc::MqttOptions> {
        let tls = vantage_agent::tls::mutual_client(&self.ca_pem, &self.cert_pem, &self.key_pem)?;
        Ok(tls_options(client_id, self.mqtt_port, tls))
    }
}

/// rumqttc options over TLS with `tls`.
pub fn tls_options(client_id: &str, port: u16, tls: rustls::ClientConfig) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(10))
        .set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024)
        .set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
        ));
    options
}

/// Polls an event loop until the CONNACK or an error, within 10 s.
///
/// # Errors
/// The connection error, or a timeout.
pub async fn connect(eventloop: &mut rumqttc::EventLoop) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .context("no CONNACK within 10 s")?;
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(error) => bail!("connection failed: {error}"),
        }
    }
}

/// Polls an event loop until it errors (the server closed it) within `timeout`.
///
/// # Errors
/// Returns `Err` when the connection stays open.
pub async fn expect_closed(
    eventloop: &mut rumqttc::EventLoop,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => bail!("connection still open after {timeout:?}"),
            Ok(Err(error)) => return Ok(error.to_string()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Resident memory and CPU time of a process, from `/proc/<pid>/{status,stat}`.
pub struct ProcSample {
    pub rss_kib: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads [`ProcSample`] for `pid`.
///
/// # Errors
/// The process is gone or `/proc` reads oddly.
pub fn proc_sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat")?
        .1
        .split_whitespace()
        .collect();
    // After the command name: state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(ProcSample {
        rss_kib,
        cpu_ticks: utime + stime,
    })
}

/// A finished command's status, stdout and stderr, for error messages.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The first of `candidates` that runs (`--version` answers), e.g. a name on PATH or its
/// usual absolute path.
pub fn find_program(candidates: &[&'static str]) -> Option<&'static str> {
    candidates.iter().copied().find(|program| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

/// A `mosquitto_sub` on `topic` as a viewer with client id `client`; its password comes from
/// an options file in `config_dir`, not the command line.
///
/// # Errors
/// The options file cannot be written.
pub fn mosquitto_sub(
    cp: &ControlPlane,
    token: &str,
    config_dir: &std::path::Path,
    client: &str,
    topic: &str,
) -> anyhow::Result<std::process::Command> {
    std::fs::create_dir_all(config_dir)?;
    std::fs::write(config_dir.join("mosquitto_sub"), format!("-P {token}\n"))?;
    let mut command = std::process::Command::new("mosquitto_sub");
    command
        .env("XDG_CONFIG_HOME", config_dir)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cp.mqtt_port.to_string(),
            "-V",
            "mqttv311",
        ])
        .arg("--cafile")
        .arg(cp.data_dir.join("pki").join("ca.pem"))
        .args(["-u", "viewer", "-i", client, "-t", topic])
        .stdin(std::process::Stdio::null());
    Ok(command)
}
