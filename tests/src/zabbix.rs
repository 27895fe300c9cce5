//! A client of the real Zabbix 6.0 that `scripts/lib/zabbix.sh` starts (its JSON-RPC API and
//! `zabbix_sender`), and the setup a test needs in it: the Vantage media type from
//! `provision/zabbix/` imported under a name of the test's own, a user with that media, a
//! host with a trapper item and a trigger, and an action limited to that host (tests share
//! one Zabbix, so each sees only its own events).

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

/// A signed-in API session.
pub struct Zabbix {
    url: String,
    auth: String,
    client: reqwest::Client,
    /// `host:port` of the server's trapper.
    pub trapper: String,
}

/// What [`Zabbix::setup`] made.
#[derive(Debug, Clone)]
pub struct Setup {
    pub host: String,
    pub hostid: String,
    pub itemid: String,
    pub mediatypeid: String,
}

impl Zabbix {
    /// Signs in to the Zabbix the test command started.
    ///
    /// # Errors
    /// `VANTAGE_TEST_ZABBIX_API_URL` is unset (run the tests with `scripts/test`, which
    /// installs and starts Zabbix), or the API refuses.
    pub async fn connect() -> anyhow::Result<Zabbix> {
        let url = std::env::var("VANTAGE_TEST_ZABBIX_API_URL").context(
            "VANTAGE_TEST_ZABBIX_API_URL is unset: scripts/test installs and starts Zabbix 6.0 \
             (scripts/lib/zabbix.sh)",
        )?;
        let trapper = std::env::var("VANTAGE_TEST_ZABBIX_TRAPPER")
            .context("VANTAGE_TEST_ZABBIX_TRAPPER is unset")?;
        let user = std::env::var("VANTAGE_TEST_ZABBIX_USER").unwrap_or_else(|_| "Admin".into());
        let password =
            std::env::var("VANTAGE_TEST_ZABBIX_PASSWORD").unwrap_or_else(|_| "zabbix".into());
        let mut zabbix = Zabbix {
            url,
            auth: String::new(),
            client: reqwest::Client::new(),
            trapper,
        };
        let token = zabbix
            .call(
                "user.login",
                json!({"username": user, "password": password}),
            )
            .await?;
        zabbix.auth = token.as_str().context("user.login's token")?.to_owned();
        Ok(zabbix)
    }

