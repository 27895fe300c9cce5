//! Region provisioning: `provision/cloud` (Vultr, DigitalOcean, Hetzner Cloud) and the Zabbix
//! 6.0 webhook media type in `provision/zabbix/`.
//!
//! The provider APIs here are FAKES: the real Vultr, DigitalOcean and Hetzner Cloud APIs cannot
//! be reached from this machine (no network but the package registries), and a test must not
//! create billable servers anyway. Each test starts a plain-HTTP server on 127.0.0.1:0 that
//! plays one provider as its documentation describes it: it checks every request (method,
//! path, query, `Authorization: Bearer` with the exact token, `Content-Type`, body fields and
//! the user-data encoding), answers with the provider's response and error shapes and
//! pagination, and records what it received. The script is pointed at it through
//! `VANTAGE_<PROVIDER>_API_URL`. What the fakes cannot show is whether the real providers still
//! accept these shapes; provision/README.md lists what was confirmed from their documentation.
//!
//! Every run of the script is checked for the token: never in its stdout or stderr, never in
//! the argv of curl, jq or base64 (PATH shims log their arguments), never in the argv of any
//! process nor in the environment of curl/jq/base64 while a request is in flight (the fake
//! scans /proc), and the script's temporary directory is gone when it exits. Bad input must
//! fail with a clear message and exit 2 before anything is sent: the fake records nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Providers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    Vultr,
    DigitalOcean,
    Hetzner,
}

impl Provider {
    fn cli(self) -> &'static str {
        match self {
            Provider::Vultr => "vultr",
            Provider::DigitalOcean => "digitalocean",
            Provider::Hetzner => "hetzner",
        }
    }

    fn token_var(self) -> &'static str {
        match self {
            Provider::Vultr => "VULTR_API_KEY",
            Provider::DigitalOcean => "DIGITALOCEAN_TOKEN",
            Provider::Hetzner => "HCLOUD_TOKEN",
        }
    }

    fn url_var(self) -> &'static str {
        match self {
            Provider::Vultr => "VANTAGE_VULTR_API_URL",
            Provider::DigitalOcean => "VANTAGE_DIGITALOCEAN_API_URL",
            Provider::Hetzner => "VANTAGE_HCLOUD_API_URL",
        }
    }

    /// The version prefix of the real API's paths (`https://api.vultr.com/v2`, ...).
    fn prefix(self) -> &'static str {
        match self {
            Provider::Vultr | Provider::DigitalOcean => "/v2",
            Provider::Hetzner => "/v1",
        }
    }

    fn region(self) -> &'static str {
        match self {
            Provider::Vultr => "ewr",
            Provider::DigitalOcean => "fra1",
            Provider::Hetzner => "fsn1",
        }
    }

    /// Documented user-data limit (Vultr's is assumed: it documents none).
    fn user_data_limit(self) -> usize {
        match self {
            Provider::Vultr | Provider::DigitalOcean => 65536,
            Provider::Hetzner => 32768,
        }
    }

    /// The provider's error body for `status` with `message`.
    fn error(self, status: u16, message: &str) -> Reply {
        let body = match self {
            // Vultr v2: {"error": "...", "status": 401}
            Provider::Vultr => json!({"error": message, "status": status}),
            // DigitalOcean v2: {"id": "unprocessable_entity", "message": "...", "request_id": ...}
            Provider::DigitalOcean => json!({
                "id": match status {
                    401 => "Unauthorized",
                    404 => "not_found",
                    415 => "unsupported_media_type",
                    422 => "unprocessable_entity",
                    _ => "bad_request",
                },
                "message": message,
                "request_id": "4d9d8375-3c56-4925-a3e7-eb137fed17e9",
            }),
            // Hetzner Cloud v1: {"error": {"code": "...", "message": "...", "details": {}}}
            Provider::Hetzner => json!({"error": {
                "code": match status {
                    401 => "unauthorized",
                    404 => "not_found",
                    422 => "invalid_input",
                    _ => "invalid_input",
                },
                "message": message,
                "details": {},
            }}),
        };
        Reply::json(status, body)
    }

    fn unauthorized(self) -> Reply {
        match self {
            Provider::Vultr => self.error(401, "Invalid API token."),
            Provider::DigitalOcean => self.error(401, "Unable to authenticate you"),
            Provider::Hetzner => self.error(401, "unable to authenticate"),
        }
    }
}

const ALL: [Provider; 3] = [Provider::Vultr, Provider::DigitalOcean, Provider::Hetzner];

// ---------------------------------------------------------------------------------------------
// The fake HTTP server
// ---------------------------------------------------------------------------------------------

/// One request as the fake received it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Processes that held the token in their argv (or curl/jq/base64 in their environment)
    /// while this request was in flight.
    token_holders: Vec<String>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: body.to_string(),
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: String::new(),
        }
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

struct Shared {
    provider: Provider,
    token: String,
    handler: Box<Handler>,
    requests: Mutex<Vec<Request>>,
}

/// A fake provider API on 127.0.0.1, plain HTTP.
struct Fake {
    base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    /// Serves `handler` behind the provider's bearer-token and content-type checks.
    async fn start(
        provider: Provider,
        token: &str,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<Fake> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            provider,
            token: token.to_owned(),
            handler: Box::new(handler),
            requests: Mutex::new(Vec::new()),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    if let Err(err) = serve(socket, &shared).await {
                        eprintln!("fake {}: {err:#}", shared.provider.cli());
                    }
                });
            }
        });
        Ok(Fake {
            base: format!("http://{addr}"),
            shared,
            task,
        })
    }

    /// What the script's `VANTAGE_*_API_URL` points at: the fake plus the API version prefix.
    fn api_url(&self) -> String {
        format!("{}{}", self.base, self.shared.provider.prefix())
    }

    fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut socket: TcpStream, shared: &Shared) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    let header_end = loop {
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed before the request headers ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        ensure!(buf.len() < 64 * 1024, "request headers over 64 KiB");
    };
    let head = std::str::from_utf8(&buf[..header_end]).context("request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().context("no request line")?;
    let mut parts = request_line.split(' ');
    let method = parts.next().context("no method")?.to_owned();
    let target = parts.next().context("no target")?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let length: usize = header("content-length")
        .map(|v| v.parse())
        .transpose()
        .context("bad Content-Length")?
        .unwrap_or(0);
    ensure!(length <= 1024 * 1024, "request body over 1 MiB");
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        socket.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed inside the request body");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), parse_query(query)?),
        None => (target.clone(), Vec::new()),
    };

    let request = Request {
        method,
        path,
        query,
        headers,
        body,
        token_holders: token_holders(&shared.token),
    };
    let expected = format!("Bearer {}", shared.token);
    let reply = if request.header("authorization") != Some(expected.as_str()) {
        shared.provider.unauthorized()
    } else if !request.body.is_empty() && request.header("content-type") != Some("application/json")
    {
        shared
            .provider
            .error(415, "request bodies must be Content-Type: application/json")
    } else {
        (shared.handler)(&request)
    };
    shared.requests.lock().unwrap().push(request);

    let reason = match reply.status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Status",
    };
    let mut response = format!(
        "HTTP/1.1 {} {reason}\r\nConnection: close\r\n",
        reply.status
    );
    if reply.status != 204 {
        response.push_str("Content-Type: application/json\r\n");
    }
    response.push_str(&format!("Content-Length: {}\r\n\r\n", reply.body.len()));
    response.push_str(&reply.body);
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await?;
    Ok(())
}