    /// One JSON-RPC call; its `result`.
    ///
    /// # Errors
    /// Transport failures or a JSON-RPC error.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        // Zabbix answers a database conflict between concurrent writers (tests share it) with
        // an SQL error or DBEXECUTE_ERROR, having rolled the call back: it is made again, a few
        // times.
        let mut tries = 0;
        loop {
            match self.call_once(method, params.clone()).await {
                Err(error)
                    if tries < 5
                        && (error.to_string().contains("SQL")
                            || error.to_string().contains("DBEXECUTE_ERROR")) =>
                {
                    tries += 1;
                    eprintln!("Zabbix {method} failed ({error}); trying again");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let mut body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
        if !self.auth.is_empty() {
            body["auth"] = json!(self.auth);
        }
        let answer: Value = self
            .client
            .post(&self.url)
            .header("content-type", "application/json-rpc")
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        if let Some(error) = answer.get("error") {
            anyhow::bail!("Zabbix {method}: {error}");
        }
        Ok(answer["result"].clone())
    }

    /// The API token of this session (for a poller).
    pub fn session(&self) -> &str {
        &self.auth
    }

    /// Imports the media type under `name`, pointed at `endpoint` with `token`, and makes a
    /// user with it, a host named `host` with the trapper item `vantage.test` and a High
    /// trigger on `last(…)>5`, and an action on that host whose operations, recovery and
    /// update operations send through the media type.
    ///
    /// # Errors
    /// The API refuses a step.
    pub async fn setup(
        &self,
        name: &str,
        host: &str,
        endpoint: &str,
        token: &str,
    ) -> anyhow::Result<Setup> {
        let yaml = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../provision/zabbix/vantage_webhook_media_type.yaml"),
        )?;
        anyhow::ensure!(
            yaml.contains("\n      name: Vantage\n"),
            "the media type's name line moved"
        );
        let yaml = yaml.replacen(
            "\n      name: Vantage\n",
            &format!("\n      name: '{name}'\n"),
            1,
        );
        self.call(
            "configuration.import",
            json!({"format": "yaml", "rules": {"mediaTypes": {"createMissing": true, "updateExisting": false}}, "source": yaml}),
        )
        .await?;
        let found = self
            .call(
                "mediatype.get",
                json!({"output": "extend", "filter": {"name": name}}),
            )
            .await?;
        let media = found.get(0).context("the imported media type")?;
        let mediatypeid = media["mediatypeid"]
            .as_str()
            .context("mediatypeid")?
            .to_owned();
        let parameters: Vec<Value> = media["parameters"]
            .as_array()
            .context("parameters")?
            .iter()
            .map(|p| match p["name"].as_str() {
                Some("vantage_endpoint") => json!({"name": "vantage_endpoint", "value": endpoint}),
                Some("vantage_token") => json!({"name": "vantage_token", "value": token}),
                _ => json!({"name": p["name"], "value": p["value"]}),
            })
            .collect();
        self.call(
            "mediatype.update",
            json!({"mediatypeid": mediatypeid, "status": "0", "parameters": parameters}),
        )
        .await?;
        let role = self
            .call(
                "role.get",
                json!({"output": ["roleid"], "filter": {"name": "Super admin role"}}),
            )
            .await?;
        let roleid = role[0]["roleid"].as_str().context("roleid")?.to_owned();
        let group = self
            .call(
                "usergroup.get",
                json!({"output": ["usrgrpid"], "filter": {"name": "Zabbix administrators"}}),
            )
            .await?;
        let usrgrpid = group[0]["usrgrpid"]
            .as_str()
            .context("usrgrpid")?
            .to_owned();
        let hostgroup = self.call("hostgroup.create", json!({"name": name})).await?;
        let groupid = hostgroup["groupids"][0]
            .as_str()
            .context("groupid")?
            .to_owned();
        let user = self
            .call(
                "user.create",
                json!({"username": name, "passwd": format!("Vt!{}-pw", std::process::id()), "roleid": roleid,
                    "usrgrps": [{"usrgrpid": usrgrpid}],
                    "medias": [{"mediatypeid": mediatypeid, "sendto": "vantage-team", "active": 0, "severity": 63, "period": "1-7,00:00-24:00"}]}),
            )
            .await?;
        let userid = user["userids"][0].as_str().context("userid")?.to_owned();
        let created = self
            .call(
                "host.create",
                json!({"host": host, "groups": [{"groupid": groupid}]}),
            )
            .await?;
        let hostid = created["hostids"][0].as_str().context("hostid")?.to_owned();
        let send = json!({"operationtype": 0, "opmessage": {"default_msg": 1, "mediatypeid": mediatypeid}, "opmessage_usr": [{"userid": userid}]});
        let mut first = send.clone();
        first["esc_step_from"] = json!(1);
        first["esc_step_to"] = json!(1);
        self.call(
            "action.create",
            json!({"name": name, "eventsource": 0, "status": 0, "esc_period": "1h",
                "filter": {"evaltype": 0, "conditions": [{"conditiontype": 1, "operator": 0, "value": hostid}]},
                "operations": [first], "recovery_operations": [send], "update_operations": [send]}),
        )
        .await?;
        let itemid = self.create_item_and_trigger(&hostid, host).await?;
        Ok(Setup {
            host: host.to_owned(),
            hostid,
            itemid,
            mediatypeid,
        })
    }

    /// A host named `host` in a new host group `group`: the group's id and the host's.
    ///
    /// # Errors
    /// The API refuses.
    pub async fn create_host(&self, group: &str, host: &str) -> anyhow::Result<(String, String)> {
        let hostgroup = self
            .call("hostgroup.create", json!({"name": group}))
            .await?;
        let groupid = hostgroup["groupids"][0]
            .as_str()
            .context("groupid")?
            .to_owned();
        let created = self
            .call(
                "host.create",
                json!({"host": host, "groups": [{"groupid": groupid}]}),
            )
            .await?;
        Ok((
            groupid,
            created["hostids"][0].as_str().context("hostid")?.to_owned(),
        ))
    }

    /// The trapper item `vantage.test` on the host and a High trigger `last(…)>5`; the item's
    /// id.
    ///
    /// # Errors
    /// The API refuses.
    pub async fn create_item_and_trigger(
        &self,
        hostid: &str,
        host: &str,
    ) -> anyhow::Result<String> {
        let item = self
            .call(
                "item.create",
                json!({"name": "Vantage test value", "key_": "vantage.test", "hostid": hostid, "type": 2, "value_type": 3}),
            )
            .await?;
        let itemid = item["itemids"][0].as_str().context("itemid")?.to_owned();
        self.call(
            "trigger.create",
            json!({"description": format!("{host} value is high"), "expression": format!("last(/{host}/vantage.test)>5"), "priority": 4}),
        )
        .await?;
        Ok(itemid)
    }

    /// Sends `value` for `host`'s `vantage.test` with `zabbix_sender`, retrying until the
    /// server processed it (a new item reaches the server's config cache within a second or
    /// so).
    ///
    /// # Errors
    /// It was never processed within 20 s.
    pub async fn send(&self, host: &str, value: u64) -> anyhow::Result<()> {
        let (address, port) = self.trapper.rsplit_once(':').context("trapper address")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let output = tokio::process::Command::new("zabbix_sender")
                .args([
                    "-z",
                    address,
                    "-p",
                    port,
                    "-s",
                    host,
                    "-k",
                    "vantage.test",
                    "-o",
                ])
                .arg(value.to_string())
                .output()
                .await
                .context("zabbix_sender (Debian's zabbix-agent) must be installed")?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if text.contains("processed: 1") {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "zabbix_sender never got its value processed: {text} {}",
                String::from_utf8_lossy(&output.stderr)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sends `value` (above the trigger's 5) until `hostid` has an open problem, and returns
    /// its event id: right after the item and trigger are made, the server may process a
    /// value with the item already in its config cache and the trigger not yet.
    ///
    /// # Errors
    /// No problem within 40 s.
    pub async fn raise(&self, host: &str, hostid: &str, value: u64) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            self.send(host, value).await?;
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(4) {
                let found = self
                    .call(
                        "problem.get",
                        json!({"output": ["eventid"], "hostids": [hostid], "sortfield": ["eventid"], "sortorder": "DESC"}),
                    )
                    .await?;
                if let Some(id) = found.get(0).and_then(|p| p["eventid"].as_str()) {
                    return Ok(id.to_owned());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no problem on {host} after sending {value}"
            );
        }
    }
}