fn parse_query(query: &str) -> anyhow::Result<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).context("truncated percent escape")?;
            out.push(u8::from_str_radix(hex, 16).context("bad percent escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

/// Every process whose argv holds `token`, and every curl/jq/base64 whose environment does.
fn token_holders(token: &str) -> Vec<String> {
    let needle = token.as_bytes();
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if std::fs::read(dir.join("cmdline")).is_ok_and(|argv| contains(&argv)) {
            found.push(format!("argv of pid {pid} ({comm})"));
        }
        if matches!(comm, "curl" | "jq" | "base64")
            && std::fs::read(dir.join("environ")).is_ok_and(|env| contains(&env))
        {
            found.push(format!("environment of pid {pid} ({comm})"));
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Fake provider behaviour
// ---------------------------------------------------------------------------------------------

/// Instances the fake knows, as the provider's JSON objects.
type Store = Arc<Mutex<Vec<Value>>>;

/// Items per page the fakes answer with, whatever per_page asks: small, so that every list
/// in these tests spans several pages.
const PAGE: usize = 2;

fn str_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, String> {
    body.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{name} is required and must be a non-empty string"))
}

fn tags_field(body: &Value) -> Result<Vec<String>, String> {
    body.get("tags")
        .and_then(Value::as_array)
        .and_then(|tags| {
            tags.iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| "tags must be an array of strings".to_owned())
}

fn has_tag(item: &Value, tag: &str) -> bool {
    item["tags"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t == tag))
}

/// Removes the first item that `matches`; false when there is none.
fn remove_first(items: &mut Vec<Value>, matches: impl Fn(&Value) -> bool) -> bool {
    match items.iter().position(matches) {
        Some(pos) => {
            items.remove(pos);
            true
        }
        None => false,
    }
}

/// Matches an item whose numeric `id` is `id` (DigitalOcean and Hetzner ids are numbers).
fn numeric_id(id: &str) -> impl Fn(&Value) -> bool + '_ {
    move |item| item["id"].as_u64().is_some_and(|n| id.parse() == Ok(n))
}

/// Vultr API v2: POST /instances, GET /instances (cursor pages), DELETE /instances/{id}.
fn vultr_api(store: Store) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    let p = Provider::Vultr;
    move |req| {
        let mut items = store.lock().unwrap();
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/v2/instances") => {
                let body = req.json();
                let checked = (|| {
                    let region = str_field(&body, "region")?;
                    let plan = str_field(&body, "plan")?;
                    let os_id = body["os_id"].as_u64().ok_or("os_id must be an integer")?;
                    let label = str_field(&body, "label")?;
                    if body["hostname"] != body["label"] {
                        return Err("hostname differs from label".to_owned());
                    }
                    let tags = tags_field(&body)?;
                    let user_data = str_field(&body, "user_data")?;
                    base64_decode(user_data)
                        .map_err(|_| "user_data must be base64 encoded".to_owned())?;
                    Ok(json!({
                        "id": format!("cb676a46-66fd-4dfb-b839-{:012}", items.len() + 1),
                        "label": label,
                        "hostname": label,
                        "region": region,
                        "plan": plan,
                        "os_id": os_id,
                        "main_ip": "0.0.0.0",
                        "status": "pending",
                        "power_status": "running",
                        "server_status": "none",
                        "tags": tags,
                    }))
                })();
                match checked {
                    Ok(instance) => {
                        items.push(instance.clone());
                        Reply::json(202, json!({"instance": instance}))
                    }
                    Err(message) => p.error(400, &message),
                }
            }
            ("GET", "/v2/instances") => {
                if req
                    .query("per_page")
                    .is_none_or(|n| n.parse::<u32>().is_err())
                {
                    return p.error(400, "per_page must be a number");
                }
                let matching: Vec<&Value> = items
                    .iter()
                    .filter(|i| req.query("tag").is_none_or(|tag| has_tag(i, tag)))
                    .collect();
                // Opaque cursors, with characters that need percent-encoding in a query.
                let start = match req.query("cursor") {
                    None => 0,
                    Some(cursor) => match cursor
                        .strip_suffix(":bmV4dA==")
                        .and_then(|n| n.parse().ok())
                    {
                        Some(start) => start,
                        None => return p.error(400, "Invalid cursor."),
                    },
                };
                let end = (start + PAGE).min(matching.len());
                let next = if end < matching.len() {
                    format!("{end}:bmV4dA==")
                } else {
                    String::new()
                };
                Reply::json(
                    200,
                    json!({
                        "instances": matching[start.min(end)..end],
                        "meta": {"total": matching.len(), "links": {"next": next, "prev": ""}},
                    }),
                )
            }
            ("DELETE", path) if path.starts_with("/v2/instances/") => {
                let id = &path["/v2/instances/".len()..];
                if remove_first(&mut items, |i| i["id"] == id) {
                    Reply::empty(204)
                } else {
                    p.error(404, "Invalid instance-id.")
                }
            }
            _ => p.error(404, "Not found."),
        }
    }
}

/// DigitalOcean API v2: POST /droplets (names[]), GET /droplets (page pages),
/// DELETE /droplets?tag_name=, DELETE /droplets/{id}.
fn digitalocean_api(store: Store) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    let p = Provider::DigitalOcean;
    move |req| {
        let mut items = store.lock().unwrap();
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/v2/droplets") => {
                let body = req.json();
                let checked = (|| {
                    if body.get("name").is_some() {
                        return Err("send name or names, not both".to_owned());
                    }
                    let names = body["names"]
                        .as_array()
                        .and_then(|n| n.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                        .ok_or("names must be an array of strings")?;
                    if names.is_empty() || names.len() > 10 {
                        return Err("names must hold between 1 and 10 names".to_owned());
                    }
                    let region = str_field(&body, "region")?;
                    str_field(&body, "size")?;
                    str_field(&body, "image")?;
                    str_field(&body, "user_data")?;
                    let tags = tags_field(&body)?;
                    Ok((names, region.to_owned(), tags))
                })();
                match checked {
                    Ok((names, region, tags)) => {
                        let mut created = Vec::new();
                        for name in names {
                            let n = items.len() + 1;
                            let droplet = json!({
                                "id": 3_164_000 + n,
                                "name": name,
                                "status": "new",
                                "region": {"slug": region, "name": "Frankfurt 1"},
                                "size_slug": body["size"],
                                "networks": {"v4": [
                                    {"ip_address": format!("10.19.0.{n}"), "type": "private"},
                                    {"ip_address": format!("203.0.113.{n}"), "type": "public"},
                                ]},
                                "tags": tags,
                            });
                            items.push(droplet.clone());
                            created.push(droplet);
                        }
                        Reply::json(202, json!({"droplets": created, "links": {"actions": []}}))
                    }
                    Err(message) => p.error(422, &message),
                }
            }
            ("GET", "/v2/droplets") => {
                let page: usize = match req.query("page").map(str::parse) {
                    Some(Ok(page)) if page >= 1 => page,
                    _ => return p.error(400, "page must be a positive number"),
                };
                if req
                    .query("per_page")
                    .is_none_or(|n| n.parse::<u32>().is_err())
                {
                    return p.error(400, "per_page must be a number");
                }
                let matching: Vec<&Value> = items
                    .iter()
                    .filter(|i| req.query("tag_name").is_none_or(|tag| has_tag(i, tag)))
                    .collect();
                let start = ((page - 1) * PAGE).min(matching.len());
                let end = (start + PAGE).min(matching.len());
                // links.pages.next is an absolute URL on the real API; the script must only
                // take the page number from it, never follow it (.invalid never resolves).
                let mut pages = serde_json::Map::new();
                if end < matching.len() {
                    pages.insert(
                        "next".into(),
                        json!(format!(
                            "https://api.digitalocean.invalid/v2/droplets?page={}",
                            page + 1
                        )),
                    );
                    pages.insert(
                        "last".into(),
                        json!("https://api.digitalocean.invalid/v2/droplets?page=99"),
                    );
                }
                Reply::json(
                    200,
                    json!({
                        "droplets": matching[start..end],
                        "links": {"pages": pages},
                        "meta": {"total": matching.len()},
                    }),
                )
            }
            ("DELETE", "/v2/droplets") => match req.query("tag_name") {
                Some(tag) if req.body.is_empty() => {
                    items.retain(|i| !has_tag(i, tag));
                    Reply::empty(204)
                }
                _ => p.error(400, "tag_name is required"),
            },
            ("DELETE", path) if path.starts_with("/v2/droplets/") => {
                let id = &path["/v2/droplets/".len()..];
                if remove_first(&mut items, numeric_id(id)) {
                    Reply::empty(204)
                } else {
                    p.error(404, "The resource you were accessing could not be found.")
                }
            }
            _ => p.error(404, "The resource you were accessing could not be found."),
        }
    }
}

/// Hetzner Cloud API v1: POST /servers, GET /servers (label_selector, page pages),
/// DELETE /servers/{id}.
fn hetzner_api(store: Store) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    let p = Provider::Hetzner;
    move |req| {
        let mut items = store.lock().unwrap();
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/v1/servers") => {
                let body = req.json();
                let checked = (|| {
                    let name = str_field(&body, "name")?;
                    str_field(&body, "server_type")?;
                    str_field(&body, "image")?;
                    let location = str_field(&body, "location")?;
                    str_field(&body, "user_data")?;
                    let labels = body["labels"]
                        .as_object()
                        .filter(|l| l.values().all(Value::is_string))
                        .ok_or("labels must be an object of strings")?;
                    if items.iter().any(|i| i["name"] == name) {
                        return Err("server name is already used".to_owned());
                    }
                    Ok((name.to_owned(), location.to_owned(), labels.clone()))
                })();
                match checked {
                    Ok((name, location, labels)) => {
                        let n = items.len() + 1;
                        let server = json!({
                            "id": 42_000 + n,
                            "name": name,
                            "status": "initializing",
                            "public_net": {"ipv4": {"ip": format!("198.51.100.{n}")}, "ipv6": null},
                            "datacenter": {"name": format!("{location}-dc14"), "location": {"name": location}},
                            "server_type": {"name": body["server_type"]},
                            "labels": labels,
                        });
                        items.push(server.clone());
                        Reply::json(
                            201,
                            json!({
                                "server": server,
                                "action": {"id": 13, "command": "create_server", "status": "running"},
                                "next_actions": [],
                                "root_password": ROOT_PASSWORD,
                            }),
                        )
                    }
                    Err(message) => p.error(422, &message),
                }
            }
            ("GET", "/v1/servers") => {
                let page: usize = match req.query("page").map(str::parse) {
                    Some(Ok(page)) if page >= 1 => page,
                    _ => return p.error(400, "page must be a positive number"),
                };
                if req
                    .query("per_page")
                    .is_none_or(|n| n.parse::<u32>().is_err())
                {
                    return p.error(400, "per_page must be a number");
                }
                let selector = match req.query("label_selector").map(|s| s.split_once('=')) {
                    None => None,
                    Some(Some((k, v))) => Some((k.to_owned(), v.to_owned())),
                    Some(None) => return p.error(400, "label_selector must be key=value here"),
                };
                let matching: Vec<&Value> = items
                    .iter()
                    .filter(|i| {
                        selector
                            .as_ref()
                            .is_none_or(|(k, v)| i["labels"][k.as_str()] == v.as_str())
                    })
                    .collect();
                let last = matching.len().div_ceil(PAGE).max(1);
                let start = ((page - 1) * PAGE).min(matching.len());
                let end = (start + PAGE).min(matching.len());
                Reply::json(
                    200,
                    json!({
                        "servers": matching[start..end],
                        "meta": {"pagination": {
                            "page": page,
                            "per_page": PAGE,
                            "previous_page": if page > 1 { json!(page - 1) } else { Value::Null },
                            "next_page": if page < last { json!(page + 1) } else { Value::Null },
                            "last_page": last,
                            "total_entries": matching.len(),
                        }},
                    }),
                )
            }
            ("DELETE", path) if path.starts_with("/v1/servers/") => {
                let id = &path["/v1/servers/".len()..];
                if remove_first(&mut items, numeric_id(id)) {
                    Reply::json(
                        200,
                        json!({"action": {"id": 14, "command": "delete_server", "status": "running"}}),
                    )
                } else {
                    p.error(404, "server not found")
                }
            }
            _ => p.error(404, "not found"),
        }
    }
}

/// The Hetzner fake's create answer carries a root password; the script must never print it.
const ROOT_PASSWORD: &str = "HetznerRootPw-5c1d7e";

async fn start_fake(provider: Provider, token: &str, store: Store) -> anyhow::Result<Fake> {
    match provider {
        Provider::Vultr => Fake::start(provider, token, vultr_api(store)).await,
        Provider::DigitalOcean => Fake::start(provider, token, digitalocean_api(store)).await,
        Provider::Hetzner => Fake::start(provider, token, hetzner_api(store)).await,
    }
}

/// An instance of another fleet, under another tag, that no command here may touch.
fn bystander(provider: Provider) -> Value {
    match provider {
        Provider::Vultr => json!({"id": "0d1e2f30-0000-4000-8000-000000000001", "label": "other",
            "region": "ewr", "main_ip": "192.0.2.200", "status": "active", "tags": ["other"]}),
        Provider::DigitalOcean => json!({"id": 9_999_001, "name": "other",
            "region": {"slug": "fra1"}, "networks": {"v4": []}, "status": "active",
            "tags": ["other"]}),
        Provider::Hetzner => json!({"id": 9_999_001, "name": "other", "status": "running",
            "public_net": {"ipv4": null}, "datacenter": {"location": {"name": "fsn1"}},
            "labels": {"vantage": "other"}}),
    }
}

// ---------------------------------------------------------------------------------------------
// Running the script
// ---------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn script() -> PathBuf {
    workspace_root().join("provision/cloud")
}

/// A recognisable token, unique per test.
fn new_token() -> String {
    format!("vtgTESTtoken-{:016x}-SECRET", rand::random::<u64>())
}

fn find_in_path(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{name} is not installed (Debian: apt-get install {name})"))
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A scratch area per test: the script's TMPDIR, PATH shims that log the argv of curl, jq and
/// base64, and the token the fakes expect.
struct Bench {
    dir: tempfile::TempDir,
    token: String,
}

impl Bench {
    fn new() -> anyhow::Result<Bench> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("shims"))?;
        std::fs::create_dir(dir.path().join("tmp"))?;
        for tool in ["curl", "jq", "base64"] {
            let real = find_in_path(tool)?;
            let shim = dir.path().join("shims").join(tool);
            std::fs::write(
                &shim,
                format!(
                    "#!/bin/sh\nprintf '%s\\n' \"$0 $*\" >> '{}'\nexec '{}' \"$@\"\n",
                    dir.path().join("argv.log").display(),
                    real.display()
                ),
            )?;
            std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(Bench {
            dir,
            token: new_token(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: &[u8]) -> anyhow::Result<PathBuf> {
        let path = self.path(name);
        std::fs::write(&path, content)?;
        Ok(path)
    }

    /// Runs the script against `fake` with the bench's token.
    async fn run(&self, fake: &Fake, args: &[&str]) -> anyhow::Result<Output> {
        let provider = fake.shared.provider;
        let url = fake.api_url();
        self.run_env(
            &[
                (provider.token_var(), self.token.as_str()),
                (provider.url_var(), url.as_str()),
            ],
            args,
            &[self.token.as_str()],
        )
        .await
    }

    /// Runs `line` (split on spaces) against `fake`: a shorthand for [`Bench::run`].
    async fn run_line(&self, fake: &Fake, line: &str) -> anyhow::Result<Output> {
        let args: Vec<&str> = line.split(' ').collect();
        self.run(fake, &args).await
    }

    /// Runs the script with exactly `env` (plus PATH, HOME, TMPDIR) and checks that no value
    /// in `secrets` shows anywhere and that the script left nothing in its TMPDIR.
    async fn run_env(
        &self,
        env: &[(&str, &str)],
        args: &[&str],
        secrets: &[&str],
    ) -> anyhow::Result<Output> {
        let path = format!(
            "{}:{}",
            self.path("shims").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        self.run_raw(&path, env, args, secrets).await
    }

    async fn run_raw(
        &self,
        path: &str,
        env: &[(&str, &str)],
        args: &[&str],
        secrets: &[&str],
    ) -> anyhow::Result<Output> {
        let mut command = tokio::process::Command::new(script());
        command
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.dir.path())
            .env("TMPDIR", self.path("tmp"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .context("provision/cloud did not finish within 60 s")?
            .context("running provision/cloud")?;
        let out = Output {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        let argv_log = std::fs::read_to_string(self.path("argv.log")).unwrap_or_default();
        for secret in secrets {
            ensure!(
                !out.stdout.contains(secret),
                "stdout of {args:?} shows the token:\n{}",
                out.stdout
            );
            ensure!(
                !out.stderr.contains(secret),
                "stderr of {args:?} shows the token:\n{}",
                out.stderr
            );
            ensure!(
                !argv_log.contains(secret),
                "the token was passed as an argument to curl, jq or base64:\n{argv_log}"
            );
        }
        let left: Vec<_> = std::fs::read_dir(self.path("tmp"))?.flatten().collect();
        ensure!(
            left.is_empty(),
            "provision/cloud left files in TMPDIR: {left:?}"
        );
        Ok(out)
    }
}

/// Fails unless the run succeeded; shows its output otherwise.
fn ok(out: &Output, what: &str) -> anyhow::Result<()> {
    ensure!(
        out.code == 0,
        "{what} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// Every request carried the exact bearer token and JSON content type, and no process held
/// the token in its argv (or curl/jq/base64 in its environment) while it was in flight.
fn check_requests(fake: &Fake, token: &str) -> anyhow::Result<()> {
    for req in fake.requests() {
        ensure!(
            req.header("authorization") == Some(format!("Bearer {token}").as_str()),
            "{} {} without the exact bearer token",
            req.method,
            req.path
        );
        ensure!(
            req.header("accept") == Some("application/json"),
            "{} {} without Accept: application/json",
            req.method,
            req.path
        );
        if !req.body.is_empty() {
            ensure!(
                req.header("content-type") == Some("application/json"),
                "{} {} with a body that is not declared application/json",
                req.method,
                req.path
            );
        }
        ensure!(
            req.token_holders.is_empty(),
            "the token was visible during {} {}: {:?}",
            req.method,
            req.path,
            req.token_holders
        );
    }
    Ok(())
}

/// The user-data every create sends: cloud-config with non-ASCII text, quotes, a backslash
/// and a tab, so that both encodings (base64 and JSON string) are exercised.
const USER_DATA: &str = "#cloud-config\n# vantage cloud-init --region test\nwrite_files:\n  - path: /etc/vantage/motd\n    content: \"h\u{e9}llo \\\"fleet\\\" \u{2713}\tback\\\\slash\"\nruncmd:\n  - [systemctl, enable, --now, vantage-agent]\n";

/// The table rows of `list`: (id, name, region, ipv4, status), header skipped.
fn table_rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .skip_while(|line| !line.starts_with("ID"))
        .skip(1)
        .filter(|line| !line.trim().is_empty() && !line.starts_with("created "))
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Lifecycle per provider: create, list (paged), list --json, destroy --tag, destroy --id
// ---------------------------------------------------------------------------------------------

async fn lifecycle(provider: Provider, count: usize) -> anyhow::Result<()> {
    let bench = Bench::new()?;
    let store: Store = Arc::new(Mutex::new(vec![bystander(provider)]));
    let fake = start_fake(provider, &bench.token, store.clone()).await?;
    let user_data = bench.write("user-data.yaml", USER_DATA.as_bytes())?;
    let region = provider.region();
    let tag = format!("vantage-{region}");
    let cli = provider.cli();

    // create
    let line = format!(
        "{cli} create --region {region} --count {count} --user-data {}",
        user_data.display()
    );
    let out = bench.run_line(&fake, &line).await?;
    ok(&out, "create")?;
    ensure!(
        !out.stdout.contains(ROOT_PASSWORD) && !out.stderr.contains(ROOT_PASSWORD),
        "create printed the root password from the provider's answer"
    );
    let creates: Vec<Request> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    let mut names = Vec::new();
    for req in &creates {
        let body = req.json();
        match provider {
            Provider::Vultr => {
                ensure!(req.path == "/v2/instances", "create went to {}", req.path);
                ensure!(body["region"] == region, "region: {body}");
                ensure!(body["plan"] == "vc2-1c-1gb", "default plan: {body}");
                ensure!(body["os_id"] == 2136, "default os_id (Debian 12): {body}");
                ensure!(body["tags"] == json!([tag]), "tags: {body}");
                ensure!(body["hostname"] == body["label"], "hostname: {body}");
                let decoded = base64_decode(body["user_data"].as_str().unwrap_or_default())?;
                ensure!(
                    decoded == USER_DATA.as_bytes(),
                    "Vultr user_data is not the file base64-encoded"
                );
                names.push(body["label"].as_str().unwrap_or_default().to_owned());
            }
            Provider::DigitalOcean => {
                ensure!(req.path == "/v2/droplets", "create went to {}", req.path);
                ensure!(body["region"] == region, "region: {body}");
                ensure!(body["size"] == "s-1vcpu-512mb-10gb", "default size: {body}");
                ensure!(body["image"] == "debian-12-x64", "default image: {body}");
                ensure!(body["tags"] == json!([tag]), "tags: {body}");
                ensure!(
                    body["user_data"] == USER_DATA,
                    "DigitalOcean user_data is not the file as plain text"
                );
                let batch = body["names"].as_array().context("names[]")?;
                ensure!(batch.len() <= 10, "more than 10 names in one request");
                names.extend(
                    batch
                        .iter()
                        .map(|n| n.as_str().unwrap_or_default().to_owned()),
                );
            }
            Provider::Hetzner => {
                ensure!(req.path == "/v1/servers", "create went to {}", req.path);
                ensure!(body["location"] == region, "location: {body}");
                ensure!(body["server_type"] == "cx23", "default server_type: {body}");
                ensure!(body["image"] == "debian-12", "default image: {body}");
                ensure!(
                    body["labels"] == json!({"vantage": tag, "vantage-region": region}),
                    "labels: {body}"
                );
                ensure!(
                    body["user_data"] == USER_DATA,
                    "Hetzner user_data is not the file as plain text"
                );
                names.push(body["name"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    let expected_requests = match provider {
        Provider::DigitalOcean => count.div_ceil(10),
        _ => count,
    };
    ensure!(
        creates.len() == expected_requests,
        "{count} instances took {} create requests, expected {expected_requests}",
        creates.len()
    );
    ensure!(
        names.len() == count,
        "{} names for {count} instances",
        names.len()
    );
    let prefix = format!("vantage-{region}-");
    for name in &names {
        ensure!(
            name.starts_with(&prefix) && name.len() == prefix.len() + 6,
            "name {name} is not {prefix}<6 hex digits>"
        );
        ensure!(
            names.iter().filter(|n| *n == name).count() == 1,
            "name {name} used twice"
        );
    }
    let created_ids: Vec<String> = store
        .lock()
        .unwrap()
        .iter()
        .skip(1)
        .map(|i| {
            i["id"]
                .as_str()
                .map_or_else(|| i["id"].to_string(), str::to_owned)
        })
        .collect();
    for id in &created_ids {
        ensure!(
            out.stdout.contains(id.as_str()),
            "create output misses {id}:\n{}",
            out.stdout
        );
    }
    ensure!(
        out.stdout.contains(&format!("created {count} ")),
        "create summary missing:\n{}",
        out.stdout
    );
    check_requests(&fake, &bench.token)?;

    // list --tag: every page, and only the tagged instances
    let before = fake.requests().len();
    let out = bench
        .run_line(&fake, &format!("{cli} list --tag {tag}"))
        .await?;
    ok(&out, "list")?;
    let lists = &fake.requests()[before..];
    let pages = count.div_ceil(PAGE);
    ensure!(
        lists.len() == pages,
        "list of {count} instances at {PAGE} per page took {} requests, expected {pages}",
        lists.len()
    );
    for (n, req) in lists.iter().enumerate() {
        ensure!(req.method == "GET", "list sent {}", req.method);
        ensure!(req.body.is_empty(), "list sent a body");
        match provider {
            Provider::Vultr => {
                ensure!(req.path == "/v2/instances");
                ensure!(
                    req.query("tag") == Some(tag.as_str()),
                    "tag filter: {req:?}"
                );
                ensure!(req.query("per_page").is_some(), "per_page");
                let cursor = (n > 0).then(|| format!("{}:bmV4dA==", n * PAGE));
                ensure!(
                    req.query("cursor").map(str::to_owned) == cursor,
                    "page {} cursor {:?}, expected {cursor:?}",
                    n + 1,
                    req.query("cursor")
                );
            }
            Provider::DigitalOcean => {
                ensure!(req.path == "/v2/droplets");
                ensure!(
                    req.query("tag_name") == Some(tag.as_str()),
                    "tag filter: {req:?}"
                );
                ensure!(req.query("page") == Some((n + 1).to_string().as_str()));
                ensure!(req.query("per_page").is_some(), "per_page");
            }
            Provider::Hetzner => {
                ensure!(req.path == "/v1/servers");
                ensure!(
                    req.query("label_selector") == Some(format!("vantage={tag}").as_str()),
                    "label selector: {req:?}"
                );
                ensure!(req.query("page") == Some((n + 1).to_string().as_str()));
                ensure!(req.query("per_page").is_some(), "per_page");
            }
        }
    }
    let rows = table_rows(&out.stdout);
    ensure!(
        rows.len() == count,
        "list shows {} rows for {count} instances:\n{}",
        rows.len(),
        out.stdout
    );
    for (id, row) in created_ids.iter().zip(&rows) {
        ensure!(
            row.len() == 5,
            "row is not id, name, region, ipv4, status: {row:?}"
        );
        ensure!(&row[0] == id, "row {row:?} is not instance {id}");
        ensure!(row[2] == region, "row {row:?} region");
        ensure!(names.contains(&row[1]), "row {row:?} name");
        let ip_ok = match provider {
            Provider::Vultr => row[3] == "0.0.0.0",
            Provider::DigitalOcean => row[3].starts_with("203.0.113."),
            Provider::Hetzner => row[3].starts_with("198.51.100."),
        };
        ensure!(ip_ok, "row {row:?} does not show the public IPv4");
    }
    ensure!(
        !out.stdout.contains("other"),
        "list --tag showed another tag's instance"
    );

    // list --json: the raw objects of every page as one array
    let out = bench
        .run_line(&fake, &format!("{cli} list --tag {tag} --json"))
        .await?;
    ok(&out, "list --json")?;
    let raw: Value = serde_json::from_str(&out.stdout).context("list --json is not JSON")?;
    ensure!(
        raw.as_array().map(Vec::len) == Some(count),
        "list --json holds {raw}"
    );

    // list without --tag: everything, the bystander too
    let out = bench.run_line(&fake, &format!("{cli} list")).await?;
    ok(&out, "list (all)")?;
    ensure!(table_rows(&out.stdout).len() == count + 1);

    // destroy --tag
    let before = fake.requests().len();
    let out = bench
        .run_line(&fake, &format!("{cli} destroy --tag {tag}"))
        .await?;
    ok(&out, "destroy --tag")?;
    let destroys = &fake.requests()[before..];
    match provider {
        Provider::DigitalOcean => {
            ensure!(
                destroys.len() == 1,
                "DigitalOcean destroy --tag is one request"
            );
            ensure!(destroys[0].method == "DELETE" && destroys[0].path == "/v2/droplets");
            ensure!(destroys[0].query("tag_name") == Some(tag.as_str()));
        }
        _ => {
            let deletes: Vec<&Request> = destroys.iter().filter(|r| r.method == "DELETE").collect();
            ensure!(
                deletes.len() == count,
                "{} DELETEs for {count} instances",
                deletes.len()
            );
            let path = if provider == Provider::Vultr {
                "/v2/instances/"
            } else {
                "/v1/servers/"
            };
            for (req, id) in deletes.iter().zip(&created_ids) {
                ensure!(req.path == format!("{path}{id}"), "DELETE {}", req.path);
                ensure!(req.body.is_empty(), "DELETE with a body");
            }
        }
    }
    let remaining = store.lock().unwrap().clone();
    ensure!(
        remaining == vec![bystander(provider)],
        "destroy --tag left {remaining:?}"
    );

    // destroy --tag again: nothing to do, nothing fails
    let out = bench
        .run_line(&fake, &format!("{cli} destroy --tag {tag}"))
        .await?;
    ok(&out, "destroy --tag with nothing tagged")?;

    // destroy --id
    let id = match &bystander(provider)["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let before = fake.requests().len();
    let out = bench
        .run_line(&fake, &format!("{cli} destroy --id {id}"))
        .await?;
    ok(&out, "destroy --id")?;
    let reqs = &fake.requests()[before..];
    ensure!(reqs.len() == 1 && reqs[0].method == "DELETE", "{reqs:?}");
    ensure!(
        reqs[0].path.ends_with(&format!("/{id}")),
        "DELETE {}",
        reqs[0].path
    );
    ensure!(
        store.lock().unwrap().is_empty(),
        "destroy --id left the instance"
    );

    check_requests(&fake, &bench.token)?;
    Ok(())
}

#[tokio::test]
async fn vultr_create_list_destroy() -> anyhow::Result<()> {
    lifecycle(Provider::Vultr, 3).await
}

#[tokio::test]
async fn digitalocean_create_list_destroy() -> anyhow::Result<()> {
    // 12 Droplets: two create requests (10 + 2), six list pages.
    lifecycle(Provider::DigitalOcean, 12).await
}

#[tokio::test]
async fn hetzner_create_list_destroy() -> anyhow::Result<()> {
    lifecycle(Provider::Hetzner, 3).await
}

/// --size, --image, --name-prefix and --tag reach the request body.
#[tokio::test]
async fn create_flags_override_the_defaults() -> anyhow::Result<()> {
    for provider in ALL {
        let bench = Bench::new()?;
        let store: Store = Arc::default();
        let fake = start_fake(provider, &bench.token, store).await?;
        let user_data = bench.write("ud", USER_DATA.as_bytes())?;
        let (size, image) = match provider {
            Provider::Vultr => ("vc2-2c-4gb", "2625"),
            Provider::DigitalOcean => ("s-1vcpu-1gb", "debian-13-x64"),
            Provider::Hetzner => ("cpx11", "debian-13"),
        };
        let line = format!(
            "{} create --region=nyc3 --count=1 --user-data {} --size {size} --image {image} \
             --name-prefix edge --tag fleet_b-2",
            provider.cli(),
            user_data.display()
        );
        let out = bench.run_line(&fake, &line).await?;
        ok(&out, "create with flags")?;
        let reqs = fake.requests();
        ensure!(reqs.len() == 1, "{provider:?}: {} requests", reqs.len());
        let body = reqs[0].json();
        let (size_key, image_key, region_key) = match provider {
            Provider::Vultr => ("plan", "os_id", "region"),
            Provider::DigitalOcean => ("size", "image", "region"),
            Provider::Hetzner => ("server_type", "image", "location"),
        };
        ensure!(body[size_key] == size, "{provider:?} size: {body}");
        let image_value = if provider == Provider::Vultr {
            json!(2625)
        } else {
            json!(image)
        };
        ensure!(body[image_key] == image_value, "{provider:?} image: {body}");
        ensure!(body[region_key] == "nyc3", "{provider:?} region: {body}");
        let name = match provider {
            Provider::Vultr => &body["label"],
            Provider::DigitalOcean => &body["names"][0],
            Provider::Hetzner => &body["name"],
        };
        ensure!(
            name.as_str().is_some_and(|n| n.starts_with("edge-")),
            "{provider:?} name: {body}"
        );
        let tagged = match provider {
            Provider::Hetzner => body["labels"]["vantage"] == "fleet_b-2",
            _ => body["tags"] == json!(["fleet_b-2"]),
        };
        ensure!(tagged, "{provider:?} tag: {body}");
        check_requests(&fake, &bench.token)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Provider errors
// ---------------------------------------------------------------------------------------------

/// A provider's 422 on create and 401 on list come back with the status and the provider's
/// own message, exit 1, and never the token.
#[tokio::test]
async fn provider_errors_show_status_and_message() -> anyhow::Result<()> {
    for provider in ALL {
        let bench = Bench::new()?;
        let message = match provider {
            Provider::Vultr => "Invalid plan chosen.",
            Provider::DigitalOcean => "You specified an invalid size for Droplet creation.",
            Provider::Hetzner => "unsupported location for server type",
        };
        let inner = start_fake_handler(provider);
        let fake = Fake::start(provider, &bench.token, move |req: &Request| {
            if req.method == "POST" {
                provider.error(422, message)
            } else {
                inner(req)
            }
        })
        .await?;
        let user_data = bench.write("ud", USER_DATA.as_bytes())?;
        let line = format!(
            "{} create --region {} --count 3 --user-data {}",
            provider.cli(),
            provider.region(),
            user_data.display()
        );
        let out = bench.run_line(&fake, &line).await?;
        ensure!(
            out.code == 1,
            "{provider:?} create against a 422 exited {}",
            out.code
        );
        ensure!(
            out.stderr.contains("HTTP 422") && out.stderr.contains(message),
            "{provider:?} 422 not reported with status and message:\n{}",
            out.stderr
        );
        ensure!(
            fake.requests().len() == 1,
            "{provider:?} kept creating after the first failure"
        );

        // 401: the script runs with a token the fake does not know.
        let wrong = new_token();
        let url = fake.api_url();
        let out = bench
            .run_env(
                &[(provider.token_var(), &wrong), (provider.url_var(), &url)],
                &[provider.cli(), "list"],
                &[&wrong, &bench.token],
            )
            .await?;
        ensure!(
            out.code == 1,
            "{provider:?} list against a 401 exited {}",
            out.code
        );
        let expected: Value = serde_json::from_str(&provider.unauthorized().body)?;
        let expected_message = match provider {
            Provider::Vultr => expected["error"].as_str(),
            Provider::DigitalOcean => expected["message"].as_str(),
            Provider::Hetzner => expected["error"]["message"].as_str(),
        }
        .unwrap_or_default()
        .to_owned();
        ensure!(
            out.stderr.contains("HTTP 401") && out.stderr.contains(&expected_message),
            "{provider:?} 401 not reported with status and message:\n{}",
            out.stderr
        );
    }
    Ok(())
}

/// The provider behaviour without a store, for tests that only need it to answer.
fn start_fake_handler(provider: Provider) -> Box<Handler> {
    let store: Store = Arc::default();
    match provider {
        Provider::Vultr => Box::new(vultr_api(store)),
        Provider::DigitalOcean => Box::new(digitalocean_api(store)),
        Provider::Hetzner => Box::new(hetzner_api(store)),
    }
}

// ---------------------------------------------------------------------------------------------
// Dry run
// ---------------------------------------------------------------------------------------------

/// --dry-run on every command prints method, URL, headers with the token redacted and the
/// body, and sends nothing; it also works without a token.
#[tokio::test]
async fn dry_run_prints_redacted_requests_and_sends_nothing() -> anyhow::Result<()> {
    for provider in ALL {
        let bench = Bench::new()?;
        let fake = start_fake(provider, &bench.token, Arc::default()).await?;
        // User-data as `vantage cloud-init` writes it carries an enrollment token: a dry run
        // must not print it.
        let enrollment = "vet_dryrunsecret0123456789";
        let user_data = bench.write(
            "ud",
            format!("{USER_DATA}# VANTAGE_ENROLLMENT_TOKEN={enrollment}\n").as_bytes(),
        )?;
        let api = fake.api_url();
        let region = provider.region();
        let (create_path, list_path, delete_path) = match provider {
            Provider::Vultr => ("/instances", "/instances?", "/instances/"),
            Provider::DigitalOcean => ("/droplets", "/droplets?", "/droplets/"),
            Provider::Hetzner => ("/servers", "/servers?", "/servers/"),
        };
        let id = if provider == Provider::Vultr {
            "cb676a46-66fd-4dfb-b839-000000000001"
        } else {
            "4242"
        };
        let create = format!(
            "create --region {region} --count 2 --user-data {} --dry-run",
            user_data.display()
        );
        let cases: Vec<(String, Vec<String>)> = vec![
            (
                create,
                vec![
                    format!("POST {api}{create_path}"),
                    "Content-Type: application/json".into(),
                    "\"user_data\": \"<redacted:".into(),
                ],
            ),
            (
                "list --tag vantage-x --dry-run".into(),
                vec![format!("GET {api}{list_path}")],
            ),
            (
                "destroy --tag vantage-x --dry-run".into(),
                vec![if provider == Provider::DigitalOcean {
                    format!("DELETE {api}/droplets?tag_name=vantage-x")
                } else {
                    format!("GET {api}{list_path}")
                }],
            ),
            (
                format!("destroy --dry-run --id {id}"),
                vec![format!("DELETE {api}{delete_path}{id}")],
            ),
        ];
        for (args, expected) in cases {
            let full = format!("{} {args}", provider.cli());
            let out = bench.run_line(&fake, &full).await?;
            ok(&out, &format!("{full:?}"))?;
            ensure!(
                !out.stdout.contains(enrollment) && !out.stderr.contains(enrollment),
                "{full:?} printed the user-data's enrollment token:\n{}",
                out.stdout
            );
            ensure!(
                out.stdout.contains("Authorization: Bearer <redacted>"),
                "{full:?} does not show the redacted header:\n{}",
                out.stdout
            );
            for text in expected {
                ensure!(
                    out.stdout.contains(&text),
                    "{full:?} does not show {text}:\n{}",
                    out.stdout
                );
            }
        }
        // And without any token at all.
        let out = bench
            .run_env(
                &[(provider.url_var(), &api)],
                &[provider.cli(), "list", "--dry-run"],
                &[&bench.token],
            )
            .await?;
        ok(&out, "dry run without a token")?;
        ensure!(
            fake.requests().is_empty(),
            "{provider:?} dry run sent {:?}",
            fake.requests()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bad input: a clear message, exit 2, nothing sent
// ---------------------------------------------------------------------------------------------

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

#[tokio::test]
async fn bad_input_fails_clearly_and_sends_nothing() -> anyhow::Result<()> {
    for provider in ALL {
        let bench = Bench::new()?;
        let fake = start_fake(provider, &bench.token, Arc::default()).await?;
        let api = fake.api_url();
        let good = bench.write("good", USER_DATA.as_bytes())?;
        let empty = bench.write("empty", b"")?;
        let too_big = bench.write("big", &vec![b'#'; provider.user_data_limit() + 1])?;
        let binary = bench.write("binary", b"#cloud-config\n\xff\xfe\x00gzip?\n")?;
        let unreadable = bench.write("unreadable", USER_DATA.as_bytes())?;
        std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000))?;
        let token = bench.token.as_str();
        // One invocation per line: {p} provider, {r} region, {...} the files above; split on
        // spaces after substitution (no path here has a space).
        let mut cases: Vec<(&str, &str)> = vec![
            (
                "aws list",
                "unknown provider (expected vultr, digitalocean or hetzner)",
            ),
            ("{p} launch", "unknown command"),
            ("{p}", "missing command"),
            (
                "{p} create --region {r} --count 0 --user-data {good}",
                "--count must be a positive integer",
            ),
            (
                "{p} create --region {r} --count -3 --user-data {good}",
                "--count must be a positive integer",
            ),
            (
                "{p} create --region {r} --count two --user-data {good}",
                "--count must be a positive integer",
            ),
            (
                "{p} create --region {r} --count 1.5 --user-data {good}",
                "--count must be a positive integer",
            ),
            (
                "{p} create --region {r} --count 101 --user-data {good}",
                "more than 100",
            ),
            (
                "{p} create --region {r} --count= --user-data {good}",
                "create needs --count",
            ),
            (
                "{p} create --region {r} --user-data {good}",
                "create needs --count",
            ),
            (
                "{p} create --region {r} --count 1",
                "create needs --user-data",
            ),
            (
                "{p} create --region {r} --count 1 --user-data",
                "--user-data needs a value",
            ),
            (
                "{p} create --count 1 --user-data {good}",
                "create needs --region",
            ),
            (
                "{p} create --region Bad_Region --count 1 --user-data {good}",
                "--region must be",
            ),
            (
                "{p} create --region {r} --count 1 --user-data {missing}",
                "does not exist",
            ),
            (
                "{p} create --region {r} --count 1 --user-data {empty}",
                "is empty",
            ),
            (
                "{p} create --region {r} --count 1 --user-data {dir}",
                "is not a regular file",
            ),
            (
                "{p} create --region {r} --count 1 --user-data {big}",
                "accepts at most",
            ),
            (
                "{p} create --region {r} --count 1 --user-data {good} --tag bad/tag",
                "--tag must be",
            ),
            (
                "{p} create --region {r} --count 1 --user-data {good} --token {token}",
                "never accepted on the command line",
            ),
            (
                "{p} create --region {r} --count 1 --user-data {good} --token={token}",
                "never accepted on the command line",
            ),
            ("{p} list {token}", "unexpected argument"),
            ("{p} list --count 2", "list does not take --count"),
            ("{p} list --bogus={token}", "unknown flag --bogus"),
            ("{p} destroy", "destroy needs --tag T or --id ID"),
            ("{p} destroy --tag a --id 1", "not both"),
            ("{p} destroy --id ../../account", "is not a"),
        ];
        if provider == Provider::Vultr {
            // Vultr takes user-data base64-encoded, so binary user-data is fine there.
            cases.push((
                "{p} create --region {r} --count 1 --user-data {good} --image debian-12",
                "numeric os_id",
            ));
        } else {
            cases.push((
                "{p} create --region {r} --count 1 --user-data {binary}",
                "is not UTF-8 text",
            ));
        }
        if !running_as_root() {
            // root reads a 0000 file anyway.
            cases.push((
                "{p} create --region {r} --count 1 --user-data {unreadable}",
                "is not readable",
            ));
        }
        let files = [
            ("{good}", good.clone()),
            ("{empty}", empty),
            ("{big}", too_big),
            ("{binary}", binary),
            ("{unreadable}", unreadable),
            ("{missing}", bench.path("missing")),
            ("{dir}", bench.path("tmp")),
        ];
        for (template, expected) in &cases {
            let mut line = template
                .replace("{p}", provider.cli())
                .replace("{r}", provider.region())
                .replace("{token}", token);
            for (name, path) in &files {
                line = line.replace(name, path.to_str().unwrap());
            }
            let args: Vec<&str> = line.split(' ').collect();
            let out = bench.run(&fake, &args).await?;
            ensure!(
                out.code == 2,
                "{template}: exited {} (expected 2):\n{}{}",
                out.code,
                out.stdout,
                out.stderr
            );
            ensure!(
                out.stderr.contains(expected),
                "{template}: stderr does not say {expected:?}:\n{}",
                out.stderr
            );
        }

        // No token in the environment.
        let p = provider.cli();
        let good = good.to_str().unwrap();
        let args = [
            p,
            "create",
            "--region",
            provider.region(),
            "--count",
            "1",
            "--user-data",
            good,
        ];
        let out = bench
            .run_env(&[(provider.url_var(), &api)], &args, &[token])
            .await?;
        ensure!(out.code == 2, "no token: exit {}", out.code);
        ensure!(
            out.stderr
                .contains(&format!("{} is not set", provider.token_var())),
            "no token: {}",
            out.stderr
        );
        // A token that could break out of curl's config quoting; it must not be echoed.
        let hostile = format!("{token}\" -o /tmp/x \"");
        let out = bench
            .run_env(
                &[(provider.token_var(), &hostile), (provider.url_var(), &api)],
                &[p, "list"],
                &[&hostile, token],
            )
            .await?;
        ensure!(out.code == 2, "quote in token: exit {}", out.code);
        ensure!(out.stderr.contains("holds characters"), "{}", out.stderr);
        // Plain HTTP to anything but loopback would send the token in clear text.
        let out = bench
            .run_env(
                &[
                    (provider.token_var(), token),
                    (provider.url_var(), "http://example.com/v2"),
                ],
                &[p, "list"],
                &[token],
            )
            .await?;
        ensure!(out.code == 2, "http URL: exit {}", out.code);
        ensure!(out.stderr.contains("must be https://"), "{}", out.stderr);

        ensure!(
            fake.requests().is_empty(),
            "{provider:?}: bad input sent {:?}",
            fake.requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// Without jq the script says so up front, naming the package, and sends nothing.
#[tokio::test]
async fn missing_dependency_is_named_up_front() -> anyhow::Result<()> {
    let bench = Bench::new()?;
    let fake = start_fake(Provider::Hetzner, &bench.token, Arc::default()).await?;
    let bin = bench.path("bin-without-jq");
    std::fs::create_dir(&bin)?;
    for tool in [
        "bash", "curl", "base64", "mktemp", "od", "head", "wc", "tr", "cmp",
    ] {
        std::os::unix::fs::symlink(find_in_path(tool)?, bin.join(tool))?;
    }
    let url = fake.api_url();
    let out = bench
        .run_raw(
            bin.to_str().unwrap(),
            &[
                ("HCLOUD_TOKEN", &bench.token),
                ("VANTAGE_HCLOUD_API_URL", &url),
            ],
            &["hetzner", "list"],
            &[&bench.token],
        )
        .await?;
    ensure!(out.code == 1, "exit {}: {}", out.code, out.stderr);
    ensure!(
        out.stderr.contains("missing required command(s): jq")
            && out.stderr.contains("apt-get install jq"),
        "{}",
        out.stderr
    );
    ensure!(fake.requests().is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Zabbix 6.0 webhook media type
// ---------------------------------------------------------------------------------------------

/// Sample expansions of the macros the media type's parameters use, as Zabbix would expand
/// them for a problem event. Macros absent here stay unexpanded, as Zabbix leaves macros it
/// cannot resolve (e.g. {EVENT.RECOVERY.ID} on a problem).
fn problem_macros() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (
            "{ALERT.MESSAGE}",
            "Problem started at 10:11:12 on 2025.01.02",
        ),
        ("{ALERT.SENDTO}", "ops-team"),
        ("{ALERT.SUBJECT}", "Problem: CPU load is too high on edge-1"),
        ("{EVENT.ACK.STATUS}", "No"),
        ("{EVENT.DATE}", "2025.01.02"),
        ("{EVENT.ID}", "4242"),
        ("{EVENT.NAME}", "CPU load is too high on edge-1"),
        ("{EVENT.NSEVERITY}", "4"),
        ("{EVENT.OPDATA}", "load 9.1"),
        ("{EVENT.SEVERITY}", "High"),
        ("{EVENT.SOURCE}", "0"),
        ("{EVENT.STATUS}", "PROBLEM"),
        (
            "{EVENT.TAGSJSON}",
            r#"[{"tag":"region","value":"fra1"},{"tag":"scope","value":"edge"}]"#,
        ),
        ("{EVENT.TIME}", "10:11:12"),
        ("{EVENT.TIMESTAMP}", "1735812672"),
        ("{EVENT.UPDATE.ACTION}", ""),
        ("{EVENT.UPDATE.MESSAGE}", ""),
        ("{EVENT.UPDATE.STATUS}", "0"),
        ("{EVENT.VALUE}", "1"),
        ("{HOST.HOST}", "edge-1"),
        ("{HOST.IP}", "192.0.2.10"),
        ("{HOST.NAME}", "Edge 1"),
        ("{TRIGGER.DESCRIPTION}", "Load above 8 for 5 minutes"),
        ("{TRIGGER.ID}", "17001"),
        ("{TRIGGER.VALUE}", "1"),
    ])
}

fn recovery_macros() -> BTreeMap<&'static str, &'static str> {
    let mut macros = problem_macros();
    macros.extend([
        ("{EVENT.STATUS}", "RESOLVED"),
        ("{EVENT.VALUE}", "0"),
        ("{TRIGGER.VALUE}", "0"),
        ("{EVENT.RECOVERY.ID}", "4250"),
        ("{EVENT.RECOVERY.VALUE}", "0"),
        ("{EVENT.RECOVERY.TIMESTAMP}", "1735816272"),
        ("{EVENT.RECOVERY.DATE}", "2025.01.02"),
        ("{EVENT.RECOVERY.TIME}", "11:11:12"),
    ]);
    macros
}

/// The webhook's parameters as Zabbix would hand them to the script (`value`).
fn webhook_params(
    media: &Value,
    macros: &BTreeMap<&str, &str>,
    overrides: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let mut params = serde_json::Map::new();
    for param in media["parameters"].as_array().context("parameters")? {
        let name = param["name"].as_str().context("parameter name")?;
        let mut value = param["value"]
            .as_str()
            .context("parameter value")?
            .to_owned();
        for (macro_name, expansion) in macros {
            value = value.replace(macro_name, expansion);
        }
        params.insert(name.to_owned(), json!(value));
    }
    for (name, value) in overrides {
        ensure!(params.contains_key(*name), "no parameter {name}");
        params.insert((*name).to_owned(), json!(value));
    }
    Ok(Value::Object(params))
}

/// Runs the webhook script under node with Zabbix's HttpRequest and Zabbix.log stubbed:
/// the stub answers `status` with `response` and records what the script sent. Fails when
/// the token shows anywhere but the request headers.
async fn run_webhook(
    dir: &Path,
    script: &str,
    params: &Value,
    status: u16,
    response: &str,
) -> anyhow::Result<Value> {
    let harness = format!(
        r#"
var calls = [], logs = [];
function HttpRequest() {{ this.headers = []; this.proxy = null; }}
HttpRequest.prototype.addHeader = function (h) {{ this.headers.push(h); }};
HttpRequest.prototype.setProxy = function (p) {{ this.proxy = p; }};
HttpRequest.prototype.post = function (url, body) {{
    calls.push({{url: url, headers: this.headers, body: body, proxy: this.proxy}});
    return {response};
}};
HttpRequest.prototype.getStatus = function () {{ return {status}; }};
var Zabbix = {{ log: function (level, message) {{ logs.push(String(message)); }} }};
function webhook(value) {{
{script}
}}
var out = {{calls: calls, logs: logs}};
try {{ out.result = webhook({value}); }} catch (error) {{ out.error = String(error); }}
console.log(JSON.stringify(out));
"#,
        response = serde_json::to_string(response)?,
        value = serde_json::to_string(&params.to_string())?,
    );
    let file = dir.join("webhook-harness.js");
    std::fs::write(&file, harness)?;
    let output = tokio::process::Command::new("node")
        .arg(&file)
        .output()
        .await
        .context("running node")?;
    ensure!(
        output.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout)?;
    // The token may only travel in the Authorization header: never in a log line, the error
    // Zabbix shows, or the result.
    let token = params["vantage_token"].as_str().unwrap_or_default();
    for (what, seen) in [
        ("a log line", &out["logs"]),
        ("the error", &out["error"]),
        ("the result", &out["result"]),
    ] {
        ensure!(
            !seen.to_string().contains(token),
            "the webhook put the token in {what}: {seen}"
        );
    }
    Ok(out)
}

/// The media type is a Zabbix 6.0 YAML export of one WEBHOOK media type whose parameters and
/// script agree; the script is ECMAScript 5 (Zabbix runs Duktape) and, run under node with
/// Zabbix's objects stubbed, POSTs the event as JSON with the bearer token, reports a refusal
/// with status and message, and never logs or shows the token.
#[tokio::test]
async fn zabbix_media_type_is_a_valid_6_0_webhook() -> anyhow::Result<()> {
    let path = workspace_root().join("provision/zabbix/vantage_webhook_media_type.yaml");
    let text = std::fs::read_to_string(&path)?;
    ensure!(
        text.starts_with("# "),
        "the export must begin with a comment"
    );

    // YAML → JSON through Python's PyYAML (serde_yaml is not a dependency here).
    let parsed = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))",
        ])
        .arg(&path)
        .output()
        .await
        .context("python3 is needed to parse the YAML export")?;
    ensure!(
        parsed.status.success(),
        "PyYAML could not parse {} (python3-yaml installed?): {}",
        path.display(),
        String::from_utf8_lossy(&parsed.stderr)
    );
    let doc: Value = serde_json::from_slice(&parsed.stdout)?;
    let export = &doc["zabbix_export"];
    ensure!(export["version"] == "6.0", "version: {}", export["version"]);
    let media_types = export["media_types"].as_array().context("media_types")?;
    ensure!(media_types.len() == 1);
    let media = &media_types[0];
    ensure!(media["name"] == "Vantage");
    ensure!(media["type"] == "WEBHOOK");
    ensure!(media["process_tags"] == "YES");
    ensure!(media["show_event_menu"] == "YES");
    ensure!(media["timeout"].as_str().is_some_and(|t| t.ends_with('s')));
    let mut names = Vec::new();
    for param in media["parameters"].as_array().context("parameters")? {
        let keys: Vec<&String> = param.as_object().context("parameter")?.keys().collect();
        ensure!(
            keys == ["name", "value"],
            "a 6.0 parameter has name and value: {param}"
        );
        names.push(param["name"].as_str().context("name")?.to_owned());
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    ensure!(
        sorted == names,
        "parameter names must be unique and sorted: {names:?}"
    );
    for needed in [
        "vantage_endpoint",
        "vantage_token",
        "event_id",
        "event_tags_json",
    ] {
        ensure!(names.iter().any(|n| n == needed), "no parameter {needed}");
    }
    let templates = media["message_templates"]
        .as_array()
        .context("message_templates")?;
    for mode in ["PROBLEM", "RECOVERY", "UPDATE"] {
        ensure!(
            templates.iter().any(|t| t["event_source"] == "TRIGGERS"
                && t["operation_mode"] == mode
                && t["subject"].is_string()
                && t["message"].is_string()),
            "no TRIGGERS {mode} message template"
        );
    }
    let script = media["script"].as_str().context("script")?;
    ensure!(script.contains("/api/v1/integrations/zabbix"));
    // Zabbix 6.0 runs webhooks in Duktape (ECMAScript 5.1): no ES2015 syntax.
    for es6 in ["=>", "let ", "const ", "`", "class "] {
        ensure!(
            !script.contains(es6),
            "the script uses ES2015 syntax {es6:?}"
        );
    }

    // The script must run, not just parse: a missing node fails the test (scripts/test
    // installs Debian's nodejs).
    let node = find_in_path("node").map_err(|_| {
        anyhow::anyhow!(
            "node is not installed, so the Zabbix webhook script cannot run: apt-get install nodejs (scripts/test does)"
        )
    })?;
    eprintln!("running the webhook script under {}", node.display());
    let dir = tempfile::tempdir()?;
    let token = new_token();
    let endpoint = "https://vantage.example.net/api/v1/integrations/zabbix";
    let settings = [
        ("vantage_endpoint", endpoint),
        ("vantage_token", token.as_str()),
    ];

    // A problem event.
    let params = webhook_params(media, &problem_macros(), &settings)?;
    let out = run_webhook(
        dir.path(),
        script,
        &params,
        202,
        r#"{"incident_id":"inc-7","incident_url":"https://vantage.example.net/incidents/inc-7"}"#,
    )
    .await?;
    ensure!(out["error"].is_null(), "the webhook failed: {out}");
    let calls = out["calls"].as_array().context("calls")?;
    ensure!(calls.len() == 1, "{calls:?}");
    ensure!(calls[0]["url"] == endpoint);
    let headers = &calls[0]["headers"];
    ensure!(
        headers.as_array().is_some_and(|h| h
            .contains(&json!(format!("Authorization: Bearer {token}")))
            && h.contains(&json!("Content-Type: application/json"))),
        "headers: {headers}"
    );
    let body: Value = serde_json::from_str(calls[0]["body"].as_str().context("body")?)?;
    let expected = json!({
        "v": 1,
        "source": "zabbix",
        "event": {
            "id": "4242", "name": "CPU load is too high on edge-1", "source": 0, "value": 1,
            "status": "problem", "zabbix_status": "PROBLEM", "severity": "High",
            "nseverity": 4, "opdata": "load 9.1", "acknowledged": false,
            "tags": [{"tag": "region", "value": "fra1"}, {"tag": "scope", "value": "edge"}],
            "timestamp": 1_735_812_672, "date": "2025.01.02", "time": "10:11:12",
        },
        "trigger": {"id": "17001", "value": 1, "description": "Load above 8 for 5 minutes"},
        "recovery": null,
        "update": null,
        "host": {"host": "edge-1", "name": "Edge 1", "ip": "192.0.2.10"},
        "alert": {
            "sendto": "ops-team",
            "subject": "Problem: CPU load is too high on edge-1",
            "message": "Problem started at 10:11:12 on 2025.01.02",
        },
    });
    ensure!(
        body == expected,
        "payload:\n{body:#}\nexpected:\n{expected:#}"
    );
    let result: Value = serde_json::from_str(out["result"].as_str().context("result")?)?;
    ensure!(
        result
            == json!({"tags": {"__vantage_incident_id": "inc-7",
                "__vantage_incident_url": "https://vantage.example.net/incidents/inc-7"}}),
        "result: {result}"
    );

    // Its recovery.
    let params = webhook_params(media, &recovery_macros(), &settings)?;
    let out = run_webhook(dir.path(), script, &params, 200, "{}").await?;
    ensure!(out["error"].is_null(), "the webhook failed: {out}");
    let body: Value = serde_json::from_str(out["calls"][0]["body"].as_str().context("body")?)?;
    ensure!(body["event"]["status"] == "resolved", "{body}");
    ensure!(
        body["recovery"]
            == json!({"id": "4250", "value": 0, "timestamp": 1_735_816_272,
                "date": "2025.01.02", "time": "11:11:12"}),
        "recovery: {body}"
    );
    ensure!(body["trigger"]["value"] == 0);

    // Vantage refuses: status and Vantage's message, never the token.
    let params = webhook_params(media, &problem_macros(), &settings)?;
    let out = run_webhook(
        dir.path(),
        script,
        &params,
        401,
        r#"{"error":{"code":"unauthorized","message":"unknown integration token"}}"#,
    )
    .await?;
    let error = out["error"]
        .as_str()
        .context("a 401 must fail the webhook")?;
    ensure!(
        error.contains("HTTP 401") && error.contains("unknown integration token"),
        "{error}"
    );

    // As imported: the placeholders are refused before anything is sent.
    let params = webhook_params(media, &problem_macros(), &[])?;
    let out = run_webhook(dir.path(), script, &params, 200, "{}").await?;
    ensure!(
        out["error"]
            .as_str()
            .is_some_and(|e| e.contains("vantage_endpoint")),
        "{out}"
    );
    ensure!(out["calls"].as_array().is_some_and(Vec::is_empty));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Standard base64 with padding (the test has no base64 crate).
fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        bail!("base64 length {} is not a multiple of 4", bytes.len());
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        let mut pad = 0;
        for &b in chunk {
            n <<= 6;
            if b == b'=' {
                pad += 1;
            } else {
                ensure!(pad == 0, "base64 data after padding");
                let v = ALPHABET
                    .iter()
                    .position(|&a| a == b)
                    .context("not a base64 character")?;
                n |= v as u32;
            }
        }
        ensure!(pad <= 2, "too much base64 padding");
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Ok(out)
}
